"""Structured filter pruning as a defence (issue 17, item 6): the parameter budget, validation
before training, the cache round trip of a narrow model, and a tiny filter-pruned VGG16 zoo whose
LiRA scores are finite. Tiny widths and few epochs: seconds, not minutes."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import torch

from mcmia_helpers import cli, context
from mcmia_helpers.defences import pruning as P
from mcmia_helpers.defences import registry
from mcmia_helpers.defences.compression import compare_latency
from mcmia_helpers.errors import UserError
from mcmia_helpers.io import atomic_torch_save, load_verified
from mcmia_helpers.models import build_model
from mcmia_helpers.training import predict_logits
from mcmia_helpers.zoo import ZooSpec, attack_zoo, prepare_zoo, train_zoo
from mcmia_helpers.zoo import train as zoo_train

FILTER = {"pruning": "filter", "sparsity": 0.9}


def _vgg(width: float = 0.125) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vgg16", in_channels=3, image_size=32, width=width)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _prunable(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in P.prunable_layers(model).values())


# --------------------------------------------------------------------------- the budget


@pytest.mark.parametrize("width", [0.125, 0.25])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_filter_budget_matches_unstructured_parameter_count(width, sparsity) -> None:
    model = _vgg(width)
    budget = P.filter_budget(model, sparsity)
    narrow = P.prune_filters_vgg(model, budget["filter_ratio"])
    # the counts are the narrow model's own, not a formula's
    assert P.conv_channels(narrow) == budget["filter_channels"]
    assert _prunable(narrow) == budget["prunable_kept"] and _params(narrow) == budget["params_kept"]
    assert budget["prunable_dense"] == _prunable(model) and budget["params_dense"] == _params(model)
    # kept prunable weights ~ (1 - s) of the dense ones, as unstructured pruning keeps
    assert budget["param_share"] == pytest.approx(1 - sparsity, abs=0.01)
    assert budget["param_share_total"] == pytest.approx(1 - sparsity, abs=0.01)
    # no other ratio on the search grid gets closer to the budget
    target = (1 - sparsity) * budget["prunable_dense"]
    for ratio in (budget["filter_ratio"] - 0.01, budget["filter_ratio"] + 0.01):
        other = P.narrow_param_counts(model, P.filter_channels(model, ratio))["prunable"]
        assert abs(other - target) >= abs(budget["prunable_kept"] - target)


def test_filter_pruned_model_is_narrower_and_rebuilds_from_its_widths() -> None:
    model = _vgg()
    model.train()(torch.randn(8, 3, 32, 32))  # BatchNorm statistics that are not the defaults
    model.eval()
    narrow = P.prune_filters_vgg(model, P.filter_budget(model, 0.9)["filter_ratio"])
    widths = P.conv_channels(narrow)
    assert all(n < d for n, d in zip(widths, P.conv_channels(model)))
    assert narrow.classifier.in_features == widths[-1] < model.classifier.in_features
    x = torch.randn(3, 3, 32, 32)
    assert narrow(x).shape == (3, 10) and torch.isfinite(narrow(x)).all()
    rebuilt = P.vgg_with_channels(_vgg(), widths)  # what a cache loader does
    rebuilt.load_state_dict(narrow.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), narrow(x), rtol=0, atol=0)
    with pytest.raises(UserError, match="do not fit"):
        P.vgg_with_channels(_vgg(), widths[:-1])
    # the benchmark's CPU clock goes through compare_latency (a behaviour check, not a timing claim)
    times = compare_latency({"dense": model, "filter": narrow}, x, repeats=2, warmup=1,
                            clock=time.thread_time)
    assert set(times) == {"dense", "filter"} and all(t > 0 for t in times.values())


# --------------------------------------------------------------------------- validation


def test_filter_is_rejected_for_lenet5_in_one_line_before_training(monkeypatch, tmp_path,
                                                                  capsys) -> None:
    with pytest.raises(UserError, match="vgg16 only") as err:
        ZooSpec("lenet5", "fashion-mnist", defense="prune", params=dict(FILTER)).validate()
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="vgg16 only"):
        ZooSpec("lenet5", "fashion-mnist", defense="prune+minmax", params=dict(FILTER)).validate()
    ZooSpec("vgg16", "cifar10", defense="prune", params=dict(FILTER)).validate()
    with pytest.raises(UserError, match="--sparsity-spec"):
        P.validate_pruning_params({"pruning": "filter", "sparsity_spec": "x.json"})
    # the command line: exit status 2, one line, no zoo trained
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["zoo", "--arch", "lenet5", "--dataset", "fashion-mnist", "--scale", "ci",
                   "--defense", "prune", "--pruning", "filter"])
    out = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(out) == 1 and "vgg16 only" in out[0], out
    assert not (tmp_path / "cache").exists()
    # an experiment: the trainer refuses before the dense model is trained
    spec = context.ExperimentSpec(arch="lenet5", dataset="fashion-mnist", defense="prune",
                                  params=dict(FILTER))
    ctx = context.prepare(spec)

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the architecture was checked")

    monkeypatch.setattr(P.entry, "train_undefended", no_training)
    with pytest.raises(UserError, match="vgg16 only"):
        P.train_pruned(ctx)


# --------------------------------------------------------------------------- the cache


def _vgg_context() -> context.TargetContext:
    spec = context.ExperimentSpec(arch="vgg16", dataset="cifar10", standin="fashion-mnist",
                                  defense="prune", params=dict(FILTER))
    ctx = context.prepare(spec)
    split = replace(ctx.split, members=ctx.split.members[:96])
    return replace(ctx, split=split, arch_scale=replace(ctx.arch_scale, width=0.125),
                   train_config=replace(ctx.train_config, epochs=2), device=torch.device("cpu"))


def _filter_entry(cache) -> object:
    """The cache file of the filter-pruned model: the one whose configuration names widths."""
    (path,) = [p for p in cache.glob("*.pt")
               if "filter_channels" in json.loads(load_verified(p)[0]["config"])]
    return path


def test_cache_round_trip_of_a_narrow_model(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path))
    ctx = _vgg_context()
    model, extra = P.train_pruned(ctx)
    json.dumps(extra)
    assert extra["cached"] is False and extra["pruning"] == "filter"
    assert P.conv_channels(model) == extra["filter_channels"]
    assert extra["param_share"] == pytest.approx(0.1, abs=0.01)
    assert extra["sparsity_achieved"] == pytest.approx(0.9, abs=0.01)
    assert extra["flops_effective"] < 0.2 * extra["flops_dense"]
    assert extra["size_sparse_bytes"] < 0.2 * extra["size_dense_compressed_bytes"]
    assert [r["phase"] for r in extra["history"]] == ["hard_prune", "finetune", "finetune"]
    assert extra["retrain_epochs"] == 2  # admm_epochs + retrain_epochs of the other methods
    logits = predict_logits(model, ctx.bundle, ctx.split.test[:64])
    config = json.loads(load_verified(_filter_entry(tmp_path))[0]["config"])
    assert config["filter_channels"] == extra["filter_channels"]  # the entry names its shapes

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(P.entry, "fit", no_training)
    monkeypatch.setattr(registry, "fit", no_training)
    again, extra2 = P.train_pruned(ctx)
    assert extra2["cached"] is True and extra2["dense_cached"] is True
    assert torch.equal(predict_logits(again, ctx.bundle, ctx.split.test[:64]), logits)
    monkeypatch.undo()
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path))

    # damaged: a flipped byte (digest) and a well-formed entry of the dense shapes (strict load)
    path = _filter_entry(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    capsys.readouterr()
    third, extra3 = P.train_pruned(ctx)
    assert extra3["cached"] is False and "damaged" in capsys.readouterr().err
    assert torch.equal(predict_logits(third, ctx.bundle, ctx.split.test[:64]), logits)
    path = _filter_entry(tmp_path)
    blob, _ = load_verified(path)
    blob["state_dict"] = ctx.build().state_dict()
    atomic_torch_save(blob, path)
    fourth, extra4 = P.train_pruned(ctx)
    assert extra4["cached"] is False and "damaged" in capsys.readouterr().err
    assert torch.equal(predict_logits(fourth, ctx.bundle, ctx.split.test[:64]), logits)


# --------------------------------------------------------------------------- the zoo


def test_tiny_filter_pruned_vgg16_zoo_gives_finite_lira_scores(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path))
    spec = ZooSpec("vgg16", "cifar10", scale="ci", defense="prune", params=dict(FILTER),
                   standin="fashion-mnist", n_models=4, pool=64)
    setup = prepare_zoo(spec)
    params = spec.normalised_params()
    zoo = train_zoo(setup, "prune", params)
    assert zoo.info["trained"] == 4 and torch.isfinite(zoo.logits).all()
    dense = train_zoo(setup, "none", {})
    for name, shadow in (("lira_online", zoo), ("lira_offline", dense)):
        scores = attack_zoo(name, zoo, shadow).scores
        assert scores.shape == (4, 64) and torch.isfinite(torch.as_tensor(scores)).all()
    # each entry rebuilds as its narrow model and gives the logits it saved
    blob = zoo_train._load_entry(zoo.keys[0])
    assert blob["conv_channels"] == zoo.extras[0]["filter_channels"]
    model = zoo_train._model_from(setup, blob)
    assert P.conv_channels(model) == blob["conv_channels"]
    logits = predict_logits(model, setup.ctx.bundle, setup.zoo_pool.pool)
    torch.testing.assert_close(logits, blob["logits"], rtol=1e-4, atol=1e-4)
    assert train_zoo(setup, "prune", params).info["cached"] == 4
