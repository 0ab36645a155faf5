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

Usage::

    python benchmarks/zoo_training.py                      # 32 models x 500 examples x 2 epochs
    python benchmarks/zoo_training.py --examples 2000 --epochs 4 --threads 2

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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=32)
    parser.add_argument("--examples", type=int, default=500, help="training examples per model (half the pool)")
    parser.add_argument("--epochs", type=int, default=2, help="dense epochs; ADMM gets half each for ADMM and retraining")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
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
    # The peak again after the runs: on a shared machine the best of both is the practical peak.
    peak_after = matmul_peak()
    if peak_after > peak:
        scale = peak / peak_after
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
    print(f"load average {load_before[0]:.1f} -> {result['load_average_after'][0]:.1f}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
