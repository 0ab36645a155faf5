"""Attacks read float32 logits (issue 13): no query of the attack path asks for autocast.

On a GPU, bfloat16 autocast rounds logits to steps of 0.0625 for |z| in [8, 16), exactly the
low-FPR tail LiRA measures. Training may keep bf16 autocast; queries (target, shadow and LiRA
models, utility) must not. On this CPU-only machine autocast would be a no-op anyway, so the
test watches what the code *asks for*: every autocast context the attack path opens (through
``training._autocast``, which turns bf16 on wherever the device allows, or ``torch.autocast``
itself) must have autocast off, and every convolution must run with autocast off even inside a
caller's bfloat16 autocast region.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mcmia_helpers import context, shadow, training
from mcmia_helpers.attacks import compute_attack_scores
from mcmia_helpers.context import ExperimentSpec, prepare
from mcmia_helpers.defences import DEFENSES
from mcmia_helpers.experiments import utility
from mcmia_helpers.scales import ArchScale, Scale

_REAL_AUTOCAST = torch.autocast


class _Watch:
    """Records every autocast request and every convolution's autocast state."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bool, object]] = []
        self.convs: list[tuple[bool, torch.dtype]] = []


@pytest.fixture()
def tiny_ctx(monkeypatch, tmp_path):
    """A LeNet-5 target on digits with 1 shadow and 2 LiRA models, its attacker models cached."""
    tiny = Scale("ci", {"lenet5": ArchScale(n_members=48, epochs=1, width=0.5, batch_size=16,
                                            n_shadow_models=1, n_lira_models=2)})
    monkeypatch.setattr(context, "get_scale", lambda name=None: tiny)
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    ctx = prepare(ExperimentSpec(arch="lenet5", dataset="digits", seed=3))
    model, _ = DEFENSES["none"](ctx)
    compute_attack_scores(ctx, model)  # trains and caches the shadow and LiRA models
    return ctx, model


def _install(monkeypatch, watch: _Watch) -> None:
    def spy_internal(device, enabled):
        watch.requests.append(("training._autocast", bool(enabled), device.type))
        return _REAL_AUTOCAST(device_type=device.type, enabled=False)

    class SpyAutocast(_REAL_AUTOCAST):
        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            watch.requests.append(("torch.autocast", bool(enabled) and dtype != torch.float32,
                                   device_type))
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    real_conv = F.conv2d

    def conv(x, *args, **kwargs):
        watch.convs.append((torch.is_autocast_enabled("cpu"), x.dtype))
        return real_conv(x, *args, **kwargs)

    monkeypatch.setattr(training, "_autocast", spy_internal)
    monkeypatch.setattr(shadow, "_autocast", spy_internal)
    monkeypatch.setattr(torch, "autocast", SpyAutocast)
    monkeypatch.setattr(F, "conv2d", conv)


def test_attack_path_never_enables_autocast(tiny_ctx, monkeypatch) -> None:
    ctx, model = tiny_ctx
    watch = _Watch()
    _install(monkeypatch, watch)
    # A caller's bf16 region (e.g. a defence that queries while it trains) must not leak in.
    with _REAL_AUTOCAST(device_type="cpu", dtype=torch.bfloat16):
        scores = compute_attack_scores(ctx, model)
        measured = utility(model, ctx)
    assert set(scores.scores) >= {"loss", "shadow_top3", "lira_online", "lira_offline"}
    assert 0.0 <= measured["test_acc"] <= 1.0
    asked = [r for r in watch.requests if r[1]]
    assert not asked, f"the attack path asked for autocast: {asked}"
    assert watch.convs, "no convolution ran: the spy is not in the attack path"
    # Both the target's own forward (nn.Conv2d) and the grouped shadow models run here.
    assert all(not enabled and dtype == torch.float32 for enabled, dtype in watch.convs)


def test_queries_equal_a_plain_float32_forward(tiny_ctx) -> None:
    ctx, model = tiny_ctx
    idx = ctx.split.members[:20]
    with _REAL_AUTOCAST(device_type="cpu", dtype=torch.bfloat16):
        got = training.predict_logits(model, ctx.bundle, idx, device=torch.device("cpu"))
        many = shadow.predict_logits_many([model, model], ctx.bundle, idx,
                                          device=torch.device("cpu"))
    x, _ = ctx.bundle.batch(idx)
    with torch.no_grad():
        expected = model.eval()(x)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert many.shape == (2, 20, ctx.bundle.num_classes)
    torch.testing.assert_close(many[0], expected, rtol=1e-5, atol=1e-5)


def test_training_may_still_use_autocast(monkeypatch) -> None:
    """The fix is for queries only: ``fit`` still asks for bf16 autocast when ``amp`` is on."""
    watch = _Watch()
    _install(monkeypatch, watch)
    ctx_bundle = prepare(ExperimentSpec(arch="lenet5", dataset="digits")).bundle
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    training.fit(model, ctx_bundle, torch.arange(32), replace(training.TrainConfig(), epochs=1,
                                                               batch_size=16, amp=True))
    assert ("training._autocast", True, "cpu") in watch.requests
