"""One validation layer for every input of the command line and the grid files.

Every check here raises :class:`~mcmia_helpers.errors.UserError` with one line that names the
problem and the fix, and runs before any long work starts:

* seeds: integers in ``[0, SEED_LIMIT)`` (``2**31``). Seeds derived from them (a shadow model's
  ``seed * 100_000 + role``, an epoch's ``seed * 100_003 + epoch``) are reduced into torch's
  range by :func:`~mcmia_helpers.training.epoch_seed`, so no valid seed overflows;
* defence parameters: finite numbers within the bounds of
  :data:`~mcmia_helpers.defences.registry.PARAM_SCHEMAS` (e.g.
  ``0 <= lam <= 1000``, ``0 < max_grad_norm <= 1000``), the same bounds for ``--lam`` on the
  command line, ``lam:`` in a grid and a notebook's spec; the defence's own validator then
  checks the rest;
* devices: :func:`~mcmia_helpers.training.check_device` (what torch reports on this machine);
* output paths and folders: :func:`~mcmia_helpers.io.check_output_path`,
  :func:`~mcmia_helpers.io.check_writable_dir`;
* grid files: decoded as UTF-8, parsed with ``yaml.safe_load`` and checked against the JSON
  schema :func:`grid_schema` with ``jsonschema``: unknown keys, wrong types, values out of
  bounds and empty lists are errors that name the key and its line in the file;
* sizes, each bound a one-line error naming the limit: input files read at most
  :data:`MAX_INPUT_BYTES`; a YAML document may expand (aliases followed) to at most
  :data:`MAX_YAML_NODES` nodes, counted on the composed node graph before anything is
  constructed or schema-checked, so a "billion laughs" file is refused in milliseconds; a grid
  has at most :data:`MAX_GRID_CELLS` cells (counted before expansion, in
  :mod:`mcmia_helpers.grid`); a zoo at most :data:`MAX_ZOO_MODELS` models;
* sparsity-spec files (``--sparsity-spec``, a grid's ``sparsity_spec:``): read, decoded, parsed
  and their layer names checked against the architecture's prunable layers
  (:func:`check_sparsity_spec_file`, on a model skeleton built on torch's ``meta`` device: no
  weights are allocated), so ``--dry-run`` catches an unknown layer;
* outputs: every file a command will write is probed by creating (and removing) a file next to
  it (as root, permission bits say nothing), and no two outputs, or an output and an input, are
  one file (:func:`check_distinct_files`).

This module imports no torch at import time (the command line's parser imports it); the checks
that need torch import it when they run.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable

from mcmia_helpers.choices import ARCHITECTURES, ATTACKS, CALIBRATIONS, DATASETS
from mcmia_helpers.errors import UserError
from mcmia_helpers.scales import SCALES

# The checks that need torch (devices, the defence registry's schemas) import it when they run,
# so that importing this module (the command line's parser does) costs no torch import.

#: The largest input file (grid file, sparsity spec) read, in bytes.
MAX_INPUT_BYTES = 1 << 20
#: The most nodes a YAML document may expand to, aliases followed (a grid of the book has ~200).
MAX_YAML_NODES = 100_000
#: The most cells one grid may expand to (the paper grid has a few hundred).
MAX_GRID_CELLS = 10_000
#: The most models in one zoo (LiRA's paper used 256 shadow models).
MAX_ZOO_MODELS = 4096

#: Seeds are integers in ``[0, SEED_LIMIT)``.
SEED_LIMIT = 2**31

_NUMBER = {"type": "number"}

#: Bounds of the ImageNet options (``--imagenet-size``, ``--imagenet-classes``).
IMAGENET_SIZE = (8, 1024)
IMAGENET_CLASSES = (1, 100_000)


def check_seed(value: Any, where: str = "--seed") -> int:
    """``value`` as a seed in ``[0, SEED_LIMIT)``; a bool, a float, text or a seed out of range
    is a one-line :class:`UserError` naming ``where`` it came from."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise UserError(f"{where} {value!r} is not an integer: use a seed in [0, 2**31), e.g. 0") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{where} {value!r} is not an integer: use a seed in [0, 2**31), e.g. 0")
    if value < 0:
        raise UserError(f"{where} {value} is negative: use a seed in [0, 2**31), e.g. 0")
    if value >= SEED_LIMIT:
        raise UserError(f"{where} {value} is too large: use a seed in [0, 2**31) = [0, {SEED_LIMIT})")
    return int(value)


def check_environment(command: str) -> None:
    """The environment variables a command relies on, checked up front: ``MCMIA_DEVICE`` names
    a device torch sees, ``MCMIA_CACHE`` (models) and ``MCMIA_DATA`` (datasets) are writable
    folders (or can be created as such). ``command`` is ``run``, ``grid`` or ``data``."""
    from mcmia_helpers.data import data_root
    from mcmia_helpers.io import check_writable_dir
    from mcmia_helpers.training import cache_dir, check_device

    if os.environ.get("MCMIA_DEVICE"):
        check_device(os.environ["MCMIA_DEVICE"])
    if command in ("run", "grid"):
        check_writable_dir(cache_dir(), "the model cache (MCMIA_CACHE)")
    check_writable_dir(data_root(), "the data folder (MCMIA_DATA)")


# --------------------------------------------------------------------------- grid files


def _registry() -> dict[str, tuple[str, ...]]:
    """Defence name -> the parameter names it takes (from the defence registry)."""
    from mcmia_helpers.defences import DEFENSE_PARAMS

    return dict(DEFENSE_PARAMS)


def grid_schema() -> dict[str, Any]:
    """The JSON schema of a grid file (see :mod:`mcmia_helpers.grid` for an example)."""
    from mcmia_helpers.defences.registry import ANY_PARAM_SCHEMA, PARAM_SCHEMAS

    defences = _registry()

    def values(schema: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [schema, {"type": "array", "minItems": 1, "items": schema}]}

    param_names = sorted({p for ps in defences.values() for p in ps})
    defence = {
        "type": "object",
        "required": ["defense"],
        "properties": {"defense": {"enum": sorted(defences)},
                       **{p: values(PARAM_SCHEMAS.get(p, ANY_PARAM_SCHEMA)) for p in param_names}},
        "additionalProperties": False,
        "allOf": [{"if": {"properties": {"defense": {"const": name}}},
                   "then": {"propertyNames": {"enum": ["defense", *params]}}}
                  for name, params in sorted(defences.items())],
    }
    cell = {
        "type": "object",
        "required": ["arch", "dataset"],
        "additionalProperties": False,
        "properties": {
            "arch": {"enum": list(ARCHITECTURES)},
            "dataset": {"enum": list(DATASETS)},
            "standin": {"enum": list(DATASETS)},
            "imagenet_root": {"type": "string", "minLength": 1},
            "imagenet_size": {"type": "integer", "minimum": IMAGENET_SIZE[0], "maximum": IMAGENET_SIZE[1]},
            "imagenet_classes": {"type": "integer", "minimum": IMAGENET_CLASSES[0],
                                 "maximum": IMAGENET_CLASSES[1]},
            "augment": {"type": "boolean"},
            "calibration": {"enum": list(CALIBRATIONS)},
            "defenses": {"type": "array", "minItems": 1, "items": defence},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["cells"],
        "additionalProperties": False,
        "properties": {
            "scale": {"enum": list(SCALES)},
            "seeds": {"type": "array", "minItems": 1, "uniqueItems": True,
                      "items": {"type": "integer", "minimum": 0, "maximum": SEED_LIMIT - 1}},
            "attacks": {"type": "array", "minItems": 1, "uniqueItems": True,
                        "items": {"enum": list(ATTACKS)}},
            "cells": {"type": "array", "minItems": 1, "items": cell},
        },
    }


def _node_at(node: Any, path: Iterable[Any]) -> Any:
    """The YAML node at ``path`` (keys and list indices) below ``node``, as deep as it exists."""
    import yaml

    for step in path:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if getattr(k, "value", None) == str(step)), None)
            if found is None:
                found = next((v for k, v in node.value if k.value == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            found = node.value[step]
        else:
            found = None
        if found is None:
            break
        node = found
    return node


def _key_node(node: Any, key: str) -> Any:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if getattr(k, "value", None) == key:
                return k
    return node


def _where(path: Iterable[Any]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out or "the top level"


def _error_line(error: Any, root: Any) -> tuple[str, int | None]:
    """A short description of one jsonschema error and the line (1-based) it points at."""
    path = list(error.absolute_path)
    node = _node_at(root, path)
    message = error.message
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in error.instance if k not in allowed)
        if extra:
            node = _key_node(node, extra[0])
            message = (f"unknown key '{extra[0]}' (allowed: {', '.join(sorted(allowed))})")
    elif "propertyNames" in error.schema_path:
        key = str(error.instance)
        node = _key_node(node, key)
        message = f"'{key}' is not a parameter of this defence (allowed: {', '.join(error.validator_value)})"
    elif error.validator == "required":
        message = error.message.replace("is a required property", "is missing (it is required)")
    elif error.validator == "minItems" and error.instance == []:
        message = "is an empty list: it would expand to no cells"
    elif error.validator == "anyOf" and error.context and not isinstance(error.instance, list):
        scalar = [e for e in error.context if e.relative_schema_path and e.relative_schema_path[0] == 0]
        if scalar:  # a single value (not a list of values): say what the value should be
            message = _best_error(scalar).message
            if isinstance(error.instance, str):
                message += " (YAML reads 1e3 as text: write 1.0e+3)"
    elif error.validator == "type" and error.validator_value == "array":
        message = f"{error.instance!r} should be a list, e.g. [{error.instance}]"
    line = getattr(getattr(node, "start_mark", None), "line", None)
    return f"{_where(path)}: {message}", (line + 1 if line is not None else None)


def _best_error(errors: list[Any]) -> Any:
    """The most specific error: deepest path first, then the one jsonschema finds most relevant."""
    import jsonschema

    deepest = max(len(e.absolute_path) for e in errors)
    return jsonschema.exceptions.best_match([e for e in errors if len(e.absolute_path) == deepest])


def read_input_file(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of input file ``path`` (at most :data:`MAX_INPUT_BYTES`), or a one-line
    :class:`UserError` naming ``what`` it is: missing, a folder, unreadable or too large."""
    text = os.fspath(path)
    try:
        with open(os.path.expanduser(text), "rb") as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)
    except IsADirectoryError:
        raise UserError(f"{what} {text} is a folder: give the path of a file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {text} ({exc.strerror or exc}): check the path") from None
    if len(data) > MAX_INPUT_BYTES:
        raise UserError(f"{what} {text} is larger than the limit of {MAX_INPUT_BYTES} bytes: "
                        "give a smaller file")
    return data


def decode_text(data: bytes, what: str) -> str:
    """``data`` decoded as UTF-8, or a one-line UserError naming the line and byte at fault."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{what} line {line}: not UTF-8 text (byte {exc.start}): "
                        "save the file as UTF-8") from None


def yaml_expanded_size(root: Any) -> int:
    """How many nodes the composed YAML node graph ``root`` stands for with every alias followed
    (a shared node counts each time it is reached), computed in time linear in the graph; a
    node that contains itself (a recursive alias) is a :class:`ValueError`."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            children = (node.value if isinstance(node, yaml.SequenceNode) else
                        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            active.discard(key)
            continue
        if key in sizes:
            continue
        if key in active:
            raise ValueError("a recursive alias (a node that contains itself)")
        active.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            if id(child) in active:
                raise ValueError("a recursive alias (a node that contains itself)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _yaml_error(exc: Exception, what: str) -> UserError:
    """The one-line error for YAML that cannot be read (too deep, or not YAML)."""
    if isinstance(exc, RecursionError):
        return UserError(f"{what}: nested too deeply to read: write it flatter")
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return UserError(f"{what}{where}: not valid YAML ({problem})")


def parse_yaml(text: str, what: str) -> tuple[Any, Any]:
    """``(value, node graph)`` of YAML ``text``; not YAML, or expanding beyond
    :data:`MAX_YAML_NODES` nodes once its aliases are followed, is a one-line UserError. The
    bound is checked on the composed graph, before any value is constructed."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (RecursionError, yaml.YAMLError) as exc:
        raise _yaml_error(exc, what) from None
    if root is None:
        return None, None
    try:
        size = yaml_expanded_size(root)
    except ValueError as exc:
        raise UserError(f"{what}: {exc}: write the values out") from None
    if size > MAX_YAML_NODES:
        raise UserError(f"{what}: expands to {size} YAML nodes (aliases followed), more than the "
                        f"limit of {MAX_YAML_NODES}: write a smaller file, without nested aliases")
    try:
        return yaml.safe_load(text), root
    except (RecursionError, yaml.YAMLError) as exc:
        raise _yaml_error(exc, what) from None


def load_grid_text(data: bytes, name: str) -> dict[str, Any]:
    """Decode, parse and schema-check the bytes of a grid file called ``name``; return the grid.

    Errors (not UTF-8, not YAML, not matching :func:`grid_schema`) are one-line
    :class:`UserError` messages that give the file, the line and the key at fault.
    """
    import jsonschema

    if len(data) > MAX_INPUT_BYTES:
        raise UserError(f"grid config {name} is larger than the limit of {MAX_INPUT_BYTES} bytes: "
                        "split it into smaller grids")
    text = decode_text(data, f"grid config {name}")
    grid, root = parse_yaml(text, f"grid config {name}")
    if not isinstance(grid, dict):
        raise UserError(f"grid config {name}: expected a mapping with a 'cells' list "
                        "(see mcmia_helpers/configs/ci.yaml)")
    errors = list(jsonschema.Draft202012Validator(grid_schema()).iter_errors(grid))
    if errors:
        message, line = _error_line(_best_error(errors), root)
        where = f" line {line}" if line is not None else ""
        raise UserError(f"grid config {name}{where}: {message}")
    for path, value in _leaves(grid, []):
        if isinstance(value, float) and not math.isfinite(value):
            line = getattr(getattr(_node_at(root, path), "start_mark", None), "line", None)
            where = f" line {line + 1}" if line is not None else ""
            raise UserError(f"grid config {name}{where}: {_where(path)}: {value} is not a finite number")
    return grid


def _leaves(obj: Any, path: list[Any]) -> Iterable[tuple[list[Any], Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, path + [key])
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _leaves(value, path + [i])
    else:
        yield path, obj


# --------------------------------------------------------------------------- sparsity specs


def _prunable_names(arch: str, image_size: int) -> list[str]:
    """The prunable layer names of ``arch`` in the form ``image_size`` selects, from a skeleton
    built on torch's ``meta`` device (shapes only, no memory, milliseconds)."""
    import torch

    from mcmia_helpers.defences.compression import prunable_layers
    from mcmia_helpers.models import build_model

    with torch.device("meta"):
        model = build_model(arch, num_classes=10, in_channels=3, image_size=image_size)
    return list(prunable_layers(model))


def check_sparsity_spec_file(path: str | os.PathLike, arch: str | None = None,
                             image_sizes: Iterable[int] = (32,), where: str = "--sparsity-spec") -> dict[str, float]:
    """Read, decode and parse the sparsity-spec file ``path`` (JSON, or YAML for ``.yaml`` and
    ``.yml``: a mapping ``{layer: sparsity, default: s}``), check every value is a sparsity in
    [0, 1) and, given ``arch``, every layer name is a prunable layer of it (in one of the forms
    ``image_sizes`` select: the small-image form for 32, the ImageNet form above 64). Returns the
    mapping; anything wrong is a one-line UserError naming the file."""
    import json

    from mcmia_helpers.defences.pruning import check_sparsity

    text = os.fspath(path)
    what = f"{where} {text}"
    raw = read_input_file(path, where)
    decoded = decode_text(raw, what)
    if text.lower().endswith((".yaml", ".yml")):
        data, _ = parse_yaml(decoded, what)
    else:
        try:
            data = json.loads(decoded)
        except (ValueError, RecursionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot parse {what} ({first}): write a JSON or YAML mapping such as "
                            '{"features.0": 0.5, "default": 0.9}') from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{what} is not a mapping of layer names to sparsities: write e.g. "
                        '{"features.0": 0.5, "default": 0.9}')
    try:
        spec = {str(name): check_sparsity(value, str(name)) for name, value in data.items()}
    except UserError as err:
        raise UserError(f"{what}: {err}") from None
    if arch is not None:
        known: set[str] = set()
        layers: list[str] = []
        for size in image_sizes:
            names = _prunable_names(arch, size)
            known |= set(names)
            layers = layers or names
        for name in spec:
            layer = name.removesuffix(".weight")
            if layer != "default" and layer not in known:
                shown = ", ".join(layers[:8]) + (f", ... ({len(layers)} in all)" if len(layers) > 8 else "")
                raise UserError(f"{what} names unknown layer '{name}' of {arch}: prunable layers are {shown}")
    return spec


# --------------------------------------------------------------------------- ImageNet roots


def check_imagenet_root(root: str | os.PathLike, where: str = "--imagenet-root") -> None:
    """A one-line UserError unless ``root`` looks like the ImageFolder tree the ImageNet loader
    reads (``root/train`` and ``root/val``, or ``root`` itself, each with a folder per class):
    checked up front, by listing folders only; the images are decoded when the data loads."""
    from pathlib import Path

    text = os.fspath(root)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise UserError(f"{where} {text} is not a folder: give a folder with train/ and val/ "
                        "ImageFolder trees (one folder per class)")
    splits = [path / s for s in ("train", "val") if (path / s).is_dir()] or [path]
    for split in splits:
        try:
            with os.scandir(split) as entries:
                has_class = any(entry.is_dir() for entry in entries)
        except OSError as exc:
            raise UserError(f"cannot read {where} {split} ({exc.strerror or exc}): check the path") from None
        if not has_class:
            raise UserError(f"{where} {split} has no class folders (no images found): expected "
                            "ImageFolder trees "
                            "(one folder per class) in train/ and val/")


# --------------------------------------------------------------------------- outputs


def probe_writable(path: str | os.PathLike, what: str) -> None:
    """A one-line UserError unless a file can really be created next to ``path`` (in its
    deepest existing folder): a probe file is created and removed. ``os.access`` alone says
    yes to root on ``/proc`` or a read-only bind mount; the write fails only after training."""
    import tempfile
    from pathlib import Path

    probe = Path(path).expanduser().parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        fd, name = tempfile.mkstemp(prefix=".mcmia-probe-", dir=probe)
    except OSError as exc:
        raise UserError(f"cannot write {what} {os.fspath(path)}: {probe} does not take new files "
                        f"({exc.strerror or exc}); choose a writable path") from None
    os.close(fd)
    os.unlink(name)


def check_distinct_files(outputs: dict[str, Any], inputs: dict[str, Any] | None = None) -> None:
    """A one-line UserError when two of ``outputs`` (what -> path; ``None`` skipped) name one
    file, or an output names one of ``inputs`` (it would overwrite it)."""
    from pathlib import Path

    def key(value: Any) -> str:
        return os.path.realpath(Path(value).expanduser())

    seen: dict[str, str] = {}
    for what, value in (inputs or {}).items():
        if value is not None:
            seen.setdefault(key(value), f"input {what}")
    for what, value in outputs.items():
        if value is None:
            continue
        other = seen.get(key(value))
        if other is not None:
            raise UserError(f"{what} {os.fspath(value)} is the same file as {other}: one would "
                            "overwrite the other; give each output its own name")
        seen[key(value)] = what
