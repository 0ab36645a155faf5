"""The experiment runner: a grid of (architecture, dataset, defence, parameter, seed) cells.

``python -m mcmia_helpers grid --config book --out results.jsonl`` runs every cell of
a YAML grid through :func:`~mcmia_helpers.experiments.run_experiment` (the same code as ``run``),
appends each record to a JSON-lines file as soon as it finishes (atomically), and skips the cells
whose records are already there: an interrupted grid loses at most the cell it was running.
``--config`` takes a YAML file or the name of a grid shipped in the package's ``configs/``
folder (``ci``, ``book``, ``paper``: see :func:`config_path`), so the grids travel with
``pip install`` (Colab) as well as with a clone.

A grid file looks like::

    scale: book
    seeds: [0, 1, 2]
    attacks: [loss, lira_offline]          # optional; default: all the scale affords
    cells:
      - arch: lenet5
        dataset: mnist
        standin: fashion-mnist             # explicit offline stand-in, named in every record
        calibration: undefended            # optional: shadow models without the defence (default target)
        defenses:
          - {defense: none}
          - {defense: prune, sparsity: [0.5, 0.9]}   # lists expand into one cell per value

Every cell is also one ``run`` command (``grid --print-commands``), so a cluster scheduler (a SLURM
array, Ray, submitit) can fan the grid out; the records can then be concatenated into one file.
"""

from __future__ import annotations

import itertools
import os
import shlex
from pathlib import Path
from typing import Any, Iterator, Mapping

from mcmia_helpers.errors import UserError
from mcmia_helpers.context import ExperimentSpec
from mcmia_helpers.experiments import run_experiment, spec_identity, validate_spec
from mcmia_helpers.io import append_jsonl, read_jsonl
from mcmia_helpers.defences.registry import canonical_params
from mcmia_helpers.validation import check_seed, load_grid_text

#: The folder of the grids shipped with the package (``ci``, ``book`` and ``paper``).
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"

def bundled_names() -> list[str]:
    """Names of the grids shipped in the package (``ci``, ``book``, ``paper``)."""
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.yaml"))


def config_path(config: str | os.PathLike) -> Path:
    """The grid file for ``config``: an existing path, else a shipped grid's name (``book`` or
    ``book.yaml``); anything else is a one-line UserError naming both choices."""
    path = Path(config)
    if path.is_file():
        return path
    bundled = BUNDLED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    raise UserError(f"grid config {config} does not exist: pass --config PATH to a YAML file or one of "
                    f"the shipped grids ({', '.join(bundled_names())})")


def load_grid(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a grid file (YAML or JSON), given as a path or a shipped grid's name.

    The file is checked against :func:`~mcmia_helpers.validation.grid_schema` (jsonschema):
    an unknown key (``seed:`` for ``seeds:``), a wrong type (``seeds: 3``, ``attacks: loss``),
    a value out of bounds or an empty list is a one-line :class:`UserError` naming the key
    and its line.
    """
    path = config_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read grid config {path} ({exc.strerror}): check the path") from None
    return load_grid_text(data, str(path))


def _cell_id(arch: str, dataset: str, scale: str, defense: str, params: Mapping[str, Any],
             seed: int, identity: Mapping[str, Any] | None = None) -> str:
    values = "/".join(f"{k}={params[k]}" for k in sorted(params))
    extra = "/".join(f"{k}={v}" for k, v in sorted((identity or {}).items()))
    return "/".join([arch, dataset, scale, defense] + ([values] if values else [])
                    + ([extra] if extra else []) + [f"seed={seed}"])


def cell_id(spec: ExperimentSpec) -> str:
    """A readable, unique name for a cell: ``arch/dataset/scale/defense/k=v.../seed=N``, with the
    parameters in their canonical spelling (:func:`~mcmia_helpers.defences.registry.canonical_params`), so that every spelling of
    one experiment has one id."""
    return _cell_id(spec.arch, spec.dataset, spec.scale, spec.defense,
                    canonical_params(spec.defense, spec.params), spec.seed, spec_identity(spec))


def record_cell_id(record: Mapping[str, Any]) -> str | None:
    """The canonical cell id of a record, recomputed from what it says ran (architecture,
    requested dataset, scale, defence, parameters, seed), so that records written before the
    parameters were canonical (``lam=3`` rather than ``k_steps=1/lam=3.0``) still count as
    their cell. A record that does not say all of that keeps the ``cell_id`` it stores.

    A defended record without a ``calibration`` field predates target-matched calibration: its
    thresholds and attack networks came from undefended shadow models, so it is the cell that
    asks for ``calibration: undefended``, never the default (target-calibrated) cell."""
    try:
        identity = dict(record.get("identity") or {})
        if record["defense"] != "none" and "calibration" not in record:
            identity["calibration"] = "undefended"
        return _cell_id(record["arch"], record["dataset_requested"], record["scale"],
                        record["defense"], canonical_params(record["defense"], record.get("params") or {}),
                        check_seed(record["seed"], "the record's seed"), identity)
    except (KeyError, TypeError, AttributeError, UserError):
        stored = record.get("cell_id")
        return stored if isinstance(stored, str) else None


def expand(grid: dict[str, Any], scale: str | None = None) -> Iterator[ExperimentSpec]:
    """Every cell of ``grid`` as an :class:`ExperimentSpec` (lists of parameter values expand)."""
    scale = scale or grid.get("scale") or os.environ.get("MCMIA_SCALE", "ci")
    seeds = [check_seed(s, "grid seed") for s in grid.get("seeds", [0])]
    attacks = grid.get("attacks")
    for cell in grid["cells"]:
        base = {k: v for k, v in cell.items() if k != "defenses"}
        for defense in cell.get("defenses", [{"defense": "none"}]):
            name = defense.get("defense", "none")
            values = {k: (v if isinstance(v, list) else [v]) for k, v in defense.items() if k != "defense"}
            for combo in itertools.product(*values.values()):
                params = canonical_params(name, dict(zip(values.keys(), combo)))
                for seed in seeds:
                    spec = ExperimentSpec(defense=name, scale=scale, seed=seed, params=params,
                                          attacks=tuple(attacks) if attacks else None, **base)
                    validate_spec(spec)
                    yield spec


def done_cells(out: str | os.PathLike) -> set[str]:
    """The canonical ids (:func:`record_cell_id`) of the cells already recorded in ``out`` (a
    JSON-lines file; damaged lines are set aside by :func:`~mcmia_helpers.io.read_jsonl`)."""
    return {cell for cell in map(record_cell_id, read_jsonl(out)) if cell is not None}


def select(specs: list[ExperimentSpec], only: str | None) -> list[ExperimentSpec]:
    """The cells whose id contains ``only`` (all of them for ``None``); a filter that matches no
    cell is a one-line :class:`UserError` (a typo would otherwise run nothing and exit 0)."""
    if only is None:
        return specs
    kept = [s for s in specs if only in cell_id(s)]
    if not kept:
        example = cell_id(specs[0]) if specs else "arch/dataset/scale/defense/.../seed=N"
        raise UserError(f"--only {only!r} matches none of the {len(specs)} cells: give part of a "
                        f"cell id such as {example}")
    return kept


def run_command(spec: ExperimentSpec, out: str = "record.json") -> str:
    """The ``python -m mcmia_helpers run`` command line that computes this one cell."""
    args = ["python", "-m", "mcmia_helpers", "run", "--arch", spec.arch, "--dataset", spec.dataset,
            "--defense", spec.defense, "--scale", spec.scale, "--seed", str(spec.seed)]
    if spec.standin:
        args += ["--standin", spec.standin]
    for key, value in sorted(spec.params.items()):
        args += [f"--{key.replace('_', '-')}", str(value)]
    if spec.attacks:
        args += ["--attacks", ",".join(spec.attacks)]
    if spec.augment is not None:
        args += ["--augment" if spec.augment else "--no-augment"]
    if spec.calibration is not None:
        args += ["--calibration", spec.calibration]
    if spec.imagenet_root:
        args += ["--imagenet-root", spec.imagenet_root]
    if "imagenet" in (spec.dataset, spec.standin):
        args += ["--imagenet-size", str(spec.imagenet_size)]
        if spec.imagenet_classes is not None:
            args += ["--imagenet-classes", str(spec.imagenet_classes)]
    return shlex.join(args + ["--out", out])


def run_grid(grid: dict[str, Any], out: str | os.PathLike, *, only: str | None = None,
             scale: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the cells of ``grid`` missing from ``out``; return the records computed now.

    ``only`` keeps the cells whose id contains it (e.g. ``"resnet18"`` or ``"prune/sparsity=0.9"``).
    """
    from tqdm.auto import tqdm

    specs = select(list(expand(grid, scale)), only)
    done = done_cells(out)
    todo = [s for s in specs if cell_id(s) not in done]
    records = []
    bar = tqdm(todo, desc=f"grid ({len(specs) - len(todo)} of {len(specs)} cells done)",
               disable=not progress)
    for spec in bar:
        bar.set_postfix_str(cell_id(spec))
        record = run_experiment(spec)
        record["cell_id"] = cell_id(spec)
        append_jsonl(out, record)
        records.append(record)
    return records


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSON-lines results file (damaged lines are reported once and set aside,
    see :func:`~mcmia_helpers.io.read_jsonl`); a missing file is a one-line UserError."""
    if not Path(path).exists():
        raise UserError(f"results file {path} does not exist: run the grid first "
                        "(python -m mcmia_helpers grid --config ... --out FILE)")
    return read_jsonl(path)


def load_or_run(config: str | os.PathLike, results: str | os.PathLike, *,
                progress: bool = False) -> list[dict[str, Any]]:
    """The records of grid ``config``: read from ``results`` when it holds every cell, else
    the missing cells are computed first (so a chapter runs from stored results or from scratch)."""
    grid = load_grid(config)
    run_grid(grid, results, progress=progress)
    wanted = {cell_id(s) for s in expand(grid)}
    return [r for r in read_records(results) if record_cell_id(r) in wanted]
