"""The command line: ``python -m mcmia_helpers run|grid|data ...``.

Every mistake a user can make (an unknown architecture, dataset or defence, a seed outside
``[0, 2**31)``, a parameter that is not finite or out of bounds, a device torch does not see, an
output that is a folder or a device, an unwritable ``--out``, ``MCMIA_CACHE`` or ``MCMIA_DATA``,
a grid file that does not match the schema, a dataset missing offline) ends with one line on
stderr and exit status 2, never a traceback, and is caught before data is loaded or a model
trained (:mod:`mcmia_helpers.validation`). ``--dry-run`` stops right after these checks.
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

from mcmia_helpers.data import DATASETS
from mcmia_helpers.errors import UserError
from mcmia_helpers.io import check_output_path
from mcmia_helpers.models import ARCHITECTURES
from mcmia_helpers.scales import SCALES
from mcmia_helpers.defences.pruning import PRUNING_CHOICES
from mcmia_helpers.defences.registry import canonical_params, check_params
from mcmia_helpers.validation import (IMAGENET_CLASSES, IMAGENET_SIZE, SEED_LIMIT, check_environment,
                                      check_seed)

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


def _output(what: str):
    """An argparse ``type`` for an output file, checked up front (see ``check_output_path``)."""
    def convert(text: str) -> Path:
        return _argtype(check_output_path, what)(text)
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


def build_parser() -> argparse.ArgumentParser:
    from mcmia_helpers.defences import DEFENSES

    parser = _OneLineParser(prog="python -m mcmia_helpers",
                            description="Membership inference vs model compression: experiments of the MCMIA book.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    run = sub.add_parser("run", help="train (or load) one target model, attack it, write a JSON record")
    run.add_argument("--arch", required=True, choices=ARCHITECTURES)
    run.add_argument("--dataset", required=True, choices=DATASETS)
    run.add_argument("--standin", choices=DATASETS, default=None,
                     help="dataset to use instead when --dataset is not available offline (named in the record)")
    run.add_argument("--defense", default="none", choices=sorted(DEFENSES))
    run.add_argument("--scale", default=os.environ.get("MCMIA_SCALE", "ci"), choices=SCALES)
    run.add_argument("--seed", type=_seed, default=0, help=f"random seed, an integer in [0, {SEED_LIMIT})")
    run.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                     help="random crop + flip while training (default: the scale's recipe; "
                          "never for lenet5)")
    from mcmia_helpers.attacks.shadows import CALIBRATIONS

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
    from mcmia_helpers.attacks import ATTACKS

    run.add_argument("--attacks", default=None,
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
                      help="check the grid file and print how many cells would run, then stop")

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
                     help="comma-separated: lira_online, lira_offline and the metric attacks; "
                          "<name>_aware takes its shadow models from the defended zoo")
    zoo.add_argument("--out", type=_output("--out"), default=None, help="where the JSON record goes (default: stdout)")
    zoo.add_argument("--save-scores", type=_output("--save-scores"), default=None,
                     help="write pool indices, membership matrix and an N x P score matrix per attack (.npz)")
    zoo.add_argument("--progress", action="store_true", help="show progress bars")
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


def _run(args: argparse.Namespace) -> int:
    from mcmia_helpers.context import ExperimentSpec
    from mcmia_helpers.experiments import run_experiment, validate_spec
    from mcmia_helpers.io import atomic_write_json

    from mcmia_helpers.defences import DEFENSE_PARAMS

    all_params = {name for names in DEFENSE_PARAMS.values() for name in names}
    params = {k: v for k, v in vars(args).items() if k in all_params and v is not None}
    check_params(params)  # finite and in bounds, naming the flag

    params = canonical_params(args.defense, params)  # one spelling: --epsilon 4 = no --epsilon
    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip()) if args.attacks else None
    spec = ExperimentSpec(arch=args.arch, dataset=args.dataset, defense=args.defense,
                          scale=args.scale, seed=args.seed, standin=args.standin, params=params,
                          imagenet_root=args.imagenet_root, imagenet_size=args.imagenet_size,
                          imagenet_classes=args.imagenet_classes, attacks=attacks,
                          augment=args.augment, calibration=args.calibration)
    validate_spec(spec)
    split_path = args.out.with_suffix(".split.json") if args.out else None
    if split_path is not None:
        check_output_path(split_path, "the split file")
    from mcmia_helpers.grid import cell_id

    if args.dry_run:
        print(cell_id(spec))
        return 0

    record = run_experiment(spec, progress=args.progress, split_path=split_path,
                            save_scores=args.save_scores)
    record["cell_id"] = cell_id(spec)  # the same id as in a grid, so grid results can include it
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

    grid = grid_runner.load_grid(args.config)
    specs = list(grid_runner.expand(grid, args.scale))
    selected = {id(s) for s in grid_runner.select(specs, args.only)}
    done = grid_runner.done_cells(args.out)
    if args.dry_run:
        todo = [s for s in specs if id(s) in selected and grid_runner.cell_id(s) not in done]
        print(f"{len(todo)} of {len(specs)} cells to run ({len(specs) - len(todo)} done or not selected)")
        return 0
    if args.print_commands:
        for i, spec in enumerate(specs):
            if id(spec) in selected and grid_runner.cell_id(spec) not in done:
                print(grid_runner.run_command(spec, out=f"records/cell-{i:04d}.json"))
        return 0
    records = grid_runner.run_grid(grid, args.out, only=args.only, scale=args.scale,
                                   progress=not args.no_progress)
    print(f"{len(records)} cells computed, results in {args.out}", file=sys.stderr)
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from mcmia_helpers.defences import DEFENSE_PARAMS
    from mcmia_helpers.io import atomic_write_json
    from mcmia_helpers.zoo import ZooSpec, run_zoo

    names = {name for names in DEFENSE_PARAMS.values() for name in names}
    params = {k: v for k, v in vars(args).items() if k in names and v is not None}
    check_params(params)
    spec = ZooSpec(arch=args.arch, dataset=args.dataset, scale=args.scale, defense=args.defense,
                   params=params, n_models=args.models, pool=args.pool, canaries=args.canaries,
                   seed=args.seed, standin=args.standin)
    if args.train_only or args.print_commands or args.model_range or args.per_task:
        return _zoo_cluster(args, spec)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for any user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
