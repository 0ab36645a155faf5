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

A cell's id names everything that changes its record: architecture, dataset, scale, defence and
canonical parameters, the ImageNet form, augmentation and calibration choices, an explicit
``attacks`` list (``attacks=loss+shadow_top3``, in the canonical order of
``mcmia_helpers.attacks.names.ATTACKS``) and a smoke cap (``smoke=N``, ``MCMIA_SMOKE``).
A stored record counts for a cell (:func:`find_record`) when it has the cell's id, or when it
has the same id apart from the attacks and holds results for every attack the cell asks for
(so a shorter list reuses a longer record). Old records, written before ids named the attacks,
say which attacks they computed in their ``attacks`` mapping: that is the list they are counted
under. A record of the cell's identity that lacks some of the cell's attacks is *stale*: the
grid says so and computes the cell again (the models come from the cache, so only the attacks
run); the new record is appended and, being the latest, is the one :func:`load_or_run` returns.

Concurrent grids on one results file share the work: each cell is computed under an exclusive
lock of its own (``fcntl.flock`` on a file in ``.NAME.cells/`` next to the results file), the
results are read again once the lock is held, and a cell another grid is computing is left for
last and then found done. The file holds each cell once.

Every cell is also one ``run`` command (``grid --print-commands``), so a cluster scheduler (a SLURM
array, Ray, submitit) can fan the grid out; the records can then be concatenated into one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from mcmia_helpers.errors import UserError
from mcmia_helpers.context import ExperimentSpec
from mcmia_helpers.experiments import run_experiment, spec_identity, validate_spec
from mcmia_helpers.io import append_jsonl, read_jsonl
from mcmia_helpers.defences.registry import canonical_params
from mcmia_helpers.scales import get_scale
from mcmia_helpers.validation import (MAX_GRID_CELLS, check_imagenet_root, check_seed,
                                      check_sparsity_spec_file, load_grid_text, read_input_file)

#: The folder of the grids shipped with the package (``ci``, ``book`` and ``paper``): the
#: ``configs`` folder next to this module, wherever the package is installed.
#:
#: :meta hide-value:
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
    return load_grid_text(read_input_file(path, "grid config"), str(path))


def _cell_id(arch: str, dataset: str, scale: str, defense: str, params: Mapping[str, Any],
             seed: int, identity: Mapping[str, Any] | None = None,
             attacks: Iterable[str] | None = None) -> str:
    values = "/".join(f"{k}={params[k]}" for k in sorted(params))
    extra = "/".join(f"{k}={v}" for k, v in sorted((identity or {}).items()))
    names = f"attacks={'+'.join(_canonical_attacks(attacks))}" if attacks else ""
    return "/".join([arch, dataset, scale, defense] + ([values] if values else [])
                    + ([extra] if extra else []) + ([names] if names else []) + [f"seed={seed}"])


def _canonical_attacks(names: Iterable[str]) -> list[str]:
    """Attack names once each, in the order of ``mcmia_helpers.attacks.names.ATTACKS``
    (unknown names, from a foreign record, last and sorted)."""
    from mcmia_helpers.attacks.names import ATTACKS

    names = set(names)
    return [a for a in ATTACKS if a in names] + sorted(n for n in names if n not in ATTACKS)


def _spec_identity(spec: ExperimentSpec) -> dict[str, Any]:
    """:func:`~mcmia_helpers.experiments.spec_identity` plus the smoke cap (``MCMIA_SMOKE``)."""
    identity = spec_identity(spec)
    smoke = get_scale(spec.scale).smoke
    if smoke is not None:
        identity["smoke"] = smoke.batches
    return identity


def cell_id(spec: ExperimentSpec) -> str:
    """A readable, unique name for a cell: ``arch/dataset/scale/defense/k=v.../seed=N``, with the
    parameters in their canonical spelling (:func:`~mcmia_helpers.defences.registry.canonical_params`), so that every spelling of
    one experiment has one id; an explicit attacks list and a smoke cap are part of it
    (``.../attacks=loss+shadow_top3/seed=0``), since they change the record."""
    return _cell_id(spec.arch, spec.dataset, spec.scale, spec.defense,
                    canonical_params(spec.defense, spec.params), spec.seed, _spec_identity(spec),
                    spec.attacks)


def base_cell_id(spec: ExperimentSpec) -> str:
    """:func:`cell_id` without the attacks: the experiment whose records may serve the cell."""
    return _cell_id(spec.arch, spec.dataset, spec.scale, spec.defense,
                    canonical_params(spec.defense, spec.params), spec.seed, _spec_identity(spec))


def _record_parts(record: Mapping[str, Any]) -> tuple[str, list[str] | None] | None:
    """(base id, attacks the id names) of a record, recomputed from what it says ran; ``None``
    when it does not say (then its stored ``cell_id`` is all there is)."""
    try:
        identity = dict(record.get("identity") or {})
        if record["defense"] != "none" and "calibration" not in record:
            identity["calibration"] = "undefended"
        smoke = record.get("smoke_cap")
        if isinstance(smoke, Mapping) and "batches" in smoke:
            identity["smoke"] = smoke["batches"]
        base = _cell_id(record["arch"], record["dataset_requested"], record["scale"],
                        record["defense"], canonical_params(record["defense"], record.get("params") or {}),
                        check_seed(record["seed"], "the record's seed"), identity)
    except (KeyError, TypeError, AttributeError, UserError):
        return None
    if "attacks_requested" in record:  # written by this version: the list the cell asked for
        requested = record["attacks_requested"]
        named = list(requested) if isinstance(requested, list) and requested else None
    elif isinstance(record.get("attacks"), Mapping) and record["attacks"]:
        named = list(record["attacks"])  # an older record: the attacks it computed
    else:
        named = None
    return base, named


def record_cell_id(record: Mapping[str, Any]) -> str | None:
    """The canonical cell id of a record, recomputed from what it says ran (architecture,
    requested dataset, scale, defence, parameters, seed, identity, smoke cap, attacks), so that
    records written before the parameters were canonical (``lam=3`` rather than
    ``k_steps=1/lam=3.0``) still count as their cell. A record that does not say all of that
    keeps the ``cell_id`` it stores.

    The attacks: a record of this version stores the list its cell asked for
    (``attacks_requested``, null for the scale's defaults); an older record is counted under the
    attacks it computed (the keys of its ``attacks`` mapping), so the book's stored records
    keep counting for the book grid, which names its attacks.

    A defended record without a ``calibration`` field predates target-matched calibration: its
    thresholds and attack networks came from undefended shadow models, so it is the cell that
    asks for ``calibration: undefended``, never the default (target-calibrated) cell."""
    parts = _record_parts(record)
    if parts is None:
        stored = record.get("cell_id")
        return stored if isinstance(stored, str) else None
    base, named = parts
    if not named:
        return base
    head, seed = base.rsplit("/", 1)
    return f"{head}/attacks={'+'.join(_canonical_attacks(named))}/{seed}"


def needed_attacks(spec: ExperimentSpec) -> tuple[str, ...]:
    """The attacks a cell computes: its list, or all that its scale affords for its architecture."""
    from mcmia_helpers.attacks.names import default_attacks

    if spec.attacks:
        return tuple(spec.attacks)
    return default_attacks(get_scale(spec.scale).for_arch(spec.arch))


def _index(records: list[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], str | None, str | None, set[str] | None]]:
    """(record, cell id, base id, attacks computed) of each record, computed once."""
    out = []
    for record in records:
        parts = _record_parts(record)
        computed = record.get("attacks")
        out.append((record, record_cell_id(record), parts[0] if parts else None,
                    set(computed) if isinstance(computed, Mapping) else None))
    return out


def _find(spec: ExperimentSpec, index: list) -> Mapping[str, Any] | None:
    wanted, base, needed = cell_id(spec), base_cell_id(spec), set(needed_attacks(spec))
    fallback = None
    for record, ident, record_base, computed in reversed(index):
        if ident == wanted:
            return record
        if fallback is None and record_base == base and computed is not None and needed <= computed:
            fallback = record
    return fallback


def find_record(spec: ExperimentSpec, records: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record that serves cell ``spec``, the latest first: one with the cell's id, else one
    of the same experiment (:func:`base_cell_id`) holding results for every attack the cell asks
    for; ``None`` when there is none (the cell must be computed)."""
    return _find(spec, _index(records))


def stale_records(spec: ExperimentSpec, records: list[Mapping[str, Any]]) -> list[str]:
    """For a cell no record serves: the attacks it asks for that the records of its experiment
    lack (empty when there is no record of the experiment at all)."""
    base, needed = base_cell_id(spec), needed_attacks(spec)
    missing: set[str] = set()
    for record in records:
        parts = _record_parts(record)
        if parts is not None and parts[0] == base:
            computed = record.get("attacks") if isinstance(record.get("attacks"), Mapping) else {}
            missing |= {a for a in needed if a not in computed}
    return _canonical_attacks(missing) if missing else []


def count_cells(grid: Mapping[str, Any]) -> int:
    """How many cells ``grid`` expands to, counted without expanding it."""
    total = 0
    for cell in grid["cells"]:
        for defense in cell.get("defenses", [{"defense": "none"}]):
            total += math.prod(len(v) if isinstance(v, list) else 1
                               for k, v in defense.items() if k != "defense")
    return total * len(grid.get("seeds", [0]))


def check_grid_size(grid: Mapping[str, Any], name: str = "the grid") -> int:
    """The number of cells of ``grid``; more than :data:`~mcmia_helpers.validation.MAX_GRID_CELLS`
    is a one-line UserError naming the limit, answered before any cell is expanded."""
    n = count_cells(grid)
    if n > MAX_GRID_CELLS:
        raise UserError(f"{name} expands to {n} cells, more than the limit of {MAX_GRID_CELLS}: "
                        "split it into smaller grids or use fewer values per parameter")
    return n


def expand(grid: dict[str, Any], scale: str | None = None) -> Iterator[ExperimentSpec]:
    """Every cell of ``grid`` as an :class:`ExperimentSpec` (lists of parameter values expand).

    The grid's size is checked first (:func:`check_grid_size`), and every sparsity-spec file it
    names is read and checked (:func:`~mcmia_helpers.validation.check_sparsity_spec_file`)
    before any cell is validated. ImageNet roots are checked by :func:`check_data_roots` when
    cells are about to run here (``--print-commands`` may name a root of another machine)."""
    check_grid_size(grid)
    scale = scale or grid.get("scale") or os.environ.get("MCMIA_SCALE", "ci")
    seeds = [check_seed(s, "grid seed") for s in grid.get("seeds", [0])]
    attacks = grid.get("attacks")
    for cell in grid["cells"]:
        for defense in cell.get("defenses", [{"defense": "none"}]):
            specs = defense.get("sparsity_spec")
            for path in (specs if isinstance(specs, list) else [specs]):
                if path is not None:
                    check_sparsity_spec_file(path, cell["arch"], where="sparsity_spec")
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


def check_data_roots(specs: Iterable[ExperimentSpec]) -> None:
    """Every ImageNet root the cells ``specs`` will read is an ImageFolder tree
    (:func:`~mcmia_helpers.validation.check_imagenet_root`): checked before the first cell runs."""
    roots = {s.imagenet_root for s in specs if s.imagenet_root and "imagenet" in (s.dataset, s.standin)}
    for root in sorted(roots):
        check_imagenet_root(root, where="imagenet_root")


def done_cells(out: str | os.PathLike) -> set[str]:
    """The canonical ids (:func:`record_cell_id`) of the cells already recorded in ``out`` (a
    JSON-lines file; damaged lines are set aside by :func:`~mcmia_helpers.io.read_jsonl`).
    Whether a cell is served is :func:`find_record`'s question (a longer record serves a
    shorter attacks list)."""
    return {cell for cell in map(record_cell_id, read_jsonl(out)) if cell is not None}


def todo_cells(specs: list[ExperimentSpec], records: list[Mapping[str, Any]]) -> list[ExperimentSpec]:
    """The cells of ``specs`` that no record of ``records`` serves (:func:`find_record`)."""
    index = _index(records)
    return [s for s in specs if _find(s, index) is None]


def report_stale(specs: list[ExperimentSpec], records: list[Mapping[str, Any]], out: Any) -> int:
    """Say in one line how many cells have only stale records (records of their experiment
    that lack some of the attacks asked for), naming the first; return how many."""
    stale = [(s, missing) for s in specs if (missing := stale_records(s, records))]
    if stale:
        spec, missing = stale[0]
        print(f"{len(stale)} cell(s) have stale records in {out} (e.g. {base_cell_id(spec)} lacks "
              f"{', '.join(missing)}): computed again, the new record is appended", file=sys.stderr)
    return len(stale)


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


def _lock_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.cells")


@contextlib.contextmanager
def cell_lock(out: str | os.PathLike, cell: str, *, wait: bool) -> Iterator[bool]:
    """An exclusive lock on cell ``cell`` of results file ``out``, held for the ``with`` block;
    yields whether it is held (``wait=False`` gives up at once when another process holds it).

    The lock is ``fcntl.flock`` on ``.NAME.cells/<hash of the id>.lock`` next to ``out``; the
    lock files stay (removing one another process waits on would let two hold "the" lock).
    Where ``fcntl`` does not exist (Windows) there is no sharing: the lock is always held."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    folder = _lock_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(cell.encode()).hexdigest()[:32] + ".lock"
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def run_grid(grid: dict[str, Any], out: str | os.PathLike, *, only: str | None = None,
             scale: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the cells of ``grid`` missing from ``out``; return the records computed now.

    ``only`` keeps the cells whose id contains it (e.g. ``"resnet18"`` or ``"prune/sparsity=0.9"``).
    Each cell is computed under its :func:`cell_lock`, after reading ``out`` again: a cell that
    another grid is computing is put off to the end, then waited for and found done, so
    concurrent grids on one file split the work and record each cell once.
    """
    from tqdm.auto import tqdm

    specs = select(list(expand(grid, scale)), only)
    stored = read_jsonl(out)
    todo = todo_cells(specs, stored)
    check_data_roots(todo)
    report_stale(todo, stored, out)
    records = []
    bar = tqdm(total=len(todo), desc=f"grid ({len(specs) - len(todo)} of {len(specs)} cells done)",
               disable=not progress)
    queue, deferred = list(todo), []
    while queue or deferred:
        wait = not queue
        spec = queue.pop(0) if queue else deferred.pop(0)
        ident = cell_id(spec)
        with cell_lock(out, ident, wait=wait) as held:
            if not held:
                deferred.append(spec)  # another grid computes it: come back at the end
                continue
            bar.set_postfix_str(ident)
            if find_record(spec, read_jsonl(out)) is None:
                record = run_experiment(spec)
                record["cell_id"] = ident
                record["attacks_requested"] = list(spec.attacks) if spec.attacks else None
                append_jsonl(out, record)
                records.append(record)
            bar.update(1)
    bar.close()
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
    """The records of grid ``config``, one per cell (:func:`find_record`), in the grid's order:
    read from ``results`` when it holds every cell, else the missing cells are computed first
    (so a chapter runs from stored results or from scratch)."""
    grid = load_grid(config)
    run_grid(grid, results, progress=progress)
    index = _index(read_records(results))
    served = [_find(s, index) for s in expand(grid)]
    return [dict(r) for r in served if r is not None]
