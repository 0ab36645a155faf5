"""Compression report: counts come from the weights, FLOPs are right, the sparse file is small and exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from mcmia_helpers.defences import compression as C
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import build_model
from mcmia_helpers.defences.pruning import apply_masks, project

# LeNet-5 on 1x28x28 (padding 2): multiply-accumulates of each conv/linear layer, by hand
LENET_MACS = {"features.0": 6 * 28 * 28 * 1 * 5 * 5, "features.3": 16 * 10 * 10 * 6 * 5 * 5,
              "classifier.1": 400 * 120, "classifier.3": 120 * 84, "classifier.5": 84 * 10}


def _pruned_lenet(s: float) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet5")
    masks = {name: project(layer.weight, s) for name, layer in C.prunable_layers(model).items()}
    return apply_masks(model, masks)


def test_macs_match_hand_count() -> None:
    assert C.count_macs(build_model("lenet5"), (1, 28, 28)) == LENET_MACS
    assert C.count_macs(build_model("lenet5"), (1, 1, 28, 28)) == LENET_MACS
    with pytest.raises(UserError):
        C.count_macs(build_model("lenet5"), (28, 28))


def test_depthwise_and_strided_convs_are_counted_per_group() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 3))
    macs = C.count_macs(model, (8, 8, 8))
    assert macs == {"0": 8 * 4 * 4 * 1 * 9, "2": 128 * 3}


def test_report_counts_from_the_weights() -> None:
    model = _pruned_lenet(0.9)
    report = C.compression_report(model, (1, 28, 28))
    total = sum(p.numel() for p in model.parameters())
    assert total == 61_706 and report["params_total"] == total
    assert report["prunable_total"] == 61_470  # everything but the 236 biases
    for name, layer in report["layers"].items():
        assert layer["nonzero"] == int(torch.count_nonzero(dict(model.named_modules())[name].weight))
        assert abs(layer["sparsity"] - 0.9) <= 1 / layer["params"]
    assert report["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert report["compression_ratio_prunable"] == pytest.approx(10.0, rel=0.01)
    assert report["compression_ratio"] == pytest.approx(total / (report["prunable_nonzero"] + 236))
    assert report["flops_dense"] == sum(LENET_MACS.values())
    assert report["flops_effective"] == pytest.approx(0.1 * report["flops_dense"], rel=0.01)


def test_dense_model_reports_no_compression() -> None:
    report = C.compression_report(build_model("lenet5"), (1, 28, 28))
    assert report["compression_ratio"] == pytest.approx(1.0)
    assert report["flops_effective"] == report["flops_dense"]
    # like for like, nothing to gain from zeros: no bitmask is stored for dense tensors
    assert report["size_ratio_compressed"] == pytest.approx(1.0, abs=0.02)
    assert report["size_ratio_raw"] == pytest.approx(1.0, abs=0.05)


def test_file_sizes_compare_like_for_like() -> None:
    """At 90% sparsity the raw sparse file is far smaller than the raw dense one, and the
    deflated sparse file smaller than the deflated dense one (deflate also squeezes the dense
    file's zeros); a deflated-sparse vs raw-dense ratio would overstate what pruning buys."""
    report = C.compression_report(_pruned_lenet(0.9), (1, 28, 28))
    assert report["size_sparse_raw_bytes"] < report["size_dense_bytes"]
    assert report["size_sparse_bytes"] < report["size_dense_compressed_bytes"]
    assert report["size_dense_compressed_bytes"] < report["size_dense_bytes"]
    assert report["size_ratio_raw"] > 3.0 and report["size_ratio_compressed"] > 1.2
    mixed = report["size_dense_bytes"] / report["size_sparse_bytes"]
    assert mixed > max(report["size_ratio_raw"], report["size_ratio_compressed"])


def test_report_without_file_sizes_keeps_everything_else() -> None:
    model = _pruned_lenet(0.9)
    full = C.compression_report(model, (1, 28, 28))
    counted = C.compression_report(model, (1, 28, 28), file_sizes=False)
    assert set(C.FILE_SIZE_KEYS) <= set(full)
    assert set(counted) == set(full) - set(C.FILE_SIZE_KEYS)
    assert all(counted[key] == full[key] for key in counted)


def test_torch_prune_reparametrisation_is_counted_as_pruned() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5")
    prune.global_unstructured([(m, "weight") for m in C.prunable_layers(model).values()],
                              pruning_method=prune.L1Unstructured, amount=0.8)
    report = C.compression_report(model, (1, 28, 28))
    assert report["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert C.sparsity_per_layer(model) == report["sparsity_per_layer"]
    assert hasattr(model.features[0], "weight_orig")  # the report did not change the model
    plain = build_model("lenet5")
    assert report["size_dense_bytes"] < C.dense_size_bytes(plain) * 1.1  # masks applied, not stored


def test_sparse_file_is_small_at_90_percent(tmp_path) -> None:
    model = _pruned_lenet(0.9)
    dense_path = tmp_path / "dense.pt"
    torch.save(model.state_dict(), dense_path)
    sparse_path = C.save_sparse(model, tmp_path / "sparse.npz")
    dense_bytes, sparse_bytes = dense_path.stat().st_size, sparse_path.stat().st_size
    assert dense_bytes / sparse_bytes >= 0.5 * 10  # at least half the ideal 1 / (1 - 0.9)
    assert C.sparse_size_bytes(model) == sparse_bytes
    half = C.save_sparse(model, tmp_path / "half.npz", value_dtype="float16")
    assert half.stat().st_size < sparse_bytes


def test_sparse_round_trip_is_exact(tmp_path) -> None:
    model = build_model("resnet18", in_channels=3, image_size=32, width=0.125)  # BN buffers, ints
    masks = {name: project(layer.weight, 0.7) for name, layer in C.prunable_layers(model).items()}
    apply_masks(model, masks)
    model.train()(torch.randn(4, 3, 32, 32))  # non-trivial running statistics
    path = C.save_sparse(model, tmp_path / "m.npz")
    fresh = build_model("resnet18", in_channels=3, image_size=32, width=0.125)
    C.load_sparse(path, fresh)
    for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), key
    state = C.load_sparse(path)
    assert set(state) == set(model.state_dict())


def test_float16_values_are_close(tmp_path) -> None:
    model = _pruned_lenet(0.5)
    fresh = C.load_sparse(C.save_sparse(model, tmp_path / "h.npz", "float16"), build_model("lenet5"))
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a == 0, b == 0)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_sparse_file_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        C.load_sparse(tmp_path / "nope.npz", build_model("lenet5"))
    path = C.save_sparse(_pruned_lenet(0.5), tmp_path / "lenet.npz")
    with pytest.raises(UserError, match="does not fit this model"):
        C.load_sparse(path, build_model("vgg16", in_channels=3, image_size=32, width=0.125))
    with pytest.raises(UserError, match="value_dtype"):
        C.save_sparse(_pruned_lenet(0.5), tmp_path / "x.npz", value_dtype="int8")


def test_filter_pruning_cuts_macs_and_latency_is_measured() -> None:
    """Behaviour only: 75% of the filters removed gives a network with >10x fewer MACs and the
    same input/output shapes; latency is measured (a positive median per model, side by side).
    How much faster the pruned network runs is a timing claim: benchmarks/timing_claims.py."""
    pytest.importorskip("torch_pruning")
    from mcmia_helpers.defences.pruning import prune_filters

    torch.manual_seed(0)
    dense = build_model("vgg16", in_channels=3, image_size=32, width=0.25)
    narrow = prune_filters(dense, 0.75, (3, 32, 32))  # 16x fewer MACs
    assert C.compression_report(narrow, (3, 32, 32))["flops_dense"] < \
        C.compression_report(dense, (3, 32, 32))["flops_dense"] / 10
    x = torch.randn(2, 3, 32, 32)
    assert narrow.eval()(x).shape == dense.eval()(x).shape == (2, 10)
    latency = C.compare_latency({"dense": dense, "pruned": narrow}, x, repeats=2, warmup=1)
    assert set(latency) == {"dense", "pruned"} and all(t > 0 for t in latency.values())
    assert C.measure_latency(narrow, x, repeats=3) > 0
    with pytest.raises(UserError):
        C.measure_latency(narrow, x, repeats=0)
    with pytest.raises(UserError):
        C.compare_latency({"pruned": narrow}, x, repeats=0)
