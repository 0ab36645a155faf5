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
  bounds and empty lists are errors that name the key and its line in the file.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable

from mcmia_helpers.attacks import ATTACKS
from mcmia_helpers.attacks.shadows import CALIBRATIONS
from mcmia_helpers.data import DATASETS, data_root
from mcmia_helpers.defences import DEFENSE_PARAMS
from mcmia_helpers.defences.registry import ANY_PARAM_SCHEMA, PARAM_SCHEMAS
from mcmia_helpers.errors import UserError
from mcmia_helpers.io import check_writable_dir
from mcmia_helpers.models import ARCHITECTURES
from mcmia_helpers.scales import SCALES
from mcmia_helpers.training import cache_dir, check_device

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
    if os.environ.get("MCMIA_DEVICE"):
        check_device(os.environ["MCMIA_DEVICE"])
    if command in ("run", "grid"):
        check_writable_dir(cache_dir(), "the model cache (MCMIA_CACHE)")
    check_writable_dir(data_root(), "the data folder (MCMIA_DATA)")


# --------------------------------------------------------------------------- grid files


def _registry() -> dict[str, tuple[str, ...]]:
    """Defence name -> the parameter names it takes (from the defence registry)."""
    return dict(DEFENSE_PARAMS)


def grid_schema() -> dict[str, Any]:
    """The JSON schema of a grid file (see :mod:`mcmia_helpers.grid` for an example)."""
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


def load_grid_text(data: bytes, name: str) -> dict[str, Any]:
    """Decode, parse and schema-check the bytes of a grid file called ``name``; return the grid.

    Errors (not UTF-8, not YAML, not matching :func:`grid_schema`) are one-line
    :class:`UserError` messages that give the file, the line and the key at fault.
    """
    import jsonschema
    import yaml

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"grid config {name} line {line}: not UTF-8 text (byte {exc.start}): "
                        "save the file as UTF-8") from None
    try:
        grid = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"grid config {name}{where}: not valid YAML ({problem})") from None
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
