"""Data: registry, offline behaviour, stand-ins, views and disjoint membership splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mcmia_helpers.data import DATASETS, MIASplit, load_dataset, make_split
from mcmia_helpers.errors import UserError
from mcmia_helpers.scales import SplitSizes, split_sizes


@settings(max_examples=60, deadline=None)
@given(n_members=st.integers(1, 400), seed=st.integers(0, 2**31 - 1), extra=st.integers(0, 500))
def test_splits_are_pairwise_disjoint_and_sized(n_members: int, seed: int, extra: int) -> None:
    sizes = split_sizes(n_members)
    split = make_split(sizes.total + extra, sizes, seed)
    parts = split.parts()
    assert {k: len(v) for k, v in parts.items()} == sizes.to_dict()
    union = torch.cat(list(parts.values()))
    assert len(torch.unique(union)) == len(union) == sizes.total
    assert int(union.min()) >= 0 and int(union.max()) < sizes.total + extra


def test_same_seed_same_split_other_seed_other_split() -> None:
    sizes = split_sizes(100)
    a, b, c = (make_split(1000, sizes, s) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a.parts().values(), b.parts().values()))
    assert not torch.equal(a.members, c.members)


def test_verify_disjoint_catches_overlap() -> None:
    split = make_split(1000, split_sizes(50), 0)
    split.test = torch.cat([split.test, split.members[:1]])
    with pytest.raises(AssertionError, match="test"):
        split.verify_disjoint()


def test_split_round_trips_through_json(tmp_path) -> None:
    split = make_split(1000, split_sizes(50), 7, dataset="digits")
    split.save(tmp_path / "split.json")
    loaded = MIASplit.load(tmp_path / "split.json")
    assert loaded.seed == 7 and loaded.dataset == "digits"
    assert all(torch.equal(x, y) for x, y in zip(split.parts().values(), loaded.parts().values()))


def test_split_too_big_or_negative_seed_is_a_user_error() -> None:
    with pytest.raises(UserError, match="needs 600 examples"):
        make_split(500, split_sizes(100), 0)
    with pytest.raises(UserError, match="negative"):
        make_split(1000, split_sizes(10), -1)


def test_fit_to_shrinks_proportionally_and_stays_balanced() -> None:
    sizes = split_sizes(500).fit_to(1797)
    assert sizes.total <= 1797 and sizes.members == sizes.nonmembers
    assert sizes.shadow_pool >= 2 * sizes.members - 2
    assert split_sizes(10).fit_to(10_000) == split_sizes(10)


def test_fashion_mnist_loads_into_memory(fashion) -> None:
    assert fashion.images.dtype == torch.uint8 and fashion.images.shape == (70_000, 1, 28, 28)
    assert fashion.num_classes == 10 and not fashion.is_standin
    counts = torch.bincount(fashion.labels)
    assert counts.tolist() == [7000] * 10
    x, y = fashion.batch(torch.arange(256))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3


def test_rgb_32_view_of_grey_28(fashion) -> None:
    view = fashion.as_view(32, 3)
    assert view.images.shape == (70_000, 3, 32, 32)
    assert torch.equal(view.images[5, 0, 2:30, 2:30], fashion.images[5, 0])
    assert torch.equal(view.images[5, 0], view.images[5, 2])
    assert view.images[:, :, :2].sum() == 0  # the padding is background
    assert "3x32x32 view" in view.view


def test_digits_resized_to_28(digits) -> None:
    assert digits.images.shape == (1797, 1, 28, 28) and digits.num_classes == 10
    assert int(digits.images.max()) > 200


def test_unavailable_dataset_gives_one_line_message(tmp_path) -> None:
    with pytest.raises(UserError) as err:
        load_dataset("mnist", root=tmp_path, download=False)
    message = str(err.value)
    assert "mnist" in message and str(tmp_path) in message and "\n" not in message


def test_standin_is_explicit(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCMIA_DATA", str(tmp_path))
    bundle = load_dataset("cifar10", standin="digits", download=False, image_size=32, channels=3)
    assert bundle.name_requested == "cifar10" and bundle.name_used == "digits" and bundle.is_standin
    assert "STAND-IN for cifar10" in bundle.describe()
    assert bundle.images.shape[1:] == (3, 32, 32)


def test_unknown_dataset() -> None:
    with pytest.raises(UserError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet", "digits"}


def test_imagenet_reads_an_image_folder_with_class_subset(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02", "n03"):
            folder = tmp_path / "inet" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bundle = load_dataset("imagenet", root=tmp_path / "data", imagenet_root=tmp_path / "inet",
                          imagenet_size=16, imagenet_classes=2)
    assert bundle.images.shape == (12, 3, 16, 16) and bundle.num_classes == 2
    assert sorted(torch.unique(bundle.labels).tolist()) == [0, 1]


def test_imagenet_without_root_is_a_user_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MCMIA_IMAGENET", raising=False)
    with pytest.raises(UserError, match="imagenet-root"):
        load_dataset("imagenet", root=tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        load_dataset("imagenet", root=tmp_path, imagenet_root=tmp_path / "nope")
