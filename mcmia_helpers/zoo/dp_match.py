"""The DP-SGD baseline at equal utility: which DP setting matches the pruned zoo's test accuracy.

Aerni, Zhang and Tramèr ("Evaluations of machine learning privacy defenses are misleading",
CCS 2024) compare an empirical defence with DP-SGD *tuned to the same test accuracy*, at any
epsilon, even a vacuous one: a defence that leaks more than DP-SGD of equal utility buys nothing
that plain DP-SGD does not. ``tools/dp_equal_utility.py`` measures the target accuracy (the ADMM
90% zoo's first models), tries DP-SGD settings on the same members until one is within a
tolerance, and writes :data:`DP_MATCH_FILE`; the zoo chapter (chapter 6) reads the chosen
setting with :func:`read_dp_match` and builds its DP zoo with it.

:func:`choose_setting` is the rule, stated once and used by both the tool (to choose) and the
reader (to check the file): of the tried settings whose mean test accuracy is within
``tolerance`` of the target, the most private (smallest epsilon; ties: the smaller gap);
if none is within, the one closest to the target.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from mcmia_helpers.defences import validate_defense_params
from mcmia_helpers.errors import UserError

#: The file the tool writes, relative to the repository root.
DP_MATCH_FILE = "results/dp_equal_utility.json"
#: The command that writes it (named in every error about it).
DP_MATCH_TOOL = "python tools/dp_equal_utility.py"
#: ``kind`` and ``format`` of the file (bump ``format`` when its fields change meaning).
DP_MATCH_KIND = "dp_equal_utility"
DP_MATCH_FORMAT = 1


def default_dp_match_path() -> Path:
    """:data:`DP_MATCH_FILE` in the repository that holds this package (an editable install)."""
    return Path(__file__).resolve().parents[2] / DP_MATCH_FILE


def gap(test_acc_mean: float, target: float) -> float:
    """The signed accuracy gap of a DP setting to the target (positive: DP is more accurate)."""
    return float(test_acc_mean) - float(target)


def choose_setting(tried: Sequence[Mapping[str, Any]], target: float,
                   tolerance: float) -> int:
    """Index into ``tried`` (dicts with ``epsilon`` and ``test_acc_mean``) of the chosen setting:
    the smallest epsilon within ``tolerance`` of ``target`` (ties: the smaller gap, then the
    first tried), else the closest to ``target`` (ties: the first tried)."""
    if not tried:
        raise ValueError("no DP setting was tried")
    gaps = [abs(gap(t["test_acc_mean"], target)) for t in tried]
    within = [i for i, g in enumerate(gaps) if g <= tolerance]
    if within:
        return min(within, key=lambda i: (float(tried[i]["epsilon"]), gaps[i], i))
    return min(range(len(gaps)), key=lambda i: (gaps[i], i))


def _fail(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}: run `{DP_MATCH_TOOL}` to write it again")


def _number(record: Mapping[str, Any], key: str, path: Path) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, f"'{key}' is not a finite number")
    return float(value)


def _check_tried(record: Mapping[str, Any], path: Path) -> list[dict[str, Any]]:
    tried = record.get("tried")
    if not isinstance(tried, list) or not tried or not all(isinstance(t, dict) for t in tried):
        raise _fail(path, "'tried' is not a non-empty list of settings")
    for t in tried:
        for key in ("epsilon", "max_grad_norm", "test_acc_mean"):
            _number(t, key, path)
        if not 0.0 <= t["test_acc_mean"] <= 1.0:
            raise _fail(path, "a tried setting has a test accuracy outside [0, 1]")
        try:
            validate_defense_params("dp", {"epsilon": t["epsilon"],
                                           "max_grad_norm": t["max_grad_norm"]})
        except UserError as exc:
            raise _fail(path, f"a tried setting is not a valid DP setting ({exc})") from None
    return tried


def check_dp_match(record: Any, path: str | os.PathLike = DP_MATCH_FILE) -> dict[str, Any]:
    """``record`` if it is a consistent equal-utility file, else a one-line :class:`UserError`.

    Checked: kind and format, the target accuracy, every tried setting (an epsilon and a
    clipping norm the ``dp`` defence accepts, within their bounds; an accuracy in [0, 1]), that
    ``chosen`` is the setting :func:`choose_setting` picks from ``tried``, and ``reached``.
    """
    path = Path(path)
    if not isinstance(record, dict) or record.get("kind") != DP_MATCH_KIND:
        raise _fail(path, f"not a {DP_MATCH_KIND} record")
    if record.get("format") != DP_MATCH_FORMAT:
        raise _fail(path, f"format {record.get('format')!r} is not {DP_MATCH_FORMAT}")
    target = record.get("target")
    if not isinstance(target, dict):
        raise _fail(path, "'target' is missing")
    target_acc = _number(target, "test_acc_mean", path)
    tolerance = _number(record, "tolerance", path)
    tried = _check_tried(record, path)
    chosen = record.get("chosen")
    if not isinstance(chosen, dict):
        raise _fail(path, "'chosen' is missing")
    expected = tried[choose_setting(tried, target_acc, tolerance)]
    if any(chosen.get(k) != expected[k] for k in ("epsilon", "max_grad_norm", "test_acc_mean")):
        raise _fail(path, "'chosen' is not the setting the tried accuracies select")
    if bool(record.get("reached")) != (abs(gap(expected["test_acc_mean"], target_acc)) <= tolerance):
        raise _fail(path, "'reached' disagrees with the chosen setting's gap")
    return record


def read_dp_match(path: str | os.PathLike | None = None, *, arch: str | None = None,
                  dataset: str | None = None, scale: str | None = None) -> dict[str, Any]:
    """The checked equal-utility record of ``path`` (default :func:`default_dp_match_path`).

    ``arch``, ``dataset`` (the requested one, e.g. ``mnist``) and ``scale``, when given, must be
    those the file was tuned for. The DP zoo's parameters are ``record["chosen"]["params"]``.
    A missing, unreadable, damaged or mismatched file is one line naming the tool that writes it.
    """
    path = Path(path) if path is not None else default_dp_match_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: run `{DP_MATCH_TOOL}` to tune the DP-SGD "
                        "baseline to the pruned zoo's accuracy") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"damaged JSON (line {exc.lineno})") from None
    record = check_dp_match(record, path)
    for key, wanted in (("arch", arch), ("dataset_requested", dataset), ("scale", scale)):
        if wanted is not None and record.get(key) != wanted:
            raise _fail(path, f"tuned for {key} {record.get(key)!r}, not {wanted!r}")
    return record
