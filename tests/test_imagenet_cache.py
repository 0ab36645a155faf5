"""ImageNet caching (issue 13): decoded tensors are reused across processes, and every input
that changes a model (the tree's content, the size, the classes kept) is in its cache key.

Python's ``hash()`` of a string is salted per process, so a cache named by it is never found
again: every run would decode ImageNet once more and write another full copy. The test runs
two processes with different hash seeds; the second must read the first's file without
decoding a single image (its ImageFolder is made to fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcmia_helpers.context import ExperimentSpec, prepare
from mcmia_helpers.data import imagenet_digest

LOAD = """
import json, sys
if sys.argv[2] == "no-decoding":
    import torchvision.datasets
    def refuse(*args, **kwargs):
        raise AssertionError("decoded the ImageFolder again instead of reading the cache")
    torchvision.datasets.ImageFolder = refuse
from mcmia_helpers.data import load_dataset
b = load_dataset("imagenet", imagenet_root=sys.argv[1], imagenet_size=16, imagenet_classes=2)
print(json.dumps({"shape": list(b.images.shape), "source": b.source,
                  "labels": b.labels.tolist()}))
"""


def write_tree(root: Path, classes: int = 3, per_class: int = 3, size: tuple = (40, 50)) -> Path:
    """A tiny ImageFolder tree (train/ and val/, ``classes`` folders of random PNGs)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _load(tree: Path, data: Path, hash_seed: str, mode: str) -> dict:
    env = {**os.environ, "MCMIA_DATA": str(data), "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", LOAD, str(tree), mode], env=env, text=True,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_reuses_the_decoded_tensors(tmp_path) -> None:
    tree, data = write_tree(tmp_path / "inet"), tmp_path / "data"
    first = _load(tree, data, "1", "decode")
    files = sorted(data.glob("imagenet-*.pt"))
    assert len(files) == 1, files
    stamp = files[0].stat().st_mtime_ns
    second = _load(tree, data, "2", "no-decoding")
    assert second == first and first["shape"] == [12, 3, 16, 16]
    assert sorted(data.glob("imagenet-*.pt")) == files and files[0].stat().st_mtime_ns == stamp
    assert first["source"] == {"imagenet_sha256": imagenet_digest(tree), "imagenet_size": 16,
                               "imagenet_classes": 2}


def test_digest_follows_the_content(tmp_path) -> None:
    tree = write_tree(tmp_path / "inet")
    before = imagenet_digest(str(tree))
    assert imagenet_digest(str(tree)) == before  # stable
    imagenet_digest.cache_clear()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tree / "train" / "n00" / "extra.png")
    assert imagenet_digest(str(tree)) != before
    imagenet_digest.cache_clear()


def test_model_keys_name_the_tree_size_and_classes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCMIA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MCMIA_SMOKE", "1")
    tree = write_tree(tmp_path / "inet", classes=3, per_class=6)
    other = write_tree(tmp_path / "other", classes=3, per_class=7)

    def key(root: Path, size: int, classes: int) -> dict:
        spec = ExperimentSpec(arch="resnet18", dataset="imagenet", scale="paper",
                              imagenet_root=str(root), imagenet_size=size, imagenet_classes=classes)
        return prepare(spec).cache_config()

    base = key(tree, 32, 2)
    assert base["imagenet_size"] == 32 and base["imagenet_classes"] == 2
    assert base["imagenet_sha256"] == imagenet_digest(tree)
    assert base["augmentation"].startswith("random crop 32x32")
    for changed in (key(tree, 40, 2), key(tree, 32, 3), key(other, 32, 2)):
        assert changed != base
    assert key(tree, 32, 2) == base
