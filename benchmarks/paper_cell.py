"""One paper-scale cell on a GPU (issue 13): ResNet18 at full width on the 32x32 data (CIFAR-10,
or the named Fashion-MNIST stand-in offline), the paper's recipe (SGD, cosine schedule, random
crop + flip), a few epochs, then LiRA with 16 shadow models.

Records images per second and seconds per epoch (target training, and the 16 LiRA models
trained together), peak memory, and how much bfloat16 queries would change what LiRA reads:
the same LiRA run with the queries in bf16 autocast (the old behaviour) against float32 (the
package's queries), compared by the largest change of a logit, of LiRA's statistic, the rank
correlation of the scores and TPR at 0.1% FPR. Training keeps bf16 autocast on CUDA either way.

    python benchmarks/paper_cell.py                  # GPU: writes benchmarks/results/paper_cell_cuda.json
    python benchmarks/paper_cell.py --smoke          # CPU: the smoke cap (MCMIA_SMOKE=2), 2 LiRA models

On a CPU without ``--smoke`` it runs too, for hours; ``--smoke`` is for checking the script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> dict:
    out = {"host_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["gpu_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["gpu_max_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


@contextmanager
def bf16_queries():
    """The old query path: bf16 autocast wherever the device has it (CUDA, and the CPU here)."""
    from mcmia_helpers import shadow, training

    def old(device: torch.device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    saved = training.query_precision, shadow.query_precision
    training.query_precision = shadow.query_precision = old
    try:
        yield
    finally:
        training.query_precision, shadow.query_precision = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lira-models", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="CPU check: MCMIA_SMOKE=2, 1 epoch, 2 LiRA models")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["MCMIA_SMOKE"] = "2"
        args.epochs, args.lira_models = 1, 2
    from mcmia_helpers.attacks import compute_attack_scores
    from mcmia_helpers.attacks.scores import logit_confidence
    from mcmia_helpers.context import ExperimentSpec, prepare
    from mcmia_helpers.metrics import tpr_at_fpr
    from mcmia_helpers.training import fit, predict_logits

    spec = ExperimentSpec(arch="resnet18", dataset="cifar10", standin="fashion-mnist", scale="paper")
    ctx = prepare(spec)
    ctx = replace(ctx, arch_scale=replace(ctx.arch_scale, epochs=args.epochs, n_lira_models=args.lira_models),
                  train_config=replace(ctx.train_config, epochs=args.epochs))
    device = ctx.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = ctx.build().to(device)
    n = len(ctx.split.members)
    _sync(device)
    started = time.perf_counter()
    history = fit(model, ctx.bundle, ctx.split.members, ctx.train_config, device=device)
    _sync(device)
    train_s = time.perf_counter() - started

    attacks = ["lira_online", "lira_offline"]
    started = time.perf_counter()
    fp32 = compute_attack_scores(ctx, model, attacks, cache=os.environ.get("MCMIA_CACHE"))
    _sync(device)
    lira_s = time.perf_counter() - started  # trains the LiRA models (cached for the bf16 pass)
    with bf16_queries():
        bf16 = compute_attack_scores(ctx, model, attacks, cache=os.environ.get("MCMIA_CACHE"))
    eval_idx = torch.cat([ctx.split.members, ctx.split.nonmembers])
    logits32 = predict_logits(model, ctx.bundle, eval_idx, device=device)
    with bf16_queries():
        logits16 = predict_logits(model, ctx.bundle, eval_idx, device=device)
    labels = ctx.bundle.labels[eval_idx]
    stat32, stat16 = logit_confidence(logits32, labels), logit_confidence(logits16, labels)

    def ranks(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x))

    agreement = {}
    for name in attacks:
        a, b = fp32.scores[name], bf16.scores[name]
        ok = np.isfinite(a) & np.isfinite(b)
        agreement[name] = {
            "spearman": float(np.corrcoef(ranks(a[ok]), ranks(b[ok]))[0, 1]),
            "max_abs_score_change": float(np.max(np.abs(a[ok] - b[ok]))),
            "tpr_at_0_1pct_fpr_fp32": tpr_at_fpr(fp32.labels[ok], a[ok], 0.001),
            "tpr_at_0_1pct_fpr_bf16": tpr_at_fpr(fp32.labels[ok], b[ok], 0.001),
        }
    result = {
        "what": "one paper-scale cell: ResNet18 full width, 32x32, paper recipe, LiRA",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "smoke": bool(args.smoke),
        "note": ("CPU SMOKE RUN (MCMIA_SMOKE=2: batches of 8, 16 members): checks the script only; "
                 "the timings are not the paper's. The GPU run is pending.") if args.smoke or device.type != "cuda" else "",
        "dataset": ctx.bundle.describe(),
        "augmentation": ctx.augmentation(),
        "train_config": ctx.train_config.to_dict(),
        "members": n,
        "epochs": args.epochs,
        "lira_models": args.lira_models,
        "target_train_s": round(train_s, 3),
        "target_s_per_epoch": round(train_s / args.epochs, 3),
        "target_images_per_s": round(n * args.epochs / train_s, 1),
        "lira_models_train_and_query_s": round(lira_s, 3),
        "lira_images_per_s": round(args.lira_models * (len(eval_idx) // 2) * args.epochs / lira_s, 1),
        "peak_memory": _peak_memory(device),
        "final_train_acc": history[-1]["acc"],
        "bf16_vs_fp32_queries": {
            "max_abs_logit_change": float((logits32 - logits16).abs().max()),
            "max_abs_lira_statistic_change": float((stat32 - stat16).abs().max()),
            "argmax_agreement": float((logits32.argmax(1) == logits16.argmax(1)).float().mean()),
            "attacks": agreement,
        },
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }
    out = Path(args.out or ROOT / "benchmarks" / "results"
               / f"paper_cell_{device.type}{'_smoke' if args.smoke else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
