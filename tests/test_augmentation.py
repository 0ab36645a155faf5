"""Data augmentation is part of each scale's training recipe (issue 13).

On at ``paper`` for the 32x32 and ImageNet forms (random crop from reflect padding + flip), a
choice at ``book`` and ``ci`` (off unless asked for), never for LeNet-5's digits; in every
model's cache key (target, shadow and LiRA models) and stated in words for the record.
"""

from __future__ import annotations

import pytest
import torch

from mcmia_helpers import UserError
from mcmia_helpers.attacks import compute_attack_scores, runner
from mcmia_helpers.attacks.shadows import attacker_cache_config
from mcmia_helpers.context import ExperimentSpec, prepare
from mcmia_helpers.data import augment_batch, augment_pad, augmentation_recipe
from mcmia_helpers.scales import get_scale


@pytest.fixture(autouse=True)
def _smoke(monkeypatch):
    monkeypatch.setenv("MCMIA_SMOKE", "1")  # prepare() loads data only; keep the splits small


def _ctx(arch: str, scale: str, augment: bool | None = None):
    return prepare(ExperimentSpec(arch=arch, dataset="digits", scale=scale, augment=augment))


def test_scales_state_the_recipe() -> None:
    paper, book, ci = get_scale("paper"), get_scale("book"), get_scale("ci")
    for arch in ("vgg16", "mobilenetv2", "resnet18"):
        assert paper.for_arch(arch).augment
        assert not book.for_arch(arch).augment and not ci.for_arch(arch).augment
    assert not paper.for_arch("lenet5").augment


def test_prepare_follows_the_scale_or_the_choice() -> None:
    assert _ctx("resnet18", "paper").train_config.augment
    assert not _ctx("resnet18", "paper", augment=False).train_config.augment
    assert not _ctx("resnet18", "book").train_config.augment
    assert _ctx("resnet18", "book", augment=True).train_config.augment
    assert not _ctx("lenet5", "paper").train_config.augment
    with pytest.raises(UserError, match="LeNet-5"):
        _ctx("lenet5", "book", augment=True)
    with pytest.raises(UserError, match="true or false"):
        _ctx("resnet18", "book", augment="yes")


def test_recipe_in_target_and_attacker_cache_keys() -> None:
    on, off = _ctx("resnet18", "book", augment=True), _ctx("resnet18", "book", augment=False)
    recipe = augmentation_recipe(32, True)
    assert on.augmentation() == recipe and off.augmentation() == "none"
    assert on.cache_config()["augmentation"] == recipe
    assert on.cache_config()["train"]["augment"] is True
    assert "augmentation" not in off.cache_config()  # un-augmented keys are what they were
    assert attacker_cache_config(on)["augmentation"] == recipe
    assert "augmentation" not in attacker_cache_config(off)
    assert on.cache_config() != off.cache_config()


def test_shadow_and_lira_models_train_with_the_targets_recipe(monkeypatch) -> None:
    ctx = _ctx("resnet18", "paper")
    seen = {}

    class Stop(Exception):
        pass

    def capture(base_config, builder, bundle, specs, config, **kwargs):
        seen.update(base=base_config, config=config, n=len(specs))
        raise Stop

    monkeypatch.setattr(runner, "load_or_train_models", capture)
    with pytest.raises(Stop):
        compute_attack_scores(ctx, ctx.build(), ["lira_online", "shadow_top3"])
    assert seen["config"] == ctx.train_config and seen["config"].augment
    assert seen["base"]["augmentation"] == ctx.augmentation()
    assert seen["n"] == ctx.arch_scale.n_shadow_models + ctx.arch_scale.n_lira_models


@pytest.mark.parametrize("size", [32, 64, 224])
def test_augment_batch_crops_the_padded_image_and_flips(size: int) -> None:
    pad = augment_pad(size)
    assert pad == size // 8
    x = torch.arange(2 * 3 * size * size, dtype=torch.float32).view(2, 3, size, size)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen)
    flip = torch.rand(2, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")
    for i in range(2):
        crop = padded[i, :, dy[i]:dy[i] + size, dx[i]:dx[i] + size]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    # Over many draws every offset and both flips occur (not a fixed transform).
    many = augment_batch(x[:1].expand(64, -1, -1, -1).contiguous(), torch.Generator().manual_seed(1))
    assert len({tuple(m.flatten()[:8].tolist()) for m in many}) > 8


def test_recipe_in_words() -> None:
    assert augmentation_recipe(32, False) == "none"
    assert "padding 4" in augmentation_recipe(32, True) and "flip" in augmentation_recipe(32, True)
    assert "padding 28" in augmentation_recipe(224, True)
