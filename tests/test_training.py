"""Training: overfitting is possible, runs are reproducible, interrupts resume, the cache works."""

from __future__ import annotations

import pytest
import torch

from mcmia_helpers.models import build_model
from mcmia_helpers.training import (TrainConfig, evaluate, fit, load_or_train,
                                    make_scheduler, make_optimizer)
from mcmia_helpers.errors import UserError

SMALL = TrainConfig(epochs=4, batch_size=32, lr=2e-3, seed=5)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", num_classes=10, in_channels=1, image_size=28)


def test_tiny_model_overfits_tiny_set(fashion) -> None:
    members = torch.arange(64)
    model = _lenet()
    fit(model, fashion, members, TrainConfig(epochs=60, batch_size=16, lr=3e-3, seed=0))
    assert evaluate(model, fashion, members)["acc"] >= 0.95
    assert evaluate(model, fashion, torch.arange(1000, 1500))["acc"] < 0.9  # it memorised


def test_same_seed_gives_identical_results(fashion) -> None:
    runs = []
    for _ in range(2):
        model = _lenet()
        history = fit(model, fashion, torch.arange(300), SMALL)
        runs.append((history, evaluate(model, fashion, torch.arange(1000, 1200))))
    assert runs[0] == runs[1]


def test_killed_run_resumes_to_the_same_weights(fashion, tmp_path, interrupt_at) -> None:
    members = torch.arange(200)
    reference = _lenet()
    fit(reference, fashion, members, SMALL)
    checkpoint = tmp_path / "run.partial.pt"
    model = _lenet()
    with pytest.raises(KeyboardInterrupt):
        fit(model, fashion, members, SMALL, checkpoint_path=checkpoint, callback=interrupt_at(2))
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    resumed = _lenet()
    history = fit(resumed, fashion, members, SMALL, checkpoint_path=checkpoint)
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_load_or_train_trains_once(fashion, tmp_path) -> None:
    calls = []

    def train(model, checkpoint):
        calls.append(checkpoint)
        return fit(model, fashion, torch.arange(100), TrainConfig(epochs=1, seed=1))

    config = {"what": "test", "n": 100}
    first, info1 = load_or_train(config, _lenet, train, cache=tmp_path)
    second, info2 = load_or_train(config, _lenet, train, cache=tmp_path)
    assert len(calls) == 1 and not info1["cached"] and info2["cached"]
    assert info1["history"] == info2["history"]
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    load_or_train({**config, "n": 101}, _lenet, train, cache=tmp_path)
    assert len(calls) == 2  # another configuration is another model
    assert not list(tmp_path.glob("*.partial.pt"))


def test_schedules_and_optimizers() -> None:
    model = _lenet()
    sgd = make_optimizer(model.parameters(), TrainConfig(optimizer="sgd", lr=0.1, epochs=4, schedule="cosine"))
    sched = make_scheduler(sgd, TrainConfig(optimizer="sgd", lr=0.1, epochs=4, schedule="cosine"))
    for _ in range(4):
        sgd.step()
        sched.step()
    assert sgd.param_groups[0]["lr"] < 1e-6
    with pytest.raises(UserError, match="optimizer"):
        make_optimizer(model.parameters(), TrainConfig(optimizer="lbfgs"))
    with pytest.raises(UserError, match="schedule"):
        make_scheduler(sgd, TrainConfig(schedule="warm"))
