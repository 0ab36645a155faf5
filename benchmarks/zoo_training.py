"""Benchmark: a 32-model LeNet-5 zoo trained batched vs one model at a time (issue 16).

Both paths train the same models (same initialisations, members, shuffles and epochs): the
sequential path calls ``training.fit`` once per model (dense) and
``defences.pruning.prune_model`` once per model (ADMM); the batched path trains all of them as
one grouped network (``shadow.train_models_batched``, then ``zoo.grouped.prune_models_batched``).
The script checks that both give the same models (largest logit difference on held-out images,
argmax agreement, identical pruning masks) and reports, per path:

* wall-clock and CPU (process) time, images per second (training images x epochs x models);
* the achieved training FLOP/s, counting ``6 x MACs`` per training image (forward, gradient of
  the input, gradient of the weights: 2 FLOPs per multiply-accumulate each; the MACs are those
  of :func:`mcmia_helpers.defences.compression.compression_report`), and that rate as a share of
  the machine's own float32 matrix-multiply rate, measured in the same run with the same number
  of threads (``torch.mm`` of two 1024 x 1024 matrices, the best of 30 before and 30 after the
  runs): the practical peak. The share is given per wall-clock second and per CPU-second (the
  latter does not count time spent waiting for a core that another process holds).

``--candidates`` (issue 27) adds, in the same run, a per-step comparison of faster-engine
candidates for the dense grouped step (forward, backward and Adam step of all models on one batch
each, the same stacked models and batches): the engine as it is (grouped convolutions in
channels-last layout), the same in NCHW layout, both convolutions as ``unfold`` plus a batched
matrix product, only the second one so, the first convolution as a depthwise one on repeated
input channels, fused and foreach Adam, and (``--compile``) ``torch.compile`` of the forward and
loss. Each candidate is checked against the engine (largest logit and gradient difference on one
batch, largest weight difference after the timed steps) and reported with its time per step, its
speed-up over one model at a time (one model's step times ``M``, measured alongside) and its share
of the matmul peak; a per-layer breakdown of the engine's step says what limits it.

Usage::

    python benchmarks/zoo_training.py                      # 32 models x 500 examples x 2 epochs
    python benchmarks/zoo_training.py --examples 2000 --epochs 4 --threads 2
    python benchmarks/zoo_training.py --candidates [--compile]   # and the engine candidates

On a shared machine the wall-clock time depends on what else runs; the CPU time is the steadier
comparison (both are reported, with the load average). Results go to
``benchmarks/results/zoo_training.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mcmia_helpers.data import load_dataset
from mcmia_helpers.defences.compression import compression_report
from mcmia_helpers.defences.pruning import ADMMSettings, default_sparsity_profile, prune_model
from mcmia_helpers.io import atomic_write_json
from mcmia_helpers.models import build_model
from mcmia_helpers.shadow import predict_logits_many, train_models_batched, train_models_sequential
from mcmia_helpers.training import TrainConfig
from mcmia_helpers.zoo.grouped import prune_models_batched
from mcmia_helpers.zoo.membership import membership_matrix

RESULTS = Path(__file__).resolve().parent / "results" / "zoo_training.json"


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def matmul_peak(n: int = 1024, repeats: int = 30) -> float:
    """The best float32 ``torch.mm`` rate (FLOP/s) of ``n x n`` matrices with torch's threads."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def _path_summary(wall: float, cpu: float, images: int, flops: float, peak: float) -> dict:
    """Times and rates of one path. ``share_of_matmul_peak`` divides the wall-clock rate by the
    peak; ``share_of_peak_per_cpu_s`` the rate per CPU-second by the peak per thread, which
    stays meaningful when other processes share the machine (time spent waiting is not counted)."""
    per_thread_peak = peak / torch.get_num_threads()
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "images_per_s": round(images / wall, 1),
            "gflops_per_s": round(flops / wall / 1e9, 3),
            "share_of_matmul_peak": round(flops / wall / peak, 4),
            "share_of_peak_per_cpu_s": round(flops / cpu / per_thread_peak, 4)}


def profile_batched(builder, bundle, index_sets, config, seeds, device) -> dict:
    """Where the batched path spends its CPU time: one epoch under ``torch.profiler``, grouped
    into convolutions (forward and backward), pooling, linear layers, the optimiser and the rest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_models_batched(builder, len(index_sets), bundle, index_sets, config, seeds, device=device,
                             max_group=len(index_sets))
    groups = {"convolution": ("convolution", "conv2d", "mkldnn_conv"), "pooling": ("max_pool",),
              "linear (bmm)": ("bmm", "baddbmm", "addmm", "mm"),
              "optimiser (Adam)": ("sqrt", "addcdiv", "addcmul", "lerp", "_foreach"),
              "zero fills": ("fill_", "zero_"), "relu": ("threshold", "relu", "clamp")}
    shares: dict[str, float] = {k: 0.0 for k in groups}
    total = 0.0
    top = []
    for event in prof.key_averages():
        t = event.self_cpu_time_total
        total += t
        top.append((t, event.key))
        for name, keys in groups.items():
            if any(k in event.key for k in keys):
                shares[name] += t
                break
    top.sort(reverse=True)
    return {"shares": {k: round(v / total, 3) for k, v in shares.items()},
            "top_ops": [{"op": k, "share": round(t / total, 3)} for t, k in top[:6]]}


# --------------------------------------------------------------------------- engine candidates
# LeNet-5 only (the benchmark's model): params are the stacked state (first dimension M) of the
# grouped engine, x is (M, B, 1, H, W); every candidate returns logits (M, B, K).


def _fc(p: dict, h: torch.Tensor) -> torch.Tensor:
    for i, name in enumerate(("classifier.1", "classifier.3", "classifier.5")):
        h = torch.baddbmm(p[f"{name}.bias"].unsqueeze(1), h, p[f"{name}.weight"].transpose(1, 2))
        h = torch.relu(h) if i < 2 else h
    return h


def _grouped(p: dict, x: torch.Tensor, layout=torch.channels_last) -> torch.Tensor:
    """The engine's computation written out: grouped convolutions, models side by side in the
    channels; ``layout`` channels-last (the engine) or contiguous (NCHW)."""
    import torch.nn.functional as F

    m, b, c, hh, ww = x.shape
    h = x.transpose(0, 1).reshape(b, m * c, hh, ww).contiguous(memory_format=layout)
    h = F.conv2d(h, p["features.0.weight"].flatten(0, 1), p["features.0.bias"].flatten(), padding=2, groups=m)
    h = torch.relu(F.max_pool2d(h, 2))
    h = F.conv2d(h, p["features.3.weight"].flatten(0, 1), p["features.3.bias"].flatten(), groups=m)
    h = torch.relu(F.max_pool2d(h, 2))
    return _fc(p, h.reshape(b, m, -1).transpose(0, 1))


def _unfold_conv(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    """A convolution of each model's images (h: (M, B, C, H, W)) with its own filters as
    ``unfold`` (im2col) plus one batched matrix product per model: (M, B, O, H', W')."""
    import torch.nn.functional as F

    m, b, c, hh, ww = h.shape
    o, k = w.shape[1], w.shape[-1]
    cols = F.unfold(h.reshape(m * b, c, hh, ww), k, padding=padding)
    n = cols.shape[-1]
    cols = cols.view(m, b, c * k * k, n).permute(0, 2, 1, 3).reshape(m, c * k * k, b * n)
    out = torch.baddbmm(bias.unsqueeze(-1), w.reshape(m, o, -1), cols)
    side = int(round(n ** 0.5))
    return out.view(m, o, b, side, side).transpose(1, 2)


def _unfolded(p: dict, x: torch.Tensor, first_grouped: bool = False) -> torch.Tensor:
    """Both convolutions as unfold + batched matmul, or (``first_grouped``) only the second."""
    import torch.nn.functional as F

    m, b = x.shape[:2]
    if first_grouped:
        h = x.transpose(0, 1).reshape(b, m, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
        h = F.conv2d(h, p["features.0.weight"].flatten(0, 1), p["features.0.bias"].flatten(), padding=2, groups=m)
        h = torch.relu(F.max_pool2d(h, 2))
        h = h.reshape(b, m, -1, *h.shape[2:]).transpose(0, 1)
    else:
        h = _unfold_conv(x, p["features.0.weight"], p["features.0.bias"], 2)
        h = torch.relu(F.max_pool2d(h.reshape(m * b, *h.shape[2:]), 2))
        h = h.view(m, b, *h.shape[1:])
    h = _unfold_conv(h, p["features.3.weight"], p["features.3.bias"], 0)
    h = torch.relu(F.max_pool2d(h.reshape(m * b, *h.shape[2:]), 2))
    return _fc(p, h.reshape(m, b, -1))


def _depthwise_first(p: dict, x: torch.Tensor) -> torch.Tensor:
    """The first convolution (one input channel per model) as a depthwise convolution of the
    input repeated once per filter, the rest as the engine."""
    import torch.nn.functional as F

    m, b, c, hh, ww = x.shape
    w1 = p["features.0.weight"]
    h = x.transpose(0, 1).reshape(b, m * c, hh, ww).repeat_interleave(w1.shape[1], dim=1)
    h = h.contiguous(memory_format=torch.channels_last)
    h = F.conv2d(h, w1.flatten(0, 1), p["features.0.bias"].flatten(), padding=2, groups=h.shape[1])
    h = torch.relu(F.max_pool2d(h, 2))
    h = F.conv2d(h, p["features.3.weight"].flatten(0, 1), p["features.3.bias"].flatten(), groups=m)
    h = torch.relu(F.max_pool2d(h, 2))
    return _fc(p, h.reshape(b, m, -1).transpose(0, 1))


def _stacked_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    m = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(m, -1).mean(1).sum()


def _step_time(step, steps: int, repeats: int = 3) -> float:
    """Best CPU seconds per call of ``step`` over ``repeats`` runs of ``steps`` calls (after
    3 warm-up calls): CPU time, which waiting for a core held by another process does not add to."""
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(steps):
            step()
        best = min(best, (time.process_time() - start) / steps)
    return best


def engine_candidates(builder, bundle, index_sets, seeds, batch_size: int, macs: int, peak: float,
                      steps: int = 10, compile_too: bool = False) -> dict:
    """Time one training step (forward, backward, Adam) of every candidate on the same stacked
    models and batch, next to one model at a time; see the module docstring."""
    import torch.nn.functional as F

    from mcmia_helpers.shadow import stack_states

    n_models = len(index_sets)
    torch.manual_seed(0)
    models = []
    for seed in seeds:
        torch.manual_seed(int(seed))
        models.append(builder())
    stacked, _ = stack_states(models)
    chunk = torch.stack([idx[:batch_size] for idx in index_sets])
    x, y = bundle.batch(chunk.reshape(-1))
    x, y = x.view(n_models, batch_size, *x.shape[1:]), y.view(n_models, batch_size)
    flops_per_step = 6.0 * macs * n_models * batch_size
    per_thread_peak = peak / torch.get_num_threads()

    one = copy.deepcopy(models[0]).train()
    one_opt = torch.optim.Adam(one.parameters(), lr=1e-3)

    def one_step():
        loss = F.cross_entropy(one(x[0]), y[0])
        one_opt.zero_grad(set_to_none=True)
        loss.backward()
        one_opt.step()

    one_model_s = _step_time(one_step, steps * 4) * n_models  # M models' steps, one at a time

    def fresh() -> dict:
        return {k: v.detach().clone().requires_grad_(True) for k, v in stacked.items()}

    def grads(forward) -> tuple[torch.Tensor, dict]:
        p = fresh()
        logits = forward(p, x)
        _stacked_loss(logits, y).backward()
        return logits.detach(), {k: v.grad for k, v in p.items()}

    ref_logits, ref_grads = grads(_grouped)
    candidates = [("engine: grouped conv, channels-last", _grouped, {}),
                  ("grouped conv, NCHW", lambda p, x: _grouped(p, x, torch.contiguous_format), {}),
                  ("unfold + batched matmul (both convs)", _unfolded, {}),
                  ("first conv grouped, second unfold + bmm", lambda p, x: _unfolded(p, x, True), {}),
                  ("first conv depthwise (repeated input)", _depthwise_first, {}),
                  ("engine + fused Adam", _grouped, {"fused": True}),
                  ("engine + foreach Adam", _grouped, {"foreach": True})]
    compile_note = None
    if compile_too:
        started, cpu = time.perf_counter(), time.process_time()
        compiled = torch.compile(_grouped)
        p = fresh()
        _stacked_loss(compiled(p, x), y).backward()  # compiles forward and backward
        compile_note = {"compile_wall_s": round(time.perf_counter() - started, 1),
                        "compile_cpu_s_this_process": round(time.process_time() - cpu, 1)}
        candidates.append(("torch.compile of forward + loss", compiled, {}))
    trained: dict = {}
    out: dict = {"steps_timed": steps, "batch_per_model": batch_size,
                 "one_model_at_a_time_s_per_step_of_all": round(one_model_s, 5),
                 "one_model_at_a_time_share_of_peak_per_cpu_s":
                     round(flops_per_step / one_model_s / per_thread_peak, 4),
                 "candidates": {}}
    if compile_note:
        out["compile"] = compile_note
    for name, forward, adam in candidates:
        logits, g = grads(forward)
        p = fresh()
        opt = torch.optim.Adam(list(p.values()), lr=1e-3, **adam)

        def step(p=p, opt=opt, forward=forward):
            loss = _stacked_loss(forward(p, x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds = _step_time(step, steps)
        trained[name] = p
        out["candidates"][name] = {
            "cpu_s_per_step": round(seconds, 5),
            "speedup_vs_one_at_a_time": round(one_model_s / seconds, 2),
            "share_of_peak_per_cpu_s": round(flops_per_step / seconds / per_thread_peak, 4),
            "max_abs_logit_diff": float((logits - ref_logits).abs().max()),
            "max_abs_grad_diff": max(float((g[k] - ref_grads[k]).abs().max()) for k in g)}
    reference = trained["engine: grouped conv, channels-last"]
    for name, p in trained.items():  # the same number of Adam steps from the same start
        out["candidates"][name]["max_abs_weight_diff_after_steps"] = max(
            float((p[k] - reference[k]).detach().abs().max()) for k in p)
    out["engine_layers"] = _engine_layers(stacked, x, steps, peak, macs_split(builder, bundle))
    return out


def summarise_candidates(cand: dict, aim: float = 3.0) -> dict:
    """What the candidates gave against the aim (``aim`` x one model at a time), and what limits
    the engine: the share of its step spent in its two convolutions and their share of the peak.
    Computed from the measured numbers only."""
    rows = cand["candidates"]
    best = max(rows, key=lambda k: rows[k]["speedup_vs_one_at_a_time"])
    engine = rows["engine: grouped conv, channels-last"]
    layers = cand["engine_layers"]
    conv_s = sum(layer["cpu_s_fwd_bwd"] for layer in layers.values())
    faster = [k for k, v in rows.items()
              if v["speedup_vs_one_at_a_time"] > 1.02 * engine["speedup_vs_one_at_a_time"]]
    return {"aim_speedup": aim, "best": best, "best_speedup": rows[best]["speedup_vs_one_at_a_time"],
            "aim_reached": rows[best]["speedup_vs_one_at_a_time"] >= aim,
            "engine_step_share_in_convolutions": round(conv_s / engine["cpu_s_per_step"], 3),
            "faster_than_engine": faster,
            "limit": (f"the two grouped convolutions take {100 * conv_s / engine['cpu_s_per_step']:.0f}% "
                      f"of the engine's step, the first at "
                      f"{100 * layers['first_conv']['share_of_peak_per_cpu_s']:.0f}% and the second at "
                      f"{100 * layers['second_conv']['share_of_peak_per_cpu_s']:.0f}% of the matmul "
                      "peak (few channels per model: 1 in and 6 out in the first, 6 in and 16 out "
                      "in the second); "
                      + (f"{', '.join(faster)} beat the engine" if faster else
                         "no candidate beats the engine: unfold (im2col) moves 25 to 150 floats per "
                         "output pixel through memory, the NCHW and depthwise forms run slower "
                         "oneDNN kernels, Adam is a few per cent of the step"
                         + (", and the torch.compile'd step is slower than the eager one"
                            if "torch.compile of forward + loss" in rows else "")))}


def macs_split(builder, bundle) -> dict:
    """LeNet-5's multiply-accumulates per image, per convolution and for the linear layers."""
    model = builder()
    size = bundle.image_size
    c1, c2 = model.features[0], model.features[3]
    side1 = size + 2 * c1.padding[0] - c1.kernel_size[0] + 1
    side2 = side1 // 2 - c2.kernel_size[0] + 1
    first = side1 ** 2 * c1.out_channels * c1.in_channels * c1.kernel_size[0] ** 2
    second = side2 ** 2 * c2.out_channels * c2.in_channels * c2.kernel_size[0] ** 2
    linear = sum(m.in_features * m.out_features for m in model.classifier if isinstance(m, torch.nn.Linear))
    return {"first_conv": first, "second_conv": second, "linear": linear}


def _engine_layers(stacked: dict, x: torch.Tensor, steps: int, peak: float, macs: dict) -> dict:
    """Forward plus backward CPU time of each convolution of the engine (grouped, channels-last,
    as in a training step: no input gradient for the first one) and its share of the peak."""
    import torch.nn.functional as F

    m, b = x.shape[:2]
    cl = torch.channels_last
    w1 = stacked["features.0.weight"].detach().flatten(0, 1).clone().requires_grad_(True)
    b1 = stacked["features.0.bias"].detach().flatten().clone().requires_grad_(True)
    w2 = stacked["features.3.weight"].detach().flatten(0, 1).clone().requires_grad_(True)
    b2 = stacked["features.3.bias"].detach().flatten().clone().requires_grad_(True)
    x1 = x.transpose(0, 1).reshape(b, m, *x.shape[3:]).contiguous(memory_format=cl)
    with torch.no_grad():
        x2 = torch.relu(F.max_pool2d(F.conv2d(x1, w1, b1, padding=2, groups=m), 2))
    x2.requires_grad_(True)
    g1 = torch.randn(F.conv2d(x1, w1, b1, padding=2, groups=m).shape).contiguous(memory_format=cl)
    g2 = torch.randn(F.conv2d(x2, w2, b2, groups=m).shape).contiguous(memory_format=cl)
    per_thread_peak = peak / torch.get_num_threads()
    out = {}
    for name, run, flops in (
            ("first_conv", lambda: F.conv2d(x1, w1, b1, padding=2, groups=m).backward(g1),
             2 * 2 * macs["first_conv"] * m * b),  # forward and weight gradient
            ("second_conv", lambda: F.conv2d(x2, w2, b2, groups=m).backward(g2),
             3 * 2 * macs["second_conv"] * m * b)):  # forward, input and weight gradients
        seconds = _step_time(run, steps)
        out[name] = {"cpu_s_fwd_bwd": round(seconds, 5),
                     "share_of_peak_per_cpu_s": round(flops / seconds / per_thread_peak, 4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=32)
    parser.add_argument("--examples", type=int, default=500, help="training examples per model (half the pool)")
    parser.add_argument("--epochs", type=int, default=2, help="dense epochs; ADMM gets half each for ADMM and retraining")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--candidates", action="store_true",
                        help="also time the faster-engine candidates per step (see the docstring)")
    parser.add_argument("--compile", action="store_true",
                        help="with --candidates: torch.compile too (minutes of compiling)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    bundle = load_dataset(args.dataset)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(bundle), generator=gen)
    pool, held_out = perm[:2 * args.examples], perm[-500:]
    membership = membership_matrix(args.models, len(pool), seed=0)
    index_sets = [pool[membership[i]] for i in range(args.models)]
    seeds = list(range(1000, 1000 + args.models))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=1e-3)

    def builder() -> torch.nn.Module:
        return build_model("lenet5", bundle.num_classes, bundle.in_channels, bundle.image_size)

    shape = (bundle.in_channels, bundle.image_size, bundle.image_size)
    macs = compression_report(builder(), shape)["flops_dense"]
    peak = matmul_peak()
    # Warm-up (oneDNN's kernel set-up): one epoch of two models each way.
    warm = replace(config, epochs=1)
    train_models_sequential(builder, 2, bundle, index_sets[:2], warm, seeds[:2], device=device)
    train_models_batched(builder, 2, bundle, index_sets[:2], warm, seeds[:2], device=device)

    load_before = os.getloadavg()
    images = args.models * args.examples * args.epochs
    flops = 6.0 * macs * images
    result: dict = {"what": f"{args.models} LeNet-5 models x {args.examples} {bundle.name_used} members "
                            f"x {args.epochs} epochs (batch {args.batch_size}, Adam): batched vs one at a time",
                    "models": args.models, "examples_per_model": args.examples, "epochs": args.epochs,
                    "batch_size": args.batch_size, "dataset": bundle.name_used,
                    "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "macs_per_image_forward": macs, "training_flops_per_image": 6 * macs,
                    "matmul_peak_gflops": round(peak / 1e9, 2), "torch_version": torch.__version__}
    paths: dict = {}
    dense: dict = {}
    for name, fn in (("sequential", lambda: train_models_sequential(builder, args.models, bundle, index_sets,
                                                                     config, seeds, device=device)),
                     ("batched", lambda: train_models_batched(builder, args.models, bundle, index_sets,
                                                              config, seeds, device=device,
                                                              max_group=args.models))):
        dense[name], wall, cpu = _timed(fn)
        paths[name] = _path_summary(wall, cpu, images, flops, peak)
    a, b = (predict_logits_many(dense[k], bundle, held_out) for k in ("sequential", "batched"))
    result["dense"] = {**paths, "speedup_wall": round(paths["sequential"]["wall_s"] / paths["batched"]["wall_s"], 2),
                       "speedup_cpu": round(paths["sequential"]["cpu_s"] / paths["batched"]["cpu_s"], 2),
                       "max_abs_logit_diff": float((a - b).abs().max()),
                       "prediction_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}

    result["dense"]["batched_profile"] = profile_batched(builder, bundle, index_sets, replace(config, epochs=1),
                                                         seeds, device)
    half = max(1, args.epochs // 2)
    profile = default_sparsity_profile(builder(), 0.9)
    pruned: dict = {}
    paths = {}

    def sequential_admm():
        models = [copy.deepcopy(m) for m in dense["batched"]]
        for model, idx, seed in zip(models, index_sets, seeds):
            prune_model(model, bundle, idx, replace(config, seed=seed), "admm", profile,
                        admm_epochs=half, retrain_epochs=half, admm=ADMMSettings(), device=device)
        return models

    def batched_admm():
        models = [copy.deepcopy(m) for m in dense["batched"]]
        prune_models_batched(models, bundle, index_sets, config, seeds, "admm", profile,
                             admm_epochs=half, retrain_epochs=half, settings=ADMMSettings(), device=device)
        return models

    admm_images = args.models * args.examples * 2 * half
    for name, fn in (("sequential", sequential_admm), ("batched", batched_admm)):
        pruned[name], wall, cpu = _timed(fn)
        paths[name] = _path_summary(wall, cpu, admm_images, 6.0 * macs * admm_images, peak)
    a, b = (predict_logits_many(pruned[k], bundle, held_out) for k in ("sequential", "batched"))
    same_masks = all(torch.equal(dict(x.named_parameters())[n] == 0, p == 0)
                     for x, y in zip(pruned["sequential"], pruned["batched"]) for n, p in y.named_parameters())
    result["admm_90"] = {**paths, "epochs": f"{half} ADMM + {half} masked retraining",
                         "speedup_wall": round(paths["sequential"]["wall_s"] / paths["batched"]["wall_s"], 2),
                         "speedup_cpu": round(paths["sequential"]["cpu_s"] / paths["batched"]["cpu_s"], 2),
                         "max_abs_logit_diff": float((a - b).abs().max()),
                         "prediction_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
                         "same_masks": bool(same_masks),
                         "note": "FLOPs counted as for dense training (the zeros are still multiplied)"}
    if args.candidates:
        result["engine_candidates"] = engine_candidates(builder, bundle, index_sets, seeds,
                                                        args.batch_size, macs, peak,
                                                        compile_too=args.compile)
    # The peak again after the runs: on a shared machine the best of both is the practical peak.
    peak_after = matmul_peak()
    if peak_after > peak:
        scale = peak / peak_after
        for part in (result.get("engine_candidates") or {}).get("candidates", {}).values():
            part["share_of_peak_per_cpu_s"] = round(part["share_of_peak_per_cpu_s"] * scale, 4)
        for part in (result.get("engine_candidates") or {}).get("engine_layers", {}).values():
            part["share_of_peak_per_cpu_s"] = round(part["share_of_peak_per_cpu_s"] * scale, 4)
        if result.get("engine_candidates"):
            key = "one_model_at_a_time_share_of_peak_per_cpu_s"
            result["engine_candidates"][key] = round(result["engine_candidates"][key] * scale, 4)
        for part in ("dense", "admm_90"):
            for path in ("sequential", "batched"):
                for key in ("share_of_matmul_peak", "share_of_peak_per_cpu_s"):
                    result[part][path][key] = round(result[part][path][key] * scale, 4)
        result["matmul_peak_gflops"] = round(peak_after / 1e9, 2)
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(result["what"])
    print(f"float32 matmul peak here: {result['matmul_peak_gflops']:.1f} GFLOP/s ({result['torch_threads']} threads)")
    for part in ("dense", "admm_90"):
        r = result[part]
        for path in ("sequential", "batched"):
            p = r[path]
            print(f"{part:8s} {path:10s} {p['wall_s']:7.1f} s wall {p['cpu_s']:7.1f} s CPU "
                  f"{p['images_per_s']:9.0f} img/s {p['gflops_per_s']:6.2f} GFLOP/s "
                  f"= {100 * p['share_of_matmul_peak']:.1f}% of the matmul peak "
                  f"({100 * p['share_of_peak_per_cpu_s']:.1f}% per CPU-second)")
        print(f"{part:8s} speed-up {r['speedup_wall']:.2f}x wall, {r['speedup_cpu']:.2f}x CPU; largest logit "
              f"difference {r['max_abs_logit_diff']:.1e}, argmax agreement {r['prediction_agreement']:.4f}")
    shares = result["dense"]["batched_profile"]["shares"]
    print("batched path, share of CPU time: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
    cand = result.get("engine_candidates")
    if cand:
        cand["summary"] = summarise_candidates(cand)
        print(f"engine candidates, one step of {args.models} models x {args.batch_size} images "
              f"(one at a time: {1000 * cand['one_model_at_a_time_s_per_step_of_all']:.1f} ms CPU):")
        for name, c in cand["candidates"].items():
            print(f"  {name:42s} {1000 * c['cpu_s_per_step']:7.1f} ms CPU {c['speedup_vs_one_at_a_time']:5.2f}x "
                  f"{100 * c['share_of_peak_per_cpu_s']:5.1f}% of peak; logits {c['max_abs_logit_diff']:.1e}, "
                  f"weights after {cand['steps_timed'] * 3 + 3} steps {c['max_abs_weight_diff_after_steps']:.1e}")
        for name, c in cand["engine_layers"].items():
            print(f"  engine {name}: {1000 * c['cpu_s_fwd_bwd']:.1f} ms CPU forward + backward, "
                  f"{100 * c['share_of_peak_per_cpu_s']:.1f}% of peak")
    print(f"load average {load_before[0]:.1f} -> {result['load_average_after'][0]:.1f}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
