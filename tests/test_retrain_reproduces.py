"""Retraining reproduces (issue 23, item 3): the grouped engine gives a model the same numbers
in every group (size, position), so a shadow model retrained alone after damage is bit for bit
the one it replaces, and an interrupted shadow training resumes without retraining the models it
finished (and the group in training from its last epoch) to the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mcmia_helpers import shadow
from mcmia_helpers.models import build_model
from mcmia_helpers.shadow import (ShadowSpec, grouped_net_for, load_or_train_models,
                                  padded_group_size, stack_states)
from mcmia_helpers.training import TrainConfig

CONFIG = TrainConfig(epochs=2, batch_size=32, lr=1e-3)


def _lenet() -> torch.nn.Module:
    return build_model("lenet5", num_classes=10, in_channels=1, image_size=28)


def _specs(n: int, size: int = 64) -> list[ShadowSpec]:
    gen = torch.Generator().manual_seed(3)
    return [ShadowSpec(torch.randperm(1797, generator=gen)[:size], 40 + i) for i in range(n)]


def _assert_identical(a, b) -> None:
    for model_a, model_b in zip(a, b, strict=True):
        for key, value in model_a.state_dict().items():
            assert torch.equal(value, model_b.state_dict()[key]), key


def test_padded_group_sizes() -> None:
    conv1 = torch.nn.Conv2d(1, 6, 3)
    assert [padded_group_size(m, conv1) for m in range(1, 7)] == [2, 2, 4, 4, 5, 6]
    assert padded_group_size(1, torch.nn.Conv2d(3, 6, 3)) == 2


@pytest.mark.parametrize("arch,width", [("lenet5", 1.0), ("resnet18", 0.125)])
def test_a_models_gradients_do_not_depend_on_its_group(arch, width, digits) -> None:
    """One training step of model ``i`` alone, or in groups of 2 to 5 at any position, gives
    bit for bit the gradients it gets in a group of 6 (groups of 1 and 3 run padded)."""
    models = []
    for seed in range(6):
        torch.manual_seed(100 + seed)
        models.append(build_model(arch, 10, 1, 28, width=width))
    net = grouped_net_for(models[0], digits)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(1797, generator=gen)[:16] for _ in models]

    def grads(chosen: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        params, buffers = stack_states([models[i] for i in chosen])
        x, y = digits.batch(torch.cat([batches[i] for i in chosen]))
        logits = net.forward(params, buffers, x.view(len(chosen), -1, *x.shape[1:]), training=True)
        F.cross_entropy(logits.flatten(0, 1), y, reduction="none").view(len(chosen), -1).mean(1).sum().backward()
        return {i: {k: v.grad[j] for k, v in params.items()} for j, i in enumerate(chosen)}

    reference = grads(list(range(6)))
    for chosen in ([5], [0], [2, 3], [1, 3, 5], [4, 0, 2, 1], [0, 1, 2, 3, 4]):
        for i, got in grads(chosen).items():
            for k, g in got.items():
                assert torch.equal(g, reference[i][k]), (chosen, i, k)


def test_shadow_model_retrained_alone_after_damage_is_bit_identical(digits, tmp_path, capsys) -> None:
    specs = _specs(3)
    models, info = load_or_train_models({"test": "retrain"}, _lenet, digits, specs, CONFIG, cache=tmp_path)
    assert info["trained"] == 3  # trained together, in one group of three
    path = tmp_path / f"{info['keys'][1]}.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again, info2 = load_or_train_models({"test": "retrain"}, _lenet, digits, specs, CONFIG, cache=tmp_path)
    assert (info2["cached"], info2["trained"]) == (2, 1)  # model 1 alone
    assert "damaged" in capsys.readouterr().err
    _assert_identical(again, models)


def _reference(digits, tmp_path: Path, specs) -> list[torch.nn.Module]:
    models, _ = load_or_train_models({"test": "interrupt"}, _lenet, digits, specs, CONFIG,
                                     cache=tmp_path / "reference")
    return models


def test_interrupt_after_model_k_keeps_the_finished_models(digits, tmp_path, monkeypatch) -> None:
    """Models trained one at a time (``group_size=1``); a Ctrl-C in the first epoch of model 1,
    after model 0 was saved: the rerun loads model 0, resumes model 1, trains model 2."""
    specs = _specs(3)
    real, saved, groups = shadow.atomic_torch_save, [], []

    def killed_in_model_1(obj, path, **kw):
        real(obj, path, **kw)
        name = Path(path).name
        if not name.startswith("shadow-group"):
            saved.append(name)
        elif name not in groups:
            groups.append(name)
            if len(groups) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(shadow, "atomic_torch_save", killed_in_model_1)
    with pytest.raises(KeyboardInterrupt):
        load_or_train_models({"test": "interrupt"}, _lenet, digits, specs, CONFIG,
                             cache=tmp_path / "c", group_size=1)
    monkeypatch.setattr(shadow, "atomic_torch_save", real)
    assert len(saved) == 1
    models, info = load_or_train_models({"test": "interrupt"}, _lenet, digits, specs, CONFIG,
                                        cache=tmp_path / "c", group_size=1)
    assert (info["cached"], info["trained"]) == (1, 2)  # the finished model is not trained again
    _assert_identical(models, _reference(digits, tmp_path, specs))
    assert not list((tmp_path / "c").glob("shadow-group*"))  # checkpoints go once models are saved


def test_interrupt_inside_a_group_resumes_from_its_last_epoch(digits, tmp_path, monkeypatch) -> None:
    specs = _specs(3)
    config = TrainConfig(epochs=3, batch_size=32, lr=1e-3)
    real, epochs = shadow.atomic_torch_save, []

    def killed_after_epoch_1(obj, path, **kw):
        real(obj, path, **kw)
        if Path(path).name.startswith("shadow-group"):
            epochs.append(int(obj["epoch"]))
            if obj["epoch"] == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(shadow, "atomic_torch_save", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        load_or_train_models({"test": "interrupt"}, _lenet, digits, specs, config, cache=tmp_path / "c")
    assert epochs == [0, 1]
    epochs.clear()
    models, info = load_or_train_models({"test": "interrupt"}, _lenet, digits, specs, config,
                                        cache=tmp_path / "c")
    assert info["trained"] == 3 and epochs == [2]  # only the epoch that was lost
    monkeypatch.setattr(shadow, "atomic_torch_save", real)
    reference, _ = load_or_train_models({"test": "interrupt"}, _lenet, digits, specs, config,
                                        cache=tmp_path / "reference")
    _assert_identical(models, reference)
