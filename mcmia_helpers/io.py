"""Atomic writes: a file is either its old self or its new self, never half written.

Every result record, split and checkpoint goes through these helpers, so an interrupt (Ctrl-C,
a killed Colab runtime, a pre-empted GPU job) never leaves a truncated file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mcmia_helpers.errors import UserError


def _check_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {parent} ({exc.strerror}): choose a writable path") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {parent}: choose a writable path")


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(binary_handle)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    _check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    return atomic_write(path, lambda h: h.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda h: torch.save(obj, h))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON record as a line, atomically (rewrites the file with the line added)."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")
