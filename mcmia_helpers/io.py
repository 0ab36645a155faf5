"""Safe files: atomic writes, checksummed checkpoints, and results files that several
processes can append to at once.

* :func:`atomic_write` and friends: a file is either its old self or its new self, never half
  written, so an interrupt (Ctrl-C, a killed Colab runtime, a pre-empted GPU job) never leaves a
  truncated file behind. A path that exists but is not a regular file (a device such as
  ``/dev/full``, a folder) is refused: renaming over it would replace the device node.
* :func:`atomic_torch_save` stores a digest of the saved content (:func:`content_digest`) in the
  saved dict itself; :func:`load_verified` recomputes it on load. A flipped byte, a truncated or
  emptied file is detected (:class:`DamagedFile`), never trusted: the caches then set the file
  aside (:func:`set_aside`, one line on stderr) and train or decode again. The digest lives in the
  file (key :data:`DIGEST_KEY`) rather than in a sidecar, so one atomic rename publishes content
  and digest together, even with two writers. Files written before digests existed load as
  *legacy* (``had_digest=False``): the caller checks them as far as it can (a full load, a strict
  ``load_state_dict``) and re-saves them with a digest.
* A cache entry also knows *whose* it is: saved with ``key=`` it stores its cache key (under
  :data:`KEY_FIELD`, inside the digested content), and :func:`load_verified` refuses a file whose
  stored key is not the one its name (or the caller) asks for, as :class:`DamagedFile`. A valid
  entry copied over another (one seed's model over another seed's) is then set aside and rebuilt
  like a damaged one, instead of passing its digest check. Entries written before keys were
  stored load without one (``KEY_FIELD not in content``); the caches check those against what
  else they hold (their configuration, seed and shapes) and re-save them with their key.
* :func:`append_jsonl` appends one record under an OS file lock (a ``.NAME.lock`` file next to
  the results), so two grid runs sharing one ``--out`` lose nothing; :func:`read_jsonl` reports
  damaged lines once, with their line numbers, and moves them to ``NAME.rejected``, so readers
  never crash on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mcmia_helpers.errors import UserError

#: The key under which :func:`atomic_torch_save` stores the content digest of a saved dict.
DIGEST_KEY = "content_sha256"
#: The key under which a cache entry stores its own cache key (see :func:`atomic_torch_save`).
KEY_FIELD = "cache_key"


class DamagedFile(Exception):
    """A cached file that cannot be trusted: unreadable, truncated, or its digest does not match."""


def notice(message: str) -> None:
    """One line on stderr for something the reader should know but need not act on."""
    print(f"notice: {' '.join(message.split())}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- atomic writes


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` if a regular file may be written there, else a one-line :class:`UserError`.

    Refused: a name ending in a slash (a folder was meant), an existing path that is not a
    regular file (a folder, a device such as ``/dev/full``, a pipe), an existing file that is
    not writable, and a parent that is not (or cannot be made) a writable folder. Nothing is
    created: this is the up-front check, made before any long work starts.
    """
    text = os.fspath(path)
    if not text or text.endswith(("/", os.sep)):
        raise UserError(f"{what} {text!r} names a folder: give a file name such as {text or './'}record.json")
    path = Path(text).expanduser()
    if path.exists() or path.is_symlink():
        mode = os.stat(path).st_mode if path.exists() else 0
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise UserError(f"{what} {text} is {kind}: give the path of a regular file to write")
        if not os.access(path, os.W_OK):
            raise UserError(f"{what} {text} is not writable: choose a writable path")
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {text}: {probe} is not a writable folder; choose a writable path")
    return path


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is (or can be created as) a writable folder, else a one-line UserError."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is not a folder: point it at a writable folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable ({probe} is not a writable folder): "
                        "point it at a writable folder")
    return path


def _check_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {parent} ({exc.strerror}): choose a writable path") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {parent}: choose a writable path")


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> Path:
    """Call ``write(binary_handle)`` on a temporary file next to ``path``, then rename it over ``path``.

    An existing ``path`` that is not a regular file is refused (one-line :class:`UserError`);
    a failing write (disk full, read-only file system) is one too, and leaves ``path`` as it was.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(f"{path} exists and is not a regular file: give the path of a regular file to write")
    _check_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror}): choose a writable path") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): free some space or choose "
                        "another path") from None
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


# --------------------------------------------------------------------------- checksummed checkpoints


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    """Hash ``obj`` (tensors, containers, scalars) in a canonical, type-tagged byte stream."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    else:  # None, bool, int, float, str, bytes, dtypes, NumPy scalars: type and exact repr
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_digest(obj: Any) -> str:
    """SHA-256 of ``obj``'s content: tensor bytes, dtypes and shapes, and the plain values around them.

    The same state dict gives the same digest before saving and after loading, so a file whose
    bytes changed anywhere the content lives no longer matches.
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def entry_key(path: str | os.PathLike) -> str:
    """The cache key a file's name stands for: its name without the ``.pt`` suffix."""
    name = Path(path).name
    return name[:-3] if name.endswith(".pt") else name


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, key: str | None = None) -> Path:
    """``torch.save`` to ``path`` atomically; a dict is saved with its :func:`content_digest`
    under :data:`DIGEST_KEY`, for :func:`load_verified` to check.

    With ``key`` (a cache entry's key) the dict also stores it under :data:`KEY_FIELD`, inside
    the digested content. A dict that already carries a stored key (an entry loaded to be
    re-saved or copied) is re-stamped with ``key``, or with the key ``path``'s name stands for
    (:func:`entry_key`), so a copy made on purpose (a legacy alias) is valid under its new name.
    """
    if isinstance(obj, dict):
        body = {k: v for k, v in obj.items() if k != DIGEST_KEY}
        if key is not None or KEY_FIELD in body:
            body[KEY_FIELD] = str(key if key is not None else entry_key(path))
        obj = {**body, DIGEST_KEY: content_digest(body)}
    return atomic_write(path, lambda h: torch.save(obj, h))


def load_verified(path: str | os.PathLike, *, map_location: Any = "cpu",
                  key: str | None = None) -> tuple[dict, bool]:
    """Load a dict saved by :func:`atomic_torch_save` and check its digest, and its key.

    Returns ``(content, had_digest)``; ``had_digest`` is ``False`` for a file written before
    digests existed (the caller decides how far to trust it, see the module docstring). Raises
    :class:`DamagedFile` with the reason when the file cannot be read, is not a dict, does not
    match its digest, or stores a cache key (:data:`KEY_FIELD`, kept in ``content``) other than
    ``key`` (default: the key the file's name stands for, :func:`entry_key`): a valid entry of
    another model copied over this one. Always ``weights_only``: a cache file never runs code.
    """
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged zip raises RuntimeError, EOFError, UnpicklingError, ...
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise DamagedFile(f"unreadable ({type(exc).__name__}: {first})") from None
    if not isinstance(blob, dict):
        raise DamagedFile(f"holds a {type(blob).__name__}, not a checkpoint dict")
    stored = blob.pop(DIGEST_KEY, None)
    if stored is not None and content_digest(blob) != stored:
        raise DamagedFile("content does not match its digest")
    own = blob.get(KEY_FIELD)
    expected = str(key) if key is not None else entry_key(path)
    if own is not None and own != expected:
        raise DamagedFile(f"a valid entry of another model: it is {str(own)[:40]}, not {expected[:40]}")
    return blob, stored is not None


def set_aside(path: str | os.PathLike, reason: str, action: str) -> None:
    """Move a damaged ``path`` to ``path.damaged`` (kept for inspection, never read again) and
    say so in one line: what was wrong and what happens instead (``action``)."""
    path = Path(path)
    try:
        os.replace(path, path.with_name(path.name + ".damaged"))
    except OSError:
        path.unlink(missing_ok=True)
    notice(f"{path} is damaged ({reason}): set aside as {path.name}.damaged; {action}")


def check_or_set_aside(path: str | os.PathLike, action: str) -> bool:
    """``True`` if ``path`` exists and loads with a matching (or no) digest; a damaged file is
    set aside (:func:`set_aside`) and ``False`` returned, as for a missing one."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        load_verified(path)
    except DamagedFile as exc:
        set_aside(path, str(exc), action)
        return False
    return True


# --------------------------------------------------------------------------- JSON-lines results


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive OS lock on ``.NAME.lock`` next to ``path``, held for the ``with`` block.

    A separate lock file (not ``path`` itself) because :func:`read_jsonl` may replace ``path``
    by a rename, and a lock on the old inode would not stop a writer that opened the new one.
    """
    path = Path(path)
    _check_parent(path)
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot lock {path} ({exc.strerror}): choose a writable folder") from None
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line, under :func:`file_lock`, in one ``write`` call.

    Two processes appending to one file at once both keep every record. If the file does not
    end with a newline (a line torn by a crash), the new record starts on a line of its own.
    """
    path = Path(path)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with file_lock(path):
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"cannot append to {path} ({exc.strerror}): choose a writable path") from None
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, "short write")
            os.fsync(fd)
        except OSError as exc:
            raise UserError(f"cannot append to {path} ({exc.strerror or exc}): free some space "
                            "or choose another path") from None
        finally:
            os.close(fd)


def _parse_lines(data: bytes) -> tuple[list[tuple[dict, bytes]], list[tuple[int, bytes]]]:
    good, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            value = None
        if isinstance(value, dict):
            good.append((value, raw))
        else:
            bad.append((number, raw))
    return good, bad


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every record (JSON object) of a JSON-lines file; a missing file has none.

    Damaged lines (not UTF-8, not JSON, JSON but not an object) are reported once in one line
    with their line numbers and moved to ``NAME.rejected`` (the file is rewritten without them,
    under :func:`file_lock`), so no reader ever stumbles on them again. Where the file cannot be
    rewritten (a read-only copy) they are reported and skipped.
    """
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise UserError(f"results file {path} is not a regular file: pass the path of a .jsonl file")
    good, bad = _parse_lines(path.read_bytes())
    if not bad:
        return [record for record, _ in good]
    try:
        with file_lock(path):
            good, bad = _parse_lines(path.read_bytes())  # again, under the lock
            if bad:
                rejected = path.with_name(path.name + ".rejected")
                with open(rejected, "ab") as handle:
                    handle.write(b"".join(raw + b"\n" for _, raw in bad))
                    handle.flush()
                    os.fsync(handle.fileno())
                keep = b"".join(raw + b"\n" for _, raw in good)
                atomic_write(path, lambda h: h.write(keep))
                where = f"moved to {rejected.name}"
    except (UserError, OSError):
        where = "skipped (the file is not writable)"
    if bad:
        numbers = ", ".join(str(n) for n, _ in bad)
        notice(f"{path}: damaged line(s) {numbers} (not a JSON object) {where}")
    return [record for record, _ in good]
