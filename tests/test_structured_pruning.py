"""Structured filter pruning as a defence (issue 17, item 6; issue 26: all four architectures
through Torch-Pruning): the parameter budget, validation before training, the cache round trip
of a narrow model, and a tiny filter-pruned VGG16 zoo whose LiRA scores are finite. Tiny widths
and few epochs: seconds, not minutes."""

from __future__ import annotations

import io
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

pytest.importorskip("torch_pruning")  # a dependency in pyproject.toml (torch-pruning 1.6)

FILTER = {"pruning": "filter", "sparsity": 0.9}


def _vgg(width: float = 0.125) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vgg16", in_channels=3, image_size=32, width=width)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _prunable(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in P.prunable_layers(model).values())


# --------------------------------------------------------------------------- the budget

#: The four architectures at tiny widths: (arch, input shape, width).
ARCHS = [("lenet5", (1, 28, 28), 0.5), ("vgg16", (3, 32, 32), 0.125),
         ("mobilenetv2", (3, 32, 32), 0.125), ("resnet18", (3, 32, 32), 0.125)]


def _built(arch: str, shape, width: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, in_channels=shape[0], image_size=shape[1], width=width)
    model.train()(torch.randn(8, *shape))  # BatchNorm statistics that are not the defaults
    return model.eval()


def _file_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@pytest.mark.parametrize("arch,shape,width", ARCHS)
def test_filter_pruning_meets_the_budget_runs_and_rebuilds_on_every_architecture(arch, shape,
                                                                                 width) -> None:
    model = _built(arch, shape, width)
    budget = P.filter_budget(model, 0.9, shape)
    narrow = P.prune_filters(model, budget["filter_ratio"], shape).eval()
    # the budgeted parameter count: the narrow model's own, ~10% of the dense prunable weights
    assert _prunable(narrow) == budget["prunable_kept"] and _params(narrow) == budget["params_kept"]
    assert budget["prunable_dense"] == _prunable(model) and budget["params_dense"] == _params(model)
    assert budget["param_share"] == pytest.approx(0.1, abs=0.01)
    assert P.conv_channels(narrow) == budget["filter_channels"]
    assert all(n <= d for n, d in zip(budget["filter_channels"], P.conv_channels(model)))
    # it runs, and its file is smaller (a dense model with fewer channels: no zeros to compress)
    x = torch.randn(3, *shape)
    assert narrow(x).shape == (3, 10) and torch.isfinite(narrow(x)).all()
    assert _file_bytes(narrow) < 0.5 * _file_bytes(model)  # measured 0.11-0.26 (norm buffers, headers)
    # a cache loader rebuilds the narrow form from the recorded widths alone
    rebuilt = P.with_channels(_built(arch, shape, width), budget["filter_channels"])
    rebuilt.load_state_dict(narrow.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), narrow(x), rtol=0, atol=0)
    with pytest.raises(UserError, match="do not fit"):
        P.with_channels(_built(arch, shape, width), budget["filter_channels"][:-1])


def test_pruning_removes_the_dead_filters_and_keeps_the_function() -> None:
    """Filters whose every weight is zero (conv, bias, BatchNorm and the next layer's inputs) have
    the smallest group L1 norm: pruning exactly as many removes them and computes the same."""
    model = _vgg()
    ratio = 0.5
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for conv, norm, following in zip(layers[:-1], norms, layers[1:]):
            n = conv.out_channels
            dead = torch.randperm(n, generator=gen)[:n - int(n * (1 - ratio))]
            for t in (conv.weight, conv.bias, norm.weight, norm.bias):
                t[dead] = 0
            following.weight[:, dead] = 0
    x = torch.randn(4, 3, 32, 32)
    narrow = P.prune_filters(model, ratio, (3, 32, 32))
    assert P.conv_channels(narrow) == [int(c * (1 - ratio)) for c in P.conv_channels(model)]
    torch.testing.assert_close(narrow(x), model(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(P.prune_filters(model, 0.0, (3, 32, 32))(x), model(x))
    # the benchmark's CPU clock goes through compare_latency (a behaviour check, not a timing claim)
    times = compare_latency({"dense": model, "filter": narrow}, x, repeats=2, warmup=1,
                            clock=time.thread_time)
    assert set(times) == {"dense", "filter"} and all(t > 0 for t in times.values())


def test_filter_pruning_errors() -> None:
    with pytest.raises(UserError, match="outside"):
        P.prune_filters(_vgg(), 1.0)
    with pytest.raises(UserError, match="BatchNorm form"):
        P.prune_filters(build_model("vgg16", in_channels=3, image_size=32, width=0.125,
                                    dp_compatible=True), 0.5)


# --------------------------------------------------------------------------- validation


def test_filter_is_accepted_for_the_four_architectures_and_refused_otherwise_in_one_line(
        monkeypatch, tmp_path, capsys) -> None:
    for arch in ("lenet5", "vgg16", "mobilenetv2", "resnet18"):
        ZooSpec(arch, "cifar10", defense="prune", params=dict(FILTER)).validate()
        ZooSpec(arch, "cifar10", defense="prune+minmax", params=dict(FILTER)).validate()
        P.check_pruning_arch(FILTER, arch)
    with pytest.raises(UserError, match="--pruning filter prunes") as err:
        P.check_pruning_arch(FILTER, "alexnet")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="--sparsity-spec"):
        P.validate_pruning_params({"pruning": "filter", "sparsity_spec": "x.json"})
    # the command line accepts it for lenet5 (a dry run: checked, nothing trained)
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["run", "--arch", "lenet5", "--dataset", "fashion-mnist", "--scale", "ci",
                   "--defense", "prune", "--pruning", "filter", "--dry-run"])
    assert rc == 0, capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- the cache


def _context(arch: str = "vgg16") -> context.TargetContext:
    spec = context.ExperimentSpec(arch=arch, dataset="cifar10", standin="fashion-mnist",
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


@pytest.mark.parametrize("arch", ["lenet5", "vgg16", "mobilenetv2", "resnet18"])
def test_cache_round_trip_of_a_narrow_model(arch, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path))
    ctx = _context(arch)
    model, extra = P.train_pruned(ctx)
    json.dumps(extra)
    assert extra["cached"] is False and extra["pruning"] == "filter"
    assert P.conv_channels(model) == extra["filter_channels"]
    assert extra["param_share"] == pytest.approx(0.1, abs=0.01)
    assert extra["sparsity_achieved"] == pytest.approx(0.9, abs=0.01)
    # fewer MACs (LeNet-5 at width 0.125: its 1-channel first conv, most of its MACs, stays)
    assert extra["flops_effective"] < (0.95 if arch == "lenet5" else 0.2) * extra["flops_dense"]
    assert extra["size_sparse_bytes"] < 0.5 * extra["size_dense_compressed_bytes"]
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
    if arch != "vgg16":
        return  # damaged entries: once is enough
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
