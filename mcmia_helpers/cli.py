"""The command line: ``python -m mcmia_helpers run|grid|data ...``.

Every mistake a user can make (an unknown architecture, dataset or defence, a seed outside
``[0, 2**31)``, a parameter that is not finite or out of bounds, a device torch does not see, an
output that is a folder or a device, an unwritable ``--out``, ``MCMIA_CACHE`` or ``MCMIA_DATA``,
a grid file that does not match the schema, a dataset missing offline) ends with one line on
stderr and exit status 2, never a traceback, and is caught before data is loaded or a model
trained (:mod:`mcmia_helpers.validation`). ``--dry-run`` stops right after these checks.
Every file a command names is read, parsed and checked (a sparsity spec's layer names against
a skeleton of the model) and every output is probed writable and checked distinct from the
other outputs and the inputs (``--out`` is not ``--save-scores``, nor the split file next to
it) before the first model trains; sizes are bounded (:mod:`mcmia_helpers.validation`).

Parsing imports no torch: the names come from :mod:`mcmia_helpers.choices`, and the modules that
train are imported only once the arguments are known to be good, so a typo is answered in a
fraction of a second (``benchmarks/cli_startup.py``). ``--version`` prints the package version.
Defence parameters are made canonical (:func:`mcmia_helpers.defences.registry.canonical_params`), so every
spelling of one experiment shares one cell id, one record and one cached model. Results are
written atomically: an interrupted run leaves no half record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from mcmia_helpers.choices import (ARCHITECTURES, ATTACKS, CALIBRATIONS, DATASETS, DEFENSE_PARAMS,
                                   DENSE_LONG, ZOO_ATTACKS)
from mcmia_helpers.choices import PRUNING_METHODS as PRUNING_CHOICES
from mcmia_helpers.errors import UserError
from mcmia_helpers.scales import SCALES
from mcmia_helpers.validation import (IMAGENET_CLASSES, IMAGENET_SIZE, MAX_ZOO_MODELS, SEED_LIMIT,
                                      check_distinct_files, check_environment, check_imagenet_root,
                                      check_seed, check_sparsity_spec_file, probe_writable)
from mcmia_helpers.version import __version__

EXIT_USER_ERROR = 2


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _argtype(check, *args):
    """An argparse ``type`` from a validation function (its UserError becomes argparse's error)."""
    def convert(text: str):
        try:
            return check(text, *args)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = getattr(check, "__name__", "value")
    return convert


def _seed(text: str) -> int:
    return _argtype(check_seed)(text)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return value


def _int_in(low: int, high: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use an integer in [{low}, {high}]")
        return value
    convert.__name__ = "integer"
    return convert


class _Output(type(Path())):  # type: ignore[misc]
    """An output path from the command line, checked once parsing is done (:func:`_check_outputs`)."""

    flag = "output"


def _output(what: str):
    """An argparse ``type`` for an output file. The checks (``check_output_path``, a write probe)
    run right after parsing, in :func:`_check_outputs`: they need :mod:`mcmia_helpers.io`, which
    imports torch, and a typo elsewhere on the line is answered first, without it."""
    def convert(text: str) -> Path:
        if not text or text.endswith(("/", os.sep)):  # Path() would drop the slash
            raise argparse.ArgumentTypeError(f"{what} {text!r} names a folder: give a file name "
                                             f"such as {text or './'}record.json")
        path = _Output(os.path.expanduser(text))
        path.flag = what
        return path
    convert.__name__ = "path"
    return convert


def _model_range(text: str) -> tuple[int, int]:
    """``A:B`` (models A to B-1) as a pair of integers with ``0 <= A < B``."""
    parts = text.split(":")
    try:
        start, stop = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        start = stop = None
    if start is None or stop is None or not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range A:B of models with 0 <= A < B "
                                         "(e.g. 0:16 for models 0 to 15)")
    return start, stop


def _attack_list(text: str) -> tuple[str, ...]:
    """``--attacks`` of ``run``: comma-separated names of :data:`~mcmia_helpers.choices.ATTACKS`."""
    names = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown attack(s) {', '.join(map(repr, unknown))}: choose from "
                                         f"{', '.join(ATTACKS)}" if unknown else
                                         f"no attack named: choose from {', '.join(ATTACKS)}")
    return names


def _check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The output paths of ``args``, checked as argparse would (one line, exit 2): a regular
    file may be written there (:func:`~mcmia_helpers.io.check_output_path`) and a file can
    really be created next to it (:func:`~mcmia_helpers.validation.probe_writable`)."""
    from mcmia_helpers.io import check_output_path

    for value in vars(args).values():
        if isinstance(value, _Output):
            try:
                check_output_path(value, value.flag)
                probe_writable(value, value.flag)
            except UserError as err:  # as argparse says it, from the subcommand's name
                parser.exit(EXIT_USER_ERROR, f"{parser.prog} {args.command}: error: argument "
                                             f"{value.flag}: {err} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (it imports no torch: see :mod:`mcmia_helpers.choices`)."""

    parser = _OneLineParser(prog="python -m mcmia_helpers",
                            description="Membership inference vs model compression: experiments of the MCMIA book.")
    parser.add_argument("--version", action="version", version=f"mcmia_helpers {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    run = sub.add_parser("run", help="train (or load) one target model, attack it, write a JSON record")
    run.add_argument("--arch", required=True, choices=ARCHITECTURES)
    run.add_argument("--dataset", required=True, choices=DATASETS)
    run.add_argument("--standin", choices=DATASETS, default=None,
                     help="dataset to use instead when --dataset is not available offline (named in the record)")
    run.add_argument("--defense", default="none", choices=sorted(DEFENSE_PARAMS))
    run.add_argument("--scale", default=os.environ.get("MCMIA_SCALE", "ci"), choices=SCALES)
    run.add_argument("--seed", type=_seed, default=0, help=f"random seed, an integer in [0, {SEED_LIMIT})")
    run.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                     help="random crop + flip while training (default: the scale's recipe; "
                          "never for lenet5)")
    run.add_argument("--calibration", choices=CALIBRATIONS, default=None,
                     help="shadow models that calibrate the attacks' thresholds: trained with the "
                          "target's defence (target, the default) or without it (undefended)")
    defence = run.add_argument_group("defence parameters (each applies to the defences named)")
    defence.add_argument("--pruning", choices=tuple(PRUNING_CHOICES), default=None,
                         help="pruning method for prune, prune+minmax (default admm; "
                              "magnitude-profile and admm-global swap the layer allocation)")
    defence.add_argument("--sparsity", type=_number, default=None,
                         help="fraction of conv/linear weights pruned, in [0, 1) (default 0.9)")
    defence.add_argument("--sparsity-spec", default=None,
                         help="JSON/YAML file {layer: sparsity, default: s}; replaces --sparsity")
    defence.add_argument("--lam", type=_number, default=None,
                         help="strength of the Min-Max adversarial term for minmax, prune+minmax (default 3)")
    defence.add_argument("--k-steps", type=_int_in(1, 100), default=None,
                         help="inference-model steps per classifier step in the Min-Max game (default 1)")
    defence.add_argument("--epsilon", type=_number, default=None, help="DP-SGD target epsilon for dp (default 4)")
    defence.add_argument("--delta", type=_number, default=None, help="DP-SGD delta (default: a power of ten below 1/n)")
    defence.add_argument("--max-grad-norm", type=_number, default=None, help="DP-SGD per-example clipping norm (default 1)")
    run.add_argument("--attacks", type=_attack_list, default=None,
                     help=f"comma-separated attacks (default: all the scale affords): {', '.join(ATTACKS)}")
    run.add_argument("--save-scores", type=_output("--save-scores"), default=None,
                     help="write per-example attack scores, membership labels and indices to this .npz")
    run.add_argument("--out", type=_output("--out"), default=None, help="where the JSON record goes (default: stdout)")
    run.add_argument("--imagenet-root", default=None, help="ImageFolder root with train/ and val/ (for --dataset imagenet)")
    run.add_argument("--imagenet-size", type=_int_in(*IMAGENET_SIZE), default=64,
                     help="image resolution for ImageNet (default 64)")
    run.add_argument("--imagenet-classes", type=_int_in(*IMAGENET_CLASSES), default=100,
                     help="keep the first K ImageNet classes (default 100)")
    run.add_argument("--progress", action="store_true", help="show progress bars")
    run.add_argument("--dry-run", action="store_true",
                     help="check every input, print the cell id, and stop before loading data or training")

    grid = sub.add_parser("grid", help="run a grid of experiments from a YAML config, resuming where it stopped")
    grid.add_argument("--config", required=True, help="grid file, or a shipped grid: ci, book or paper")
    grid.add_argument("--out", required=True, type=_output("--out"),
                      help="JSON-lines results file (appended under a lock; damaged lines are set aside)")
    grid.add_argument("--only", default=None, help="run only the cells whose id contains this text")
    grid.add_argument("--scale", default=None, choices=SCALES, help="override the config's scale")
    grid.add_argument("--print-commands", action="store_true",
                      help="print one `run` command per missing cell (for a SLURM array or Ray) instead of running")
    grid.add_argument("--no-progress", action="store_true", help="no progress bar")
    grid.add_argument("--dry-run", action="store_true",
                      help="check the grid file (and every file it names) and print how many cells "
                           "would run and which records are stale, then stop")

    zoo = sub.add_parser("zoo", help="train (or load) a model zoo, attack every model leave-one-out, write a JSON record")
    zoo.add_argument("--arch", required=True, choices=ARCHITECTURES)
    zoo.add_argument("--dataset", required=True, choices=DATASETS)
    zoo.add_argument("--standin", choices=DATASETS, default=None,
                     help="dataset to use instead when --dataset is not available offline (named in the record)")
    zoo.add_argument("--scale", default=os.environ.get("MCMIA_SCALE", "ci"), choices=SCALES)
    zoo.add_argument("--models", type=_int_in(-10**9, 10**9), default=None,
                     help="models in the zoo, even and >= 4 (default: the scale's)")
    zoo.add_argument("--pool", type=_int_in(-10**12, 10**12), default=None,
                     help="candidate pool size, even (default: the scale's)")
    zoo.add_argument("--canaries", type=_int_in(-10**12, 10**12), default=None,
                     help="mislabelled pool examples reported apart (default: the scale's)")
    zoo.add_argument("--defense", default="none", help="none, dense-long or a defence of `run`")
    zoo.add_argument("--seed", type=_seed, default=0, help=f"random seed, an integer in [0, {SEED_LIMIT})")
    for flag, kind in (("--pruning", str), ("--sparsity", _number), ("--sparsity-spec", str),
                       ("--lam", _number), ("--k-steps", _int_in(1, 100)), ("--epsilon", _number),
                       ("--delta", _number), ("--max-grad-norm", _number)):
        zoo.add_argument(flag, type=kind, default=None, help="as for `run`")
    zoo.add_argument("--attacks", default="lira_online,lira_offline,loss",
                     help="comma-separated: lira_online, lira_offline, rmia_online, rmia_offline "
                          "and the metric attacks; <name>_aware takes its shadow models from the "
                          "defended zoo")
    zoo.add_argument("--out", type=_output("--out"), default=None, help="where the JSON record goes (default: stdout)")
    zoo.add_argument("--save-scores", type=_output("--save-scores"), default=None,
                     help="write pool indices, membership matrix and an N x P score matrix per attack (.npz)")
    zoo.add_argument("--progress", action="store_true", help="show progress bars")
    zoo.add_argument("--dry-run", action="store_true",
                     help="check every input and output, print the zoo's sizes, and stop before training")
    cluster = zoo.add_argument_group("a zoo over a cluster (train the models anywhere, attack once)")
    cluster.add_argument("--train-only", action="store_true",
                         help="train (or find cached) the models of --model-range into the cache "
                              "(with a defence, its dense zoo's too) and write nothing else")
    cluster.add_argument("--model-range", type=_model_range, default=None, metavar="A:B",
                         help="with --train-only: models A to B-1 of the zoo (default: all)")
    cluster.add_argument("--print-commands", action="store_true",
                         help="print one --train-only command per task that has models missing "
                              "(for a SLURM array), instead of training")
    cluster.add_argument("--per-task", type=_int_in(1, 10**6), default=None, metavar="K",
                         help="with --print-commands: models per task (default: --group-size)")
    cluster.add_argument("--require-cached", action="store_true",
                         help="train nothing: a model missing from the cache is an error naming "
                              "the command that trains it")
    cluster.add_argument("--group-size", type=_int_in(1, 1024), default=16, metavar="G",
                         help="models trained together on the grouped engine, in aligned blocks "
                              "(default 16; lower it where a group does not fit in memory)")

    data = sub.add_parser("data", help="prepare datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_OneLineParser)
    fetch = data_sub.add_parser("fetch", help="download or copy a dataset into the data folder")
    fetch.add_argument("name", choices=DATASETS)
    fetch.add_argument("--root", default=None, help="data folder (default: MCMIA_DATA or ~/.cache/mcmia/data)")
    fetch.add_argument("--imagenet-root", default=None)
    fetch.add_argument("--dry-run", action="store_true", help="check the inputs and stop before fetching")
    return parser


def _defence_params(args: argparse.Namespace) -> dict:
    from mcmia_helpers.defences.registry import check_params

    names = {name for names in DEFENSE_PARAMS.values() for name in names}
    params = {k: v for k, v in vars(args).items() if k in names and v is not None}
    check_params(params)  # finite and in bounds, naming the flag
    return params


def _image_sizes(dataset: str, standin: str | None, imagenet_size: int) -> tuple[int, ...]:
    """The input sizes that decide the model's form (small-image, or ImageNet above 64 px) for
    checking a sparsity spec's layer names: a layer of either form the run may use is accepted."""
    return (32, imagenet_size) if "imagenet" in (dataset, standin) else (32,)


def _run(args: argparse.Namespace) -> int:
    from mcmia_helpers.context import ExperimentSpec
    from mcmia_helpers.defences.registry import canonical_params
    from mcmia_helpers.experiments import validate_spec
    from mcmia_helpers.grid import cell_id

    params = _defence_params(args)
    if args.imagenet_root is not None:
        check_imagenet_root(args.imagenet_root)
    if args.sparsity_spec is not None:  # read and checked against the model's layers, now
        check_sparsity_spec_file(args.sparsity_spec, args.arch,
                                 _image_sizes(args.dataset, args.standin, args.imagenet_size))
    params = canonical_params(args.defense, params)  # one spelling: --epsilon 4 = no --epsilon
    spec = ExperimentSpec(arch=args.arch, dataset=args.dataset, defense=args.defense,
                          scale=args.scale, seed=args.seed, standin=args.standin, params=params,
                          imagenet_root=args.imagenet_root, imagenet_size=args.imagenet_size,
                          imagenet_classes=args.imagenet_classes, attacks=args.attacks,
                          augment=args.augment, calibration=args.calibration)
    validate_spec(spec)
    split_path = args.out.with_suffix(".split.json") if args.out else None
    if split_path is not None:
        from mcmia_helpers.io import check_output_path

        check_output_path(split_path, "the split file")
        probe_writable(split_path, "the split file")
    check_distinct_files({"--out": args.out, "the split file": split_path, "--save-scores": args.save_scores},
                         {"--sparsity-spec": args.sparsity_spec})

    if args.dry_run:
        print(cell_id(spec))
        return 0

    from mcmia_helpers.experiments import run_experiment
    from mcmia_helpers.io import atomic_write_json

    record = run_experiment(spec, progress=args.progress, split_path=split_path,
                            save_scores=args.save_scores)
    record["cell_id"] = cell_id(spec)  # the same id as in a grid, so grid results can include it
    record["attacks_requested"] = list(spec.attacks) if spec.attacks else None
    if args.out:
        if split_path is not None:
            record["split_file"] = split_path.name
        atomic_write_json(args.out, record)
        print(f"wrote {args.out} ({record['dataset_description']})", file=sys.stderr)
    else:
        print(json.dumps(record, indent=2, sort_keys=True))
    return 0


def _grid(args: argparse.Namespace) -> int:
    from mcmia_helpers import grid as grid_runner
    from mcmia_helpers.io import read_jsonl

    grid = grid_runner.load_grid(args.config)
    check_distinct_files({"--out": args.out}, {"--config": grid_runner.config_path(args.config)})
    specs = list(grid_runner.expand(grid, args.scale))  # checks the size and the files it names
    selected = grid_runner.select(specs, args.only)
    records = read_jsonl(args.out)
    todo = grid_runner.todo_cells(selected, records)
    if args.dry_run:
        grid_runner.check_data_roots(todo)
        grid_runner.report_stale(todo, records, args.out)
        print(f"{len(todo)} of {len(specs)} cells to run ({len(specs) - len(todo)} done or not selected)")
        return 0
    if args.print_commands:
        index = {id(s): i for i, s in enumerate(specs)}
        for spec in todo:
            print(grid_runner.run_command(spec, out=f"records/cell-{index[id(spec)]:04d}.json"))
        return 0
    computed = grid_runner.run_grid(grid, args.out, only=args.only, scale=args.scale,
                                    progress=not args.no_progress)
    print(f"{len(computed)} cells computed, results in {args.out}", file=sys.stderr)
    return 0


def _zoo(args: argparse.Namespace) -> int:
    if args.models is not None and args.models > MAX_ZOO_MODELS:
        raise UserError(f"--models {args.models} is more than the limit of {MAX_ZOO_MODELS} models "
                        "per zoo: use fewer models (the paper's zoos have 64)")
    params = _defence_params(args)
    if args.sparsity_spec is not None:
        check_sparsity_spec_file(args.sparsity_spec, args.arch)
    check_distinct_files({"--out": args.out, "--save-scores": args.save_scores},
                         {"--sparsity-spec": args.sparsity_spec})

    from mcmia_helpers.zoo import ZooSpec, check_zoo_request

    spec = ZooSpec(arch=args.arch, dataset=args.dataset, scale=args.scale, defense=args.defense,
                   params=params, n_models=args.models, pool=args.pool, canaries=args.canaries,
                   seed=args.seed, standin=args.standin)
    if getattr(args, "dry_run", False):
        check_zoo_request(spec, args.attacks)
        print(f"zoo of {spec.models()} {args.arch} models on {args.dataset} ({args.scale}), "
              f"pool {spec.pool_size()}: every input checked, nothing trained")
        return 0
    if args.train_only or args.print_commands or args.model_range or args.per_task:
        return _zoo_cluster(args, spec)

    from mcmia_helpers.io import atomic_write_json
    from mcmia_helpers.zoo import run_zoo

    record = run_zoo(spec, args.attacks, save_scores=args.save_scores, progress=args.progress,
                     group_size=args.group_size, require_cached=args.require_cached)
    if args.out:
        atomic_write_json(args.out, record)
        print(f"wrote {args.out} ({record['dataset_description']})", file=sys.stderr)
    else:
        print(json.dumps(record, indent=2, sort_keys=True))
    return 0


def _zoo_cluster(args: argparse.Namespace, spec) -> int:
    """``zoo --train-only [--model-range A:B]`` and ``zoo --print-commands [--per-task K]``."""
    from mcmia_helpers.zoo import runner

    def conflict(flag: str, other: str, why: str) -> None:
        raise UserError(f"{flag} {why}: drop {other}")

    if args.train_only and args.print_commands:
        conflict("--print-commands", "--train-only", "prints the --train-only commands")
    if args.model_range and not args.train_only:
        conflict("--model-range", "--model-range (or add --train-only)", "needs --train-only")
    if args.per_task and not args.print_commands:
        conflict("--per-task", "--per-task (or add --print-commands)", "needs --print-commands")
    if args.train_only:
        for flag, value in (("--out", args.out), ("--save-scores", args.save_scores),
                            ("--require-cached", args.require_cached)):
            if value:
                conflict("--train-only", flag, "trains models and writes no record")
    spec.validate()
    if args.train_only:
        start, stop = args.model_range or (None, None)
        done = runner.train_zoo_range(spec, start, stop, group_size=args.group_size,
                                      progress=args.progress)
        parts = [f"{name} zoo: {info['trained']} trained, {info['cached']} found in the cache"
                 for name, info in (("dense", done.get("dense")), (spec.defense, done["zoo"])) if info]
        print(f"models {done['models'][0]}-{done['models'][1] - 1}: " + "; ".join(parts),
              file=sys.stderr)
        return 0
    runner.check_zoo_request(spec, args.attacks)
    setup = runner.prepare_zoo(spec)
    todo = runner.zoo_to_train(spec, setup)
    per_task = args.per_task or args.group_size
    for start, stop in runner.task_ranges(spec.models(), per_task, todo):
        print(runner.train_command(spec, start, stop, group_size=args.group_size))
    extra = ["--attacks", args.attacks, "--require-cached"]
    if args.save_scores:
        extra += ["--save-scores", str(args.save_scores)]
    if args.out:
        extra += ["--out", str(args.out)]
    attack = runner.zoo_command(spec, group_size=args.group_size, extra=extra)
    print(f"{len(todo)} of {spec.models()} models to train; once they are cached, attack with: "
          f"{attack}", file=sys.stderr)
    return 0


def _check_names(args: argparse.Namespace) -> None:
    """The names argparse takes as free text, checked before anything heavy is imported: the
    zoo's ``--defense`` (a defence of ``run`` or ``dense-long``), ``--pruning`` and
    ``--attacks`` (the same message as :func:`~mcmia_helpers.zoo.evaluate.zoo_attack_names`)."""
    if args.command != "zoo":
        return
    defences = (*sorted(DEFENSE_PARAMS), DENSE_LONG)
    if args.defense not in defences:
        raise UserError(f"unknown defense '{args.defense}': choose one of {', '.join(defences)}")
    if args.pruning is not None and args.pruning not in PRUNING_CHOICES:
        raise UserError(f"pruning method '{args.pruning}' is unknown: choose {', '.join(PRUNING_CHOICES)}")
    names = [n.strip() for n in str(args.attacks).split(",") if n.strip()]
    unknown = [n for n in names if n not in ZOO_ATTACKS and n.removesuffix("_aware") not in ZOO_ATTACKS]
    if unknown or not names:
        raise UserError(f"unknown zoo attack(s) {', '.join(map(repr, unknown))}: choose from "
                        f"{', '.join(ZOO_ATTACKS)} (each also as <name>_aware)" if unknown else
                        "no attack named: use e.g. --attacks lira_online,loss")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for any user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_names(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    _check_outputs(parser, args)
    try:
        check_environment(args.command)
        if args.command == "run":
            return _run(args)
        if args.command == "grid":
            return _grid(args)
        if args.command == "zoo":
            return _zoo(args)
        if args.command == "data":
            from mcmia_helpers.data import data_root, fetch_dataset
            from mcmia_helpers.io import check_writable_dir

            if args.root is not None:
                check_writable_dir(data_root(args.root), "--root")
            if args.dry_run:
                print(f"would fetch {args.name} into {data_root(args.root)}")
                return 0
            print(fetch_dataset(args.name, root=args.root, imagenet_root=args.imagenet_root))
            return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished epochs are checkpointed; run the same command again to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... --print-commands | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 1
