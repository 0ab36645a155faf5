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
        defenses:
          - {defense: none}
          - {defense: prune, sparsity: [0.5, 0.9]}   # lists expand into one cell per value

Every cell is also one ``run`` command (``grid --print-commands``), so a cluster scheduler (a SLURM
array, Ray, submitit) can fan the grid out; the records can then be concatenated into one file.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
from pathlib import Path
from typing import Any, Iterator

from mcmia_helpers.errors import UserError
from mcmia_helpers.context import ExperimentSpec
from mcmia_helpers.experiments import run_experiment, validate_spec
from mcmia_helpers.io import append_jsonl

#: The folder of the grids shipped with the package (``ci``, ``book`` and ``paper``).
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"

_CELL_KEYS = {"arch", "dataset", "standin", "defenses", "imagenet_root", "imagenet_size",
              "imagenet_classes"}


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
    """Read and check a grid file (YAML or JSON), given as a path or a shipped grid's name."""
    import yaml

    path = config_path(path)
    try:
        grid = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"grid config {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(grid, dict) or not isinstance(grid.get("cells"), list):
        raise UserError(f"grid config {path} needs a 'cells' list (see mcmia_helpers/configs/ci.yaml)")
    for cell in grid["cells"]:
        unknown = set(cell) - _CELL_KEYS
        if unknown:
            raise UserError(f"grid config {path}: unknown cell keys {sorted(unknown)}; use {sorted(_CELL_KEYS)}")
    return grid


def cell_id(spec: ExperimentSpec) -> str:
    """A readable, unique name for a cell: ``arch/dataset/defense/k=v.../seed=N``."""
    params = "/".join(f"{k}={spec.params[k]}" for k in sorted(spec.params))
    parts = [spec.arch, spec.dataset, spec.scale, spec.defense] + ([params] if params else []) + [f"seed={spec.seed}"]
    return "/".join(parts)


def expand(grid: dict[str, Any], scale: str | None = None) -> Iterator[ExperimentSpec]:
    """Every cell of ``grid`` as an :class:`ExperimentSpec` (lists of parameter values expand)."""
    scale = scale or grid.get("scale") or os.environ.get("MCMIA_SCALE", "ci")
    seeds = grid.get("seeds", [0])
    attacks = grid.get("attacks")
    for cell in grid["cells"]:
        base = {k: v for k, v in cell.items() if k != "defenses"}
        for defense in cell.get("defenses", [{"defense": "none"}]):
            name = defense.get("defense", "none")
            values = {k: (v if isinstance(v, list) else [v]) for k, v in defense.items() if k != "defense"}
            for combo in itertools.product(*values.values()):
                params = dict(zip(values.keys(), combo))
                for seed in seeds:
                    spec = ExperimentSpec(defense=name, scale=scale, seed=int(seed), params=params,
                                          attacks=tuple(attacks) if attacks else None, **base)
                    validate_spec(spec)
                    yield spec


def done_cells(out: str | os.PathLike) -> set[str]:
    """The cell ids already recorded in ``out`` (a JSON-lines file)."""
    path = Path(out)
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                done.add(json.loads(line)["cell_id"])
            except (json.JSONDecodeError, KeyError):
                continue  # a foreign or damaged line is ignored, never fatal
    return done


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
    if spec.imagenet_root:
        args += ["--imagenet-root", spec.imagenet_root]
    return shlex.join(args + ["--out", out])


def run_grid(grid: dict[str, Any], out: str | os.PathLike, *, only: str | None = None,
             scale: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the cells of ``grid`` missing from ``out``; return the records computed now.

    ``only`` keeps the cells whose id contains it (e.g. ``"resnet18"`` or ``"prune/sparsity=0.9"``).
    """
    from tqdm.auto import tqdm

    specs = [s for s in expand(grid, scale) if only is None or only in cell_id(s)]
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
    """All records of a JSON-lines results file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load_or_run(config: str | os.PathLike, results: str | os.PathLike, *,
                progress: bool = False) -> list[dict[str, Any]]:
    """The records of grid ``config``: read from ``results`` when it holds every cell, else
    the missing cells are computed first (so a chapter runs from stored results or from scratch)."""
    grid = load_grid(config)
    run_grid(grid, results, progress=progress)
    wanted = {cell_id(s) for s in expand(grid)}
    return [r for r in read_records(results) if r.get("cell_id") in wanted]
