"""Smoke run of the shipped ``paper`` grid on a CPU (issue 13): every cell, end to end, capped.

Every (architecture, dataset, defence, parameter) cell of ``mcmia_helpers/configs/paper.yaml``
runs once (seed 0) through :func:`mcmia_helpers.experiments.run_experiment` under
``MCMIA_SMOKE`` (:class:`mcmia_helpers.scales.SmokeCap`: N batches of 8 per epoch, 1 epoch, 1
shadow and 2 LiRA models) at the paper's full widths, optimiser, learning rate, schedule and
augmentation; the ImageNet cells run at 64 px (as shipped) and again at 224 px (the ImageNet
forms of the models) on a tiny ImageFolder tree this script writes (or ``--imagenet-root``).
MNIST and CIFAR are used when they load; offline the cells say ``standin: fashion-mnist``
explicitly and every record names the stand-in.

Each record is checked (:func:`check_record`) and appended to ``--out`` (JSON lines; a rerun
skips the cells already there). Exit status 1 if any check fails. A defended cell's models are
deleted once its record is written, an architecture's shared models when the next one starts
(:func:`evict_new_models`; ``--keep-models`` keeps them).

``--coverage defences`` (what ``.ci/run`` runs, with ``--skip 'vgg16/imagenet/.*px=224'``: that
form's five cells took 132-238 s each after the shadow-training changes of issue 23) takes every
architecture, data form and defence once: 65 cells, measured at 742 s on a 2-core CPU at ``MCMIA_SMOKE=1`` (two thirds of it the
five cells of VGG16's 224-px ImageNet form, 138 M parameters: 550 MB a model; peak memory 13 GB,
under DP-SGD's per-example gradients). ``--coverage grid`` (``make smoke``) is every cell: 143,
measured at 1,591 s on the same CPU, none failing (peak memory 13 GB).

    python tools/paper_smoke.py --out results/smoke/paper_smoke.jsonl          # the whole grid
    python tools/paper_smoke.py --out /tmp/s.jsonl --only resnet18/imagenet224  # some cells
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

#: The offline stand-in named in every MNIST/CIFAR cell.
STANDIN = "fashion-mnist"
#: The ImageNet resolutions exercised: the grid's 64 px and the ImageNet forms at 224 px.
IMAGENET_SIZES = (64, 224)


def write_tiny_imagefolder(root: str | os.PathLike, classes: int = 4, per_class: int = 6,
                           seed: int = 0) -> Path:
    """A tiny ImageFolder tree (``train/`` and ``val/``, ``classes`` folders of random 96x80
    JPEGs): enough for every part of a membership split at the smoke cap."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", quality=90)
    return root


def smoke_cell_id(spec) -> str:
    """The grid's cell id (it names the ImageNet resolution, so 64 and 224 px are two cells)."""
    from mcmia_helpers.grid import cell_id

    return cell_id(spec)


#: What a smoke run covers: ``grid``, every cell of the shipped grid (every value of every
#: defence parameter); ``defences``, every architecture, data form and defence once, each
#: defence at the first value of each of its parameters (the other values run the same code
#: with other numbers): what ``.ci/run`` affords.
COVERAGES = ("grid", "defences")


def first_values(defence: dict[str, Any]) -> dict[str, Any]:
    """A grid ``defenses`` entry with each list of values cut to its first value."""
    return {key: value[:1] if isinstance(value, list) else value for key, value in defence.items()}


def smoke_specs(imagenet_root: str | os.PathLike, seed: int = 0, coverage: str = "grid") -> list:
    """The cells of the shipped paper grid that ``coverage`` (:data:`COVERAGES`) asks for, one
    seed, stand-in named, ImageNet at 64 and 224 px."""
    from mcmia_helpers.grid import expand, load_grid

    if coverage not in COVERAGES:
        raise ValueError(f"coverage {coverage!r} is not one of {COVERAGES}")
    grid = copy.deepcopy(load_grid("paper"))
    grid["seeds"] = [seed]
    if coverage == "defences":
        for cell in grid["cells"]:
            cell["defenses"] = [first_values(d) for d in cell["defenses"]]
    cells = []
    for cell in grid["cells"]:
        if cell["dataset"] == "imagenet":
            for size in IMAGENET_SIZES:
                cells.append({**cell, "imagenet_root": str(imagenet_root), "imagenet_size": size})
        else:
            cells.append({**cell, "standin": STANDIN})
    grid["cells"] = cells
    return list(expand(grid, "paper"))


def check_record(record: dict[str, Any], spec) -> list[str]:
    """What is wrong with one smoke record (empty when it is right): the paper's recipe at full
    width under the smoke cap, the data that ran named, finite results for every attack."""
    from mcmia_helpers.scales import _TABLE, smoke_cap

    problems = []
    paper = _TABLE["paper"][spec.arch]
    cap = smoke_cap()
    train = record.get("train_config", {})
    if record.get("scale") != "paper" or record.get("width") != paper.width:
        problems.append(f"scale/width {record.get('scale')}/{record.get('width')}, not paper/{paper.width}")
    if cap is None or record.get("smoke_cap") != cap.to_dict():
        problems.append(f"smoke cap {record.get('smoke_cap')} not recorded as {cap}")
    if spec.defense != "dp":  # DP-SGD has its own optimiser (see defences.dp.dp_train_config)
        for key in ("optimizer", "lr", "weight_decay", "schedule"):
            if train.get(key) != getattr(paper, key):
                problems.append(f"train_config {key}={train.get(key)!r}, paper says {getattr(paper, key)!r}")
        want = paper.augment and spec.arch != "lenet5"
        if bool(train.get("augment")) != want or (record.get("augmentation") == "none") == want:
            problems.append(f"augmentation {record.get('augmentation')!r}, paper recipe says {want}")
    elif record.get("augmentation") != "none":
        problems.append("DP-SGD target trained with augmentation")
    if record.get("dataset_used") != record.get("dataset_requested"):
        if not record.get("dataset_standin") or STANDIN not in record.get("dataset_description", ""):
            problems.append("a stand-in ran without being named")
    if spec.dataset == "imagenet" and record.get("dataset_source", {}).get("imagenet_size") != spec.imagenet_size:
        problems.append(f"imagenet source {record.get('dataset_source')} is not {spec.imagenet_size} px")
    attacks = record.get("attacks", {})
    if not attacks:
        problems.append("no attack ran")
    for name, result in attacks.items():
        if not isinstance(result.get("auc"), float) or not math.isfinite(result["auc"]):
            problems.append(f"attack {name} has no finite AUC")
    for key in ("member_acc", "test_acc"):
        if not math.isfinite(record.get(key, math.nan)):
            problems.append(f"{key} is not finite")
    return problems


def cache_files() -> set[Path]:
    """Every file in the model cache now (``MCMIA_CACHE``), sub-folders included."""
    from mcmia_helpers.training import cache_dir

    root = cache_dir()
    return {p for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def evict_new_models(before: set[Path]) -> int:
    """Delete the cache files that appeared since ``before``; returns how many bytes that freed.

    A defended cell's models (its target, its defence-aware shadow models) are used by no other
    cell, while the undefended cell's (dense target, shadow and LiRA models) are reused by every
    defended cell of its architecture and data form: :func:`run` keeps those until the next
    form starts and evicts the rest at once, so the disk holds one form's shared models plus
    one cell's (a full-width VGG16 is 550 MB a model: the grid's models would fill tens of GB)."""
    freed = 0
    for path in cache_files() - before:
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            pass
    return freed


def run(specs: list, out: str | os.PathLike, log=lambda line: print(line, flush=True),
        keep_models: bool = False) -> Iterator[tuple[Any, dict, list[str]]]:
    """Run ``specs`` missing from ``out``; yield (spec, record, problems) for each one run now.
    The models a defended cell trained are deleted from the cache once its record is written
    (see :func:`evict_new_models`) unless ``keep_models``."""
    from mcmia_helpers.experiments import run_experiment
    from mcmia_helpers.io import append_jsonl, read_jsonl

    done = {r.get("smoke_cell_id") for r in read_jsonl(out)} if Path(out).exists() else set()
    form, form_files = None, cache_files()
    for spec in specs:
        ident = smoke_cell_id(spec)
        if ident in done:
            continue
        started = time.perf_counter()
        this_form = (spec.arch, spec.dataset, spec.imagenet_size)
        if this_form != form and not keep_models:  # the last form's shared models: done with
            evict_new_models(form_files)
            form, form_files = this_form, cache_files()
        before = cache_files()
        record = run_experiment(spec)
        record["smoke_cell_id"] = ident
        problems = check_record(record, spec)
        record["smoke_problems"] = problems
        append_jsonl(out, record)
        if spec.defense != "none" and not keep_models:
            evict_new_models(before)
        log(f"{'FAIL' if problems else 'ok  '} {ident} {time.perf_counter() - started:.1f}s "
            f"({record['dataset_description']}){': ' + '; '.join(problems) if problems else ''}")
        yield spec, record, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON-lines file of smoke records")
    parser.add_argument("--only", default=None, help="run only the cells whose id contains this")
    parser.add_argument("--skip", default=None, metavar="REGEX",
                        help="leave out the cells whose id matches this regular expression (e.g. "
                             "'vgg16/imagenet/.*px=224', what .ci/run leaves to `make smoke`)")
    parser.add_argument("--coverage", choices=COVERAGES, default="grid",
                        help="grid: every cell of the shipped grid (default); defences: every "
                             "architecture, data form and defence once (what CI runs)")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep every cell's models in the cache (default: a defended cell's "
                             "models are deleted once its record is written)")
    parser.add_argument("--imagenet-root", default=None,
                        help="an ImageFolder tree (default: a tiny one written to a temporary folder)")
    args = parser.parse_args(argv)
    # The cap holds for this run only: an in-process caller (a test) gets its environment back.
    caller_smoke = os.environ.get("MCMIA_SMOKE")
    os.environ.setdefault("MCMIA_SMOKE", "2")
    from mcmia_helpers.errors import UserError

    try:
        return _smoke(args)
    except UserError as err:  # a bad --out, MCMIA_SMOKE, --imagenet-root: one line, no traceback
        print(f"paper_smoke.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the cells done are in --out; run the same command again to go on",
              file=sys.stderr)
        return 130
    finally:
        if caller_smoke is None:
            os.environ.pop("MCMIA_SMOKE", None)


def _smoke(args: argparse.Namespace) -> int:
    """The smoke run of :func:`main` (every input checked before the first cell runs)."""
    from mcmia_helpers.io import check_output_path
    from mcmia_helpers.scales import smoke_cap
    from mcmia_helpers.validation import probe_writable

    check_output_path(args.out, "--out")
    probe_writable(args.out, "--out")
    smoke_cap()  # MCMIA_SMOKE is a number of batches
    if args.imagenet_root is not None and not Path(args.imagenet_root).is_dir():
        from mcmia_helpers.errors import UserError

        raise UserError(f"--imagenet-root {args.imagenet_root} is not a folder: give an ImageFolder "
                        "tree with train/ and val/, or leave it out for a tiny one")
    try:
        skip = re.compile(args.skip) if args.skip is not None else None
    except re.error as exc:
        from mcmia_helpers.errors import UserError

        raise UserError(f"--skip {args.skip!r} is not a regular expression ({exc}): use e.g. "
                        "'vgg16/imagenet/.*px=224'") from None
    with tempfile.TemporaryDirectory() as tmp:
        root = args.imagenet_root or write_tiny_imagefolder(Path(tmp) / "imagenet")
        specs = [s for s in smoke_specs(root, coverage=args.coverage)
                 if (args.only is None or args.only in smoke_cell_id(s))
                 and (skip is None or not skip.search(smoke_cell_id(s)))]
        if not specs:
            print(f"--only {args.only!r} matches no smoke cell", file=sys.stderr)
            return 2
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        failed = sum(bool(problems) for _, _, problems in run(specs, args.out,
                                                               keep_models=args.keep_models))
    print(f"{len(specs)} smoke cells ({args.coverage}; {failed} failed now) in "
          f"{time.perf_counter() - started:.0f} s; records in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
