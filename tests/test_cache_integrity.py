"""Nothing wrong from the cache: damaged checkpoints, zoo members and decoded datasets are
detected (one-line notice), set aside and rebuilt with the same numbers; legacy entries are
still found; a diverged run caches nothing; large seeds derive without overflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mcmia_helpers.errors import TrainingDiverged, UserError
from mcmia_helpers.io import DIGEST_KEY, atomic_torch_save, content_digest, load_verified
from mcmia_helpers.models import build_model
from mcmia_helpers.shadow import ShadowSpec, load_or_train_models
from mcmia_helpers.training import (TrainConfig, TrainingCallback, config_key, fit, load_or_train)

CONFIG = TrainConfig(epochs=2, batch_size=32, seed=0)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", num_classes=10, in_channels=1, image_size=28)


def _trainer(digits, config: TrainConfig = CONFIG, callback=None):
    def train(model, checkpoint):
        return fit(model, digits, torch.arange(64), config, checkpoint_path=checkpoint,
                   callback=callback)
    return train


def flip(path: Path) -> None:
    """64 bytes flipped in the middle of the file (inside the tensor data)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped": flip,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "emptied": lambda p: p.write_bytes(b""),
}


def _one_notice(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("notice:") and "damaged" in lines[0], err
    return lines[0]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_model_is_retrained_with_the_same_numbers(damage, digits, tmp_path, capsys) -> None:
    config = {"test": "damaged model"}
    model, info = load_or_train(config, _lenet, _trainer(digits), cache=tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / f"{config_key(config)}.pt"
    DAMAGE[damage](path)
    capsys.readouterr()
    again, info2 = load_or_train(config, _lenet, _trainer(digits), cache=tmp_path)
    assert info2["cached"] is False  # never trusted: trained again
    assert "training the model again" in _one_notice(capsys.readouterr().err)
    assert (tmp_path / f"{path.name}.damaged").exists()
    for key, value in again.state_dict().items():
        assert torch.equal(value, before[key]), key  # the same numbers as before the damage
    assert info2["history"] == info["history"]
    third, info3 = load_or_train(config, _lenet, _trainer(digits), cache=tmp_path)
    assert info3["cached"] is True and capsys.readouterr().err == ""


def test_damaged_partial_checkpoint_restarts_training(digits, tmp_path, capsys, interrupt_at) -> None:
    config = {"test": "damaged partial"}
    with pytest.raises(KeyboardInterrupt):
        load_or_train(config, _lenet, _trainer(digits, callback=interrupt_at(1)), cache=tmp_path)
    partial = tmp_path / f"{config_key(config)}.partial.pt"
    assert partial.exists()
    DAMAGE["truncated"](partial)
    capsys.readouterr()
    model, info = load_or_train(config, _lenet, _trainer(digits), cache=tmp_path)
    assert "training from epoch 0" in _one_notice(capsys.readouterr().err)
    assert [row["epoch"] for row in info["history"]] == [0, 1]
    reference, _ = load_or_train({"test": "reference"}, _lenet, _trainer(digits), cache=tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_legacy_entry_without_digest_is_found_and_gets_one(digits, tmp_path, capsys) -> None:
    config = {"test": "legacy"}
    model, _ = load_or_train(config, _lenet, _trainer(digits), cache=tmp_path)
    path = tmp_path / f"{config_key(config)}.pt"
    blob = torch.load(path, weights_only=True)
    assert blob.pop(DIGEST_KEY) == content_digest(blob)
    torch.save(blob, path)  # what the code before digests wrote
    again, info = load_or_train(config, _lenet, _trainer(digits), cache=tmp_path)
    assert info["cached"] is True and capsys.readouterr().err == ""
    assert torch.load(path, weights_only=True)[DIGEST_KEY] == content_digest(blob)  # re-saved with it
    for key, value in again.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])


class _Explodes(TrainingCallback):
    """What ``--lam 1e300`` does to the Min-Max loss: a non-finite extra term."""

    def extra_loss(self, model, x, y, logits):
        return logits.sum() * 0 + float("inf")


def test_non_finite_loss_stops_training_and_caches_nothing(digits, tmp_path) -> None:
    config = {"test": "diverges"}
    with pytest.raises(TrainingDiverged, match="diverged"):
        load_or_train(config, _lenet, _trainer(digits, callback=_Explodes()), cache=tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert issubclass(TrainingDiverged, UserError)  # the CLI's one line and exit status 2


def test_nan_weights_after_training_are_not_cached(digits, tmp_path) -> None:
    """A trainer that does not go through fit (DP-SGD) is checked once it returns."""
    def train(model, checkpoint):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return [{"epoch": 0, "loss": 1.0, "acc": 0.1}]

    with pytest.raises(TrainingDiverged, match="not finite"):
        load_or_train({"test": "nan weights"}, _lenet, train, cache=tmp_path)
    assert not any(p.suffix == ".pt" for p in tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_damaged_shadow_model_is_retrained(damage, digits, tmp_path, capsys) -> None:
    specs = [ShadowSpec(torch.arange(0, 64), 5), ShadowSpec(torch.arange(64, 128), 6)]
    config = TrainConfig(epochs=1, batch_size=32)
    models, info = load_or_train_models({"test": "zoo"}, _lenet, digits, specs, config, cache=tmp_path)
    assert info["trained"] == 2
    DAMAGE[damage](tmp_path / f"{info['keys'][1]}.pt")
    capsys.readouterr()
    again, info2 = load_or_train_models({"test": "zoo"}, _lenet, digits, specs, config, cache=tmp_path)
    _one_notice(capsys.readouterr().err)
    assert (info2["cached"], info2["trained"]) == (1, 1)
    for old, new in zip(models, again):
        for key, value in new.state_dict().items():
            assert torch.allclose(value, old.state_dict()[key], atol=1e-6), key


def test_digest_detects_any_changed_value() -> None:
    state = {"w": torch.zeros(3), "history": [{"loss": 1.0}]}
    assert content_digest(state) == content_digest({"w": torch.zeros(3), "history": [{"loss": 1.0}]})
    assert content_digest(state) != content_digest({"w": torch.tensor([0.0, 0.0, 1e-30]),
                                                    "history": [{"loss": 1.0}]})
    assert content_digest(state) != content_digest({"w": torch.zeros(3), "history": [{"loss": 1.5}]})


def test_load_verified_rejects_a_changed_tensor(tmp_path) -> None:
    path = tmp_path / "x.pt"
    atomic_torch_save({"w": torch.arange(4.0)}, path)
    blob = torch.load(path, weights_only=True)
    blob["w"][0] = 7.0
    torch.save(blob, path)  # a stale digest: as if a byte changed inside the tensor data
    with pytest.raises(Exception, match="digest"):
        load_verified(path)


# --------------------------------------------------------------------------- decoded datasets


def _image_folder(root: Path, corrupt: bool = False) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), (40 * i, 100 if c == "a" else 200, 7)).save(root / "train" / c / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "bad.png").write_bytes(b"not an image at all")
    return root


def test_damaged_decoded_dataset_is_decoded_again(tmp_path, capsys) -> None:
    from mcmia_helpers import data

    root = _image_folder(tmp_path / "imgs")
    cache = tmp_path / "data"
    data._load_raw.cache_clear()
    first = data._load_imagenet(root, 8, None, cache)
    files = list(cache.glob("imagenet-*.pt"))
    assert len(files) == 1
    flip(files[0])
    capsys.readouterr()
    second = data._load_imagenet(root, 8, None, cache)
    assert "decoding the images again" in _one_notice(capsys.readouterr().err)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_imagenet_cache_key_is_stable_across_processes(tmp_path, monkeypatch) -> None:
    """The key used Python's hash() of the root, which changes with every process
    (PYTHONHASHSEED): here hash() is made to differ between two loads, as between processes."""
    from mcmia_helpers import data

    root = _image_folder(tmp_path / "imgs")
    for salt in (1, 2):
        monkeypatch.setattr(data, "hash", lambda value, salt=salt: salt, raising=False)
        data._load_imagenet(root, 8, None, tmp_path / "c")
    assert len(list((tmp_path / "c").glob("imagenet-*.pt"))) == 1


@pytest.mark.parametrize("case, fragment", [("empty", "no images"), ("corrupt", "cannot read image")])
def test_bad_imagenet_roots_are_one_line_errors(case, fragment, tmp_path) -> None:
    from mcmia_helpers import data

    root = tmp_path / "imgs"
    if case == "empty":
        root.mkdir()
    else:
        _image_folder(root, corrupt=True)
    with pytest.raises(UserError, match=fragment):
        data._load_imagenet(root, 8, None, tmp_path / "cache")


# --------------------------------------------------------------------------- seeds


def test_largest_seed_derives_shadow_seeds_without_overflow(digits) -> None:
    """The attacks derive a shadow model's seed as seed * 100_000 + role; fit then draws each
    epoch from seed * 100_003 + epoch, which overflowed torch's generator for seeds above ~1.8e9."""
    shadow_seed = (2**31 - 1) * 100_000 + 2001
    history = fit(_lenet(), digits, torch.arange(32), TrainConfig(epochs=1, batch_size=32, seed=shadow_seed))
    assert len(history) == 1


@pytest.mark.slow
def test_flipping_bytes_in_every_cached_file_changes_no_number(tmp_path, monkeypatch, capsys) -> None:
    """The issue's end-to-end check: a run, 64 bytes flipped in every file of its cache, the same
    run again: one notice per damaged file, everything retrained, the same record."""
    from mcmia_helpers.cli import main

    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    run = ["run", "--arch", "lenet5", "--dataset", "digits", "--scale", "ci", "--attacks", "loss"]
    assert main([*run, "--out", str(tmp_path / "a.json")]) == 0
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    assert cached
    for path in cached:
        flip(path)
    capsys.readouterr()
    assert main([*run, "--out", str(tmp_path / "b.json")]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == len(cached), notices
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert b["cached"] is False
    for key in ("train_acc", "train_loss", "member_acc", "nonmember_acc", "test_acc", "attacks", "history"):
        assert a[key] == b[key], key
