"""Cache entries know whose they are (issue 23, item 1): a valid entry copied over another key
(the seed-1 target over the seed-0 target, one shadow model over another, zoo model 2 over zoo
model 3) is set aside like a damaged one and rebuilt to the original numbers; a zoo entry whose
logits do not have the pool's shape is too; entries written before keys were stored are checked
by what they hold (configuration, seed, shapes), trusted and upgraded, or set aside."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mcmia_helpers.io import KEY_FIELD, DamagedFile, atomic_torch_save, load_verified
from mcmia_helpers.models import build_model
from mcmia_helpers.shadow import ShadowSpec, load_or_train_models
from mcmia_helpers.training import TrainConfig, config_key, fit, load_or_train

CONFIG = TrainConfig(epochs=1, batch_size=32)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", num_classes=10, in_channels=1, image_size=28)


def _trainer(digits, seed: int):
    def train(model, checkpoint):
        return fit(model, digits, torch.arange(64), replace(CONFIG, seed=seed), checkpoint_path=checkpoint)
    return train


def _notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("notice:")]


def _as_legacy(path: Path) -> None:
    """Rewrite ``path`` as the code before this change wrote it: a digest but no stored key."""
    blob, _ = load_verified(path)
    blob.pop(KEY_FIELD)
    blob.pop("identity", None)
    atomic_torch_save(blob, path)
    assert KEY_FIELD not in load_verified(path)[0]


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_an_entry_stores_its_key_and_a_copy_under_another_name_is_refused(tmp_path) -> None:
    atomic_torch_save({"x": torch.ones(2)}, tmp_path / "aaa.pt", key="aaa")
    assert load_verified(tmp_path / "aaa.pt")[0][KEY_FIELD] == "aaa"
    shutil.copy(tmp_path / "aaa.pt", tmp_path / "bbb.pt")
    with pytest.raises(DamagedFile, match="another model"):
        load_verified(tmp_path / "bbb.pt")
    with pytest.raises(DamagedFile, match="another model"):
        load_verified(tmp_path / "aaa.pt", key="bbb")
    # re-saving a loaded entry under a new name (a legacy alias) stamps it with its new key
    blob, _ = load_verified(tmp_path / "aaa.pt")
    atomic_torch_save(blob, tmp_path / "ccc.pt")
    assert load_verified(tmp_path / "ccc.pt")[0][KEY_FIELD] == "ccc"


@pytest.mark.parametrize("legacy", [False, True], ids=["keyed", "legacy"])
def test_seed1_target_copied_over_seed0_target_is_retrained(legacy, digits, tmp_path, capsys) -> None:
    configs = [{"test": "swap", "seed": s} for s in (0, 1)]
    first, _ = load_or_train(configs[0], _lenet, _trainer(digits, 0), cache=tmp_path)
    second, _ = load_or_train(configs[1], _lenet, _trainer(digits, 1), cache=tmp_path)
    paths = [tmp_path / f"{config_key(c)}.pt" for c in configs]
    if legacy:
        for path in paths:
            _as_legacy(path)
    shutil.copy(paths[1], paths[0])  # the seed-1 target over the seed-0 target: a valid file
    capsys.readouterr()
    again, info = load_or_train(configs[0], _lenet, _trainer(digits, 0), cache=tmp_path)
    assert info["cached"] is False
    (notice,) = _notices(capsys.readouterr().err)
    assert "training the model again" in notice
    _same_state(again, first)  # rebuilt to the original numbers
    # the seed-1 target's own (legacy) entry is trusted, and upgraded with its key
    kept, info1 = load_or_train(configs[1], _lenet, _trainer(digits, 1), cache=tmp_path)
    assert info1["cached"] is True and _notices(capsys.readouterr().err) == []
    _same_state(kept, second)
    assert load_verified(paths[1])[0][KEY_FIELD] == paths[1].stem


@pytest.mark.parametrize("legacy", [False, True], ids=["keyed", "legacy"])
def test_one_shadow_model_copied_over_another_is_retrained(legacy, digits, tmp_path, capsys) -> None:
    specs = [ShadowSpec(torch.arange(0, 64), 5), ShadowSpec(torch.arange(64, 128), 6)]
    models, info = load_or_train_models({"test": "swap"}, _lenet, digits, specs, CONFIG, cache=tmp_path)
    paths = [tmp_path / f"{k}.pt" for k in info["keys"]]
    if legacy:
        for path in paths:
            _as_legacy(path)
    shutil.copy(paths[0], paths[1])
    capsys.readouterr()
    again, info2 = load_or_train_models({"test": "swap"}, _lenet, digits, specs, CONFIG, cache=tmp_path)
    (notice,) = _notices(capsys.readouterr().err)
    assert "another" in notice and paths[1].name in notice
    assert (info2["cached"], info2["trained"]) == (1, 1)
    for old, new in zip(models, again):
        _same_state(new, old)
    # the untouched legacy entry was upgraded: it now stores its key and is still trusted
    assert load_verified(paths[0])[0][KEY_FIELD] == paths[0].stem
    _, info3 = load_or_train_models({"test": "swap"}, _lenet, digits, specs, CONFIG, cache=tmp_path)
    assert info3["cached"] == 2 and _notices(capsys.readouterr().err) == []


# --------------------------------------------------------------------------- zoo


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A 4-model LeNet-5 zoo on 200 digits, 3 epochs, trained in one group, in a private cache."""
    from mcmia_helpers.zoo import ZooSpec, prepare_zoo, train_zoo

    cache = tmp_path_factory.mktemp("zoo-identity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCMIA_CACHE", str(cache))
        setup = prepare_zoo(ZooSpec("lenet5", "digits", scale="ci", n_models=4, pool=200, canaries=0))
        setup = replace(setup, ctx=replace(setup.ctx, train_config=replace(setup.ctx.train_config, epochs=3)))
        zoo = train_zoo(setup, "none", {})
        yield cache, setup, zoo


def _retrain_zoo(tiny_zoo, monkeypatch, capsys):
    from mcmia_helpers.zoo import train_zoo

    cache, setup, _ = tiny_zoo
    monkeypatch.setenv("MCMIA_CACHE", str(cache))
    capsys.readouterr()
    zoo = train_zoo(setup, "none", {})
    return zoo, _notices(capsys.readouterr().err)


def _zoo_path(tiny_zoo, i: int) -> Path:
    cache, _, zoo = tiny_zoo
    return cache / "zoo" / f"{zoo.keys[i]}.pt"


@pytest.mark.parametrize("legacy", [False, True], ids=["keyed", "legacy"])
def test_zoo_model_2_copied_over_model_3_is_retrained_to_the_same_logits(legacy, tiny_zoo, monkeypatch,
                                                                          capsys) -> None:
    _, _, original = tiny_zoo
    if legacy:
        for i in range(4):
            _as_legacy(_zoo_path(tiny_zoo, i))
    shutil.copy(_zoo_path(tiny_zoo, 2), _zoo_path(tiny_zoo, 3))
    zoo, notices = _retrain_zoo(tiny_zoo, monkeypatch, capsys)
    assert len(notices) == 1 and _zoo_path(tiny_zoo, 3).name in notices[0], notices
    assert zoo.info["trained"] == 1
    # model 3 retrained alone equals the one trained in a group of 4, bit for bit
    assert torch.equal(zoo.logits, original.logits)
    assert zoo.test_acc == original.test_acc
    # every legacy entry that passed was upgraded with its key
    for i in range(4):
        assert load_verified(_zoo_path(tiny_zoo, i))[0][KEY_FIELD] == zoo.keys[i]


@pytest.mark.parametrize("damage", ["half_logits", "wrong_weights", "wrong_seed"])
def test_zoo_entry_of_the_wrong_shape_is_set_aside_not_a_traceback(damage, tiny_zoo, monkeypatch,
                                                                     capsys) -> None:
    """A valid digest and key, but content that is not what the key implies."""
    _, _, original = tiny_zoo
    path = _zoo_path(tiny_zoo, 1)
    blob, _ = load_verified(path)
    if damage == "half_logits":
        blob["logits"] = blob["logits"][: blob["logits"].shape[0] // 2].clone()
    elif damage == "wrong_weights":
        name = next(iter(blob["state_dict"]))
        blob["state_dict"][name] = blob["state_dict"][name][:1].clone()
    else:
        blob["seed"] = blob["seed"] + 1
    atomic_torch_save(blob, path)  # re-stamped with its own key, a matching digest
    zoo, notices = _retrain_zoo(tiny_zoo, monkeypatch, capsys)
    assert len(notices) == 1 and "damaged" in notices[0] and path.name in notices[0], notices
    assert zoo.info["trained"] == 1
    assert torch.equal(zoo.logits, original.logits)


def test_partial_checkpoint_of_another_model_is_not_resumed(digits, tmp_path, capsys,
                                                            interrupt_at) -> None:
    """Two runs killed after epoch 0; the seed-1 run's checkpoint copied over the seed-0 run's:
    the seed-0 run starts from epoch 0 again and ends with its own numbers."""
    two = replace(CONFIG, epochs=2)

    def trainer(seed: int, callback=None):
        def train(model, checkpoint):
            return fit(model, digits, torch.arange(64), replace(two, seed=seed),
                       checkpoint_path=checkpoint, callback=callback)
        return train

    configs = [{"test": "partial swap", "seed": s} for s in (0, 1)]
    for seed, config in enumerate(configs):
        with pytest.raises(KeyboardInterrupt):
            load_or_train(config, _lenet, trainer(seed, interrupt_at(1)), cache=tmp_path)
    partials = [tmp_path / f"{config_key(c)}.partial.pt" for c in configs]
    shutil.copy(partials[1], partials[0])
    capsys.readouterr()
    model, info = load_or_train(configs[0], _lenet, trainer(0), cache=tmp_path)
    (notice,) = _notices(capsys.readouterr().err)
    assert "training from epoch 0" in notice and "another model" in notice
    assert [row["epoch"] for row in info["history"]] == [0, 1]
    reference, _ = load_or_train({"test": "partial reference"}, _lenet, trainer(0), cache=tmp_path)
    _same_state(model, reference)
