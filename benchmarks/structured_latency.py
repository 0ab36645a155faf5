"""Benchmark: which compression buys speed and which buys size (issues 17 and 26).

Each of the four architectures (LeNet-5 on 28x28 grey inputs; VGG-16, MobileNetV2 and
ResNet18 on 32x32 RGB inputs) in three forms, measured side by side in one run per
architecture:

* ``dense``: the model as built (the book scale's width for the architecture, and for VGG-16
  also full width 1.0 when its timing fits ``--full-width-budget`` seconds);
* ``unstructured``: the same weights with 90% of every prunable layer's weights set to zero
  (the smallest magnitudes, :func:`~mcmia_helpers.defences.pruning.project`, the masks of
  magnitude pruning): a smaller file, but a dense multiply on a CPU;
* ``filter``: whole filters and neurons removed through Torch-Pruning's dependency graph
  (:func:`~mcmia_helpers.defences.pruning.prune_filters`, residual and depthwise couplings
  included) at the ratio that keeps the same number of prunable weights
  (:func:`~mcmia_helpers.defences.pruning.filter_budget`): a narrower dense model.

For each: CPU forward latency at batch 1 and batch 64 (median of interleaved passes,
:func:`~mcmia_helpers.defences.compression.compare_latency`, so a busy machine slows all three
alike; see the clocks below), parameters, nonzero parameters, FLOPs (multiply-accumulates, dense and effective) and
file sizes compared like for like (raw: ``torch.save`` of the dense model against the pruned
model in the sparse format without deflate; compressed: both deflated in one container), all
from :func:`~mcmia_helpers.defences.compression.compression_report`. The headline numbers are
the ratios dense / pruned. Results go to ``benchmarks/results/structured_latency.json``.

Latency and size do not depend on what the weights learned, so the models are untrained
(seeded); the zeros and the removed filters are chosen by magnitude as in the defences.

Two clocks. Wall-clock time is the latency a user sees, but on an oversubscribed CPU a long
pass is preempted more often than a short one, which inflates the ratios (measured here on 2
busy cores: batch-1 "speed-ups" of filter pruning from 2.8x to 27x between runs). So the script
runs on one torch thread by default and also times the calling thread's CPU time
(``time.thread_time``), which preemption does not inflate: the ``cpu_*`` numbers are the
steadier comparison on a shared machine, the ``wall_*`` ones what an idle machine would show.
With more threads (``--threads 0``: torch's default, for a machine of one's own) only
wall-clock time is measured (a thread pool's CPU time is not a latency).

Usage::

    python benchmarks/structured_latency.py                    # one thread, a few minutes
    python benchmarks/structured_latency.py --archs vgg16 resnet18 --full-width-budget 0
    python benchmarks/structured_latency.py --threads 0 --repeats 30
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from mcmia_helpers.defences.compression import compare_latency, compression_report, prunable_layers
from mcmia_helpers.defences.pruning import apply_masks, filter_budget, project, prune_filters
from mcmia_helpers.io import atomic_write_json
from mcmia_helpers.models import build_model
from mcmia_helpers.scales import get_scale

RESULTS = Path(__file__).resolve().parent / "results" / "structured_latency.json"
#: Each architecture's input shape (the book's datasets: Fashion-MNIST for LeNet-5, CIFAR-10).
SHAPES: dict[str, tuple[int, int, int]] = {"lenet5": (1, 28, 28), "vgg16": (3, 32, 32),
                                           "mobilenetv2": (3, 32, 32), "resnet18": (3, 32, 32)}
#: The architecture also timed at full width when it fits the budget.
FULL_WIDTH_ARCH = "vgg16"
BATCHES = (1, 64)
#: How many times more interleaved passes batch 1 gets than batch 64.
SINGLE_REPEATS = 10
#: What each model's report keeps, and the ratios dense / pruned computed from them.
REPORT_KEYS = ("params_total", "params_nonzero", "flops_dense", "flops_effective",
               "size_dense_bytes", "size_sparse_raw_bytes", "size_dense_compressed_bytes",
               "size_sparse_bytes")


def three_forms(arch: str, width: float, sparsity: float) -> tuple[dict[str, torch.nn.Module], dict]:
    """The dense ``arch`` at ``width``, its unstructured and its filter-pruned form (same budget)."""
    shape = SHAPES[arch]
    torch.manual_seed(0)
    dense = build_model(arch, in_channels=shape[0], image_size=shape[1], width=width).eval()
    unstructured = build_model(arch, in_channels=shape[0], image_size=shape[1], width=width)
    unstructured.load_state_dict(dense.state_dict())
    apply_masks(unstructured, {name: project(m.weight, sparsity)
                               for name, m in prunable_layers(unstructured).items()})
    budget = filter_budget(dense, sparsity, shape)
    narrow = prune_filters(dense, budget["filter_ratio"], shape)
    return {"dense": dense, "unstructured": unstructured.eval(), "filter": narrow.eval()}, budget


def clocks(threads: int) -> dict[str, Callable[[], float]]:
    """The clocks a run times with: wall-clock time always; with one torch thread also the
    calling thread's CPU time, which preemption by other processes does not inflate (see
    :func:`~mcmia_helpers.defences.compression.compare_latency`)."""
    out: dict[str, Callable[[], float]] = {"wall": time.perf_counter}
    if threads == 1:
        out["cpu"] = time.thread_time
    return out


def _one_round_s(models: dict[str, torch.nn.Module], shape: tuple[int, ...]) -> float:
    """Seconds of one round of the timing with one clock (every model once at batch 64,
    ``SINGLE_REPEATS`` times at batch 1), to size the full-width run."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in BATCHES:
            x = torch.randn(batch, *shape)
            for _ in range(SINGLE_REPEATS if batch == 1 else 1):
                for model in models.values():
                    model(x)
    return time.perf_counter() - start


def measure(arch: str, width: float, sparsity: float, repeats: int, warmup: int,
            timers: dict[str, Callable[[], float]]) -> dict:
    """Latency with every clock of ``timers`` at every batch size, and the compression report,
    of the three forms of ``arch`` at ``width``. Batch 1 passes are short (milliseconds), so one stall of a
    shared machine weighs more: they get ``SINGLE_REPEATS`` times as many interleaved passes as
    batch 64 (still cheap)."""
    shape = SHAPES[arch]
    models, budget = three_forms(arch, width, sparsity)
    reports = {name: compression_report(m, shape) for name, m in models.items()}
    passes = {b: repeats * (SINGLE_REPEATS if b == 1 else 1) for b in BATCHES}
    timed = {f"{clock}_batch_{b}": compare_latency(models, torch.randn(b, *shape), repeats=passes[b],
                                                   warmup=warmup, clock=timer)
             for clock, timer in timers.items() for b in BATCHES}
    forms = {name: {**{k: reports[name][k] for k in REPORT_KEYS},
                    **{f"{key}_s": timed[key][name] for key in timed}}
             for name in models}
    ratios = {}
    for name in ("unstructured", "filter"):
        d, p = forms["dense"], forms[name]
        ratios[name] = {
            **{key: d[f"{key}_s"] / p[f"{key}_s"] for key in timed},
            "params_nonzero": d["params_nonzero"] / p["params_nonzero"],
            "flops_executed": d["flops_dense"] / p["flops_dense"],
            "flops_effective": d["flops_dense"] / p["flops_effective"],
            "size_raw": d["size_dense_bytes"] / p["size_sparse_raw_bytes"],
            "size_compressed": d["size_dense_compressed_bytes"] / p["size_sparse_bytes"],
        }
    return {"arch": arch, "input_shape": list(shape), "width": width, "sparsity": sparsity,
            "clocks": list(timers),
            "repeats": {f"batch_{b}": n for b, n in passes.items()}, "warmup": warmup,
            "filter_ratio": budget["filter_ratio"], "filter_channels": budget["filter_channels"],
            "filter_param_share": budget["param_share"], "forms": forms,
            "ratios_dense_over": ratios}


def _table(run: dict) -> str:
    """The run as a small text table: one row per form, then the ratios dense / pruned."""
    forms, ratios, timers = run["forms"], run["ratios_dense_over"], run["clocks"]
    times = [f"{clock}_batch_{b}" for clock in timers for b in BATCHES]
    heads = "".join(f"{clock + ' b' + str(b) + ' ms':>14}" for clock in timers for b in BATCHES)
    side = run["input_shape"][1]
    lines = [f"{run['arch']} width {run['width']:g}, {side}x{side}, sparsity {run['sparsity']:g} "
             f"(filter ratio {run['filter_ratio']:.3f}; median of {run['repeats']['batch_1']} / "
             f"{run['repeats']['batch_64']} interleaved passes at batch 1 / 64)",
             f"{'form':<13}{heads}{'params':>11}{'nonzero':>11}{'MMACs':>8}{'eff MMACs':>10}"
             f"{'raw KB':>9}{'zip KB':>9}"]
    for name, f in forms.items():
        raw = f["size_dense_bytes"] if name == "dense" else f["size_sparse_raw_bytes"]
        zipped = f["size_dense_compressed_bytes"] if name == "dense" else f["size_sparse_bytes"]
        lines.append(f"{name:<13}" + "".join(f"{f[t + '_s'] * 1e3:>14.2f}" for t in times)
                     + f"{f['params_total']:>11,}{f['params_nonzero']:>11,}"
                     f"{f['flops_dense'] / 1e6:>8.1f}{f['flops_effective'] / 1e6:>10.1f}"
                     f"{raw / 1024:>9.0f}{zipped / 1024:>9.0f}")
    lines.append("dense / pruned: " + ", ".join(times) + " | nonzero params | executed, "
                 "effective FLOPs | raw, compressed size")
    for name, r in ratios.items():
        lines.append(f"  {name:<13} " + ", ".join(f"{r[t]:.2f}x" for t in times)
                     + f" | {r['params_nonzero']:.1f}x | {r['flops_executed']:.1f}x, "
                     f"{r['flops_effective']:.1f}x | {r['size_raw']:.1f}x, {r['size_compressed']:.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=20,
                        help=f"interleaved passes at batch 64 ({SINGLE_REPEATS}x as many at batch 1)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, see the module doc; 0: torch's default)")
    parser.add_argument("--full-width-budget", type=float, default=60.0,
                        help="seconds the width-1.0 timing may take (skipped if it would not fit)")
    parser.add_argument("--archs", nargs="+", choices=list(SHAPES), default=list(SHAPES),
                        help="architectures to measure (default: all four)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    timers = clocks(torch.get_num_threads())
    started = time.perf_counter()
    load_before = os.getloadavg()
    book_widths = {arch: get_scale("book").for_arch(arch).width for arch in args.archs}
    runs = []
    for arch, width in book_widths.items():
        runs.append(measure(arch, width, args.sparsity, args.repeats, args.warmup, timers))
        print(_table(runs[-1]))
    full = {"arch": FULL_WIDTH_ARCH, "width": 1.0}
    if book_widths.get(FULL_WIDTH_ARCH, 1.0) != 1.0:
        shape = SHAPES[FULL_WIDTH_ARCH]
        round_s = _one_round_s(three_forms(FULL_WIDTH_ARCH, 1.0, args.sparsity)[0], shape) * len(timers)
        repeats = min(args.repeats, int(args.full_width_budget / round_s) - args.warmup)
        full["estimated_round_s"] = round_s
        if repeats >= 5:
            runs.append(measure(FULL_WIDTH_ARCH, 1.0, args.sparsity, repeats, args.warmup, timers))
            print(_table(runs[-1]))
            full["measured"] = True
        else:
            full.update(measured=False, note=f"one round of passes takes {round_s:.1f} s: "
                        f"{args.warmup} + 5 rounds would exceed {args.full_width_budget:g} s")
            print(f"width 1.0 skipped: {full['note']}")
    result = {
        "what": "CPU forward latency, parameters, FLOPs and file sizes of each dense model, its "
                "unstructured (weights zeroed) and its filter-pruned form (Torch-Pruning) at the "
                "same parameter budget; ratios are dense / pruned",
        "book_widths": book_widths, "input_shapes": {a: list(SHAPES[a]) for a in book_widths},
        "batches": list(BATCHES),
        "runs": runs, "full_width": full,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__, "processor": platform.machine(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out} ({result['wall_s']} s)")
    return result


if __name__ == "__main__":
    main()
