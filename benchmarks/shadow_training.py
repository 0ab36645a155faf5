"""Benchmark: 16 LeNet-5 shadow models trained together vs one after another (issue 3).

Both paths train the same 16 models (same initialisations, data, shuffles and epochs): the
sequential path calls ``training.fit`` once per model, the batched path
``shadow.train_models_batched`` trains them as one grouped network. The script checks that
the two paths give the same models (largest logit difference on held-out images), prints
wall-clock and CPU times and their ratios, and writes ``benchmarks/results/shadow_training.json``.

Usage::

    python benchmarks/shadow_training.py                 # 16 models x 1000 examples x 5 epochs
    python benchmarks/shadow_training.py --threads 1 --repeats 2

On a shared machine the wall-clock time depends on what else runs; the CPU time (process time)
of the two paths is the steadier comparison, and both are reported. With ``--repeats`` the two
paths alternate and the fastest run of each counts.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from mcmia_helpers.data import load_dataset
from mcmia_helpers.io import atomic_write_json
from mcmia_helpers.models import build_model
from mcmia_helpers.shadow import predict_logits_many, train_models_batched, train_models_sequential
from mcmia_helpers.training import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "shadow_training.json"


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--examples", type=int, default=1000, help="training examples per model")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two paths this many times")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    bundle = load_dataset(args.dataset)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(bundle), generator=gen)
    pool, held_out = perm[:-500], perm[-500:]
    index_sets = [pool[torch.randperm(len(pool), generator=gen)[:args.examples]]
                  for _ in range(args.models)]
    seeds = list(range(1000, 1000 + args.models))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=1e-3)

    def builder() -> torch.nn.Module:
        return build_model("lenet5", bundle.num_classes, bundle.in_channels, bundle.image_size)

    def sequential():
        return train_models_sequential(builder, args.models, bundle, index_sets, config, seeds,
                                       device=device)

    def batched():
        return train_models_batched(builder, args.models, bundle, index_sets, config, seeds,
                                    device=device)

    # Warm-up (first calls pay for oneDNN's kernel set-up): one epoch of two models each way.
    warm = TrainConfig(epochs=1, batch_size=args.batch_size)
    train_models_sequential(builder, 2, bundle, index_sets[:2], warm, seeds[:2], device=device)
    train_models_batched(builder, 2, bundle, index_sets[:2], warm, seeds[:2], device=device)

    load_before = os.getloadavg()
    runs = {"sequential": [], "batched": []}
    models = {}
    for _ in range(args.repeats):
        for name, fn in (("sequential", sequential), ("batched", batched)):
            models[name], wall, cpu = _timed(fn)
            runs[name].append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)})
    load_after = os.getloadavg()

    seq_logits = predict_logits_many(models["sequential"], bundle, held_out)
    bat_logits = predict_logits_many(models["batched"], bundle, held_out)
    max_diff = float((seq_logits - bat_logits).abs().max())
    agree = float((seq_logits.argmax(-1) == bat_logits.argmax(-1)).float().mean())

    best = {k: {m: min(r[m] for r in v) for m in ("wall_s", "cpu_s")} for k, v in runs.items()}
    result = {
        "what": f"{args.models} LeNet-5 models x {args.examples} {bundle.name_used} examples x "
                f"{args.epochs} epochs (batch {args.batch_size}, Adam), trained together vs sequentially",
        "models": args.models, "examples_per_model": args.examples, "epochs": args.epochs,
        "batch_size": args.batch_size, "dataset": bundle.name_used, "device": device.type,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "runs": runs,
        "sequential_wall_s": best["sequential"]["wall_s"], "batched_wall_s": best["batched"]["wall_s"],
        "sequential_cpu_s": best["sequential"]["cpu_s"], "batched_cpu_s": best["batched"]["cpu_s"],
        "speedup_wall": round(best["sequential"]["wall_s"] / best["batched"]["wall_s"], 2),
        "speedup_cpu": round(best["sequential"]["cpu_s"] / best["batched"]["cpu_s"], 2),
        "max_abs_logit_diff": max_diff,
        "prediction_agreement": agree,
        "torch_version": torch.__version__,
    }
    print(result["what"])
    print(f"sequential: {result['sequential_wall_s']:.1f} s wall, {result['sequential_cpu_s']:.1f} s CPU")
    print(f"batched:    {result['batched_wall_s']:.1f} s wall, {result['batched_cpu_s']:.1f} s CPU")
    print(f"speed-up:   {result['speedup_wall']:.2f}x wall, {result['speedup_cpu']:.2f}x CPU "
          f"({result['torch_threads']} threads, load average {load_before[0]:.1f} -> {load_after[0]:.1f})")
    print(f"same models: largest logit difference {max_diff:.2e}, argmax agreement {agree:.4f}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
