"""Benchmark: LiRA's estimates and queries, and RMIA, scored on the same logits (issue 25).

Every variant is scored on *the same* models' logits, so the differences are those of the
estimates alone:

* **zoo** (``--models`` LeNet-5 models of the ``ci`` dense zoo on Fashion-MNIST, trained by
  :func:`mcmia_helpers.zoo.train_zoo` into the model cache): every model is a target in turn,
  the others but its complementary partner are its shadow models (as
  :func:`mcmia_helpers.zoo.attack_zoo` does). LiRA with per-example *means* or *medians*
  (``centre``), with the pooled within-example variance of the package before issue 25 or the
  reference's global variance (the spread of all IN statistics; ``variance``), online and
  offline, the offline test one-sided (ours, the paper's) or two-sided (the reference code's);
  RMIA online and offline (:mod:`mcmia_helpers.attacks.rmia`);
* **views** (``--flip-models`` LeNet-5 models trained *with* random crop and flip on halves of a
  ``--flip-pool`` pool, batched, not cached): LiRA and RMIA queried with the image only or with
  the image and its mirror image, each view scored and the scores averaged (as
  tensorflow/privacy ``research/mi_lira_2021`` does for models trained with flips). LeNet-5
  never trains with flips in the book; here it does, so that the effect of mirrored queries is
  measured on a model that saw mirrored images.

Metrics are pooled over all (target, example) pairs: AUC and TPR at 1%, 0.1% and 0.01% FPR; a
TPR is given only where ``FPR x non-members >= 10`` (else ``null``, with the number of
non-members it would need).

Usage::

    python benchmarks/lira_variants.py                 # 16-model zoo, 16 flip-trained models
    python benchmarks/lira_variants.py --models 8 --flip-models 8 --flip-epochs 10

Results go to ``benchmarks/results/lira_variants.json``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mcmia_helpers import metrics
from mcmia_helpers.attacks.lira import lira_scores
from mcmia_helpers.attacks.rmia import RMIA_GAMMA, rmia_scores, rmia_signal, tune_offline_a
from mcmia_helpers.attacks.scores import logit_confidence
from mcmia_helpers.data import load_dataset
from mcmia_helpers.io import atomic_write_json
from mcmia_helpers.models import build_model
from mcmia_helpers.shadow import predict_logits_many, train_models_batched
from mcmia_helpers.training import TrainConfig
from mcmia_helpers.zoo import ZooSpec, prepare_zoo, train_zoo
from mcmia_helpers.zoo.membership import membership_matrix, model_seed, partner

RESULTS = Path(__file__).resolve().parent / "results" / "lira_variants.json"
FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001, "tpr_at_0_01pct_fpr": 0.0001}


def pooled(scores: np.ndarray, membership: np.ndarray) -> dict:
    """Pooled AUC and TPRs at low FPR; a TPR only where the non-members resolve it."""
    labels, s = membership.astype(np.int64).ravel(), scores.ravel()
    n_neg = int((labels == 0).sum())
    out: dict = {"auc": round(metrics.auc(labels, s), 4), "n_nonmembers": n_neg}
    for key, fpr in FPRS.items():
        if fpr * n_neg >= 10:
            out[key] = round(metrics.tpr_at_fpr(labels, s, fpr), 4)
        else:
            out[key] = None
            out[key + "_needs_nonmembers"] = int(np.ceil(10 / fpr))
    return out


def leave_one_out(n: int, i: int) -> list[int]:
    return [j for j in range(n) if j not in (i, partner(i))]


def lira_variants(stats: torch.Tensor, membership: torch.Tensor) -> dict:
    """Every LiRA variant on statistics ``(N, P[, V])``, each model a target in turn."""
    n = stats.shape[0]
    out = {}
    for centre in ("mean", "median"):
        for variance in ("pooled", "reference"):
            for online, tests in ((True, ("-",)), (False, ("one-sided", "two-sided"))):
                for test in tests:
                    opts = {"centre": centre, "variance": variance}
                    if not online:
                        opts["offline_test"] = test
                    s = np.stack([lira_scores(stats[i], stats[o], membership[o], online, True, **opts)
                                  for i in range(n) for o in [leave_one_out(n, i)]])
                    name = (f"lira_{'online' if online else 'offline'}, {centre}, {variance} variance"
                            + ("" if online else f", {test}"))
                    out[name] = pooled(s, membership.numpy())
    return out


def rmia_variants(signal: torch.Tensor, membership: torch.Tensor) -> dict:
    """RMIA online and offline on signals ``(N, P[, V])``; population: the other pool examples."""
    n, p = signal.shape[:2]
    self_z = np.arange(p)
    out, a_used = {}, []
    for online in (True, False):
        rows = []
        for i in range(n):
            o = leave_one_out(n, i)
            ref, ref_in = signal[o], membership[o]
            a = 0.0
            if not online:
                a, _ = tune_offline_a(ref, ref_in, ref, ref_in, gamma=RMIA_GAMMA, z_of_x=self_z)
                a_used.append(a)
            rows.append(rmia_scores(signal[i], ref, ref_in, signal[i], ref, ref_in, online=online,
                                    a=a, gamma=RMIA_GAMMA, z_of_x=self_z))
        out[f"rmia_{'online' if online else 'offline'}"] = pooled(np.stack(rows), membership.numpy())
    out["rmia_offline"]["a_tuned_per_target"] = a_used
    return out


def zoo_part(n_models: int, dataset: str) -> dict:
    setup = prepare_zoo(ZooSpec("lenet5", dataset, scale="ci", n_models=n_models))
    start = time.perf_counter()
    zoo = train_zoo(setup, "none", {}, n_models)
    trained = time.perf_counter() - start
    labels = zoo.labels.expand(n_models, -1)
    stats = logit_confidence(zoo.logits, labels)
    signal = rmia_signal(zoo.logits, labels)
    start = time.perf_counter()
    results = {**lira_variants(stats, zoo.membership), **rmia_variants(signal, zoo.membership)}
    return {"what": f"ci dense zoo: {n_models} LeNet-5 models, pool {setup.zoo_pool.size} "
                    f"({int(setup.zoo_pool.canary.sum())} canaries), {setup.ctx.train_config.epochs} epochs, "
                    f"{setup.ctx.bundle.describe()}",
            "shadow_models_per_target": n_models - 2, "train_or_load_s": round(trained, 1),
            "score_s": round(time.perf_counter() - start, 1), "results": results}


def views_part(n_models: int, pool: int, epochs: int, dataset: str, seed: int = 0) -> dict:
    bundle = load_dataset(dataset, standin="fashion-mnist", download=False)
    gen = torch.Generator().manual_seed(seed)
    pool_idx = torch.randperm(len(bundle), generator=gen)[:pool]
    membership = membership_matrix(n_models, pool, seed)
    config = TrainConfig(epochs=epochs, batch_size=32, augment=True, seed=seed)
    seeds = [model_seed(seed, i) for i in range(n_models)]

    def builder():
        return build_model("lenet5", num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                           image_size=bundle.image_size)

    start = time.perf_counter()
    models = train_models_batched(builder, n_models, bundle, [pool_idx[m] for m in membership],
                                  config, seeds, device=torch.device("cpu"))
    trained = time.perf_counter() - start
    mirrored = replace(bundle, images=bundle.images[pool_idx].flip(-1).contiguous(),
                       labels=bundle.labels[pool_idx])
    logits = torch.stack([predict_logits_many(models, bundle, pool_idx),
                          predict_logits_many(models, mirrored, torch.arange(pool))], dim=2)  # (N, P, V, C)
    labels = bundle.labels[pool_idx].expand(n_models, 2, -1)
    stats = logit_confidence(logits.transpose(1, 2), labels).transpose(1, 2)  # (N, P, V)
    signal = rmia_signal(logits.transpose(1, 2), labels).transpose(1, 2)
    results = {}
    for views, sl in (("one view", slice(0, 1)), ("image + mirror", slice(0, 2))):
        for online in (True, False):
            s = np.stack([lira_scores(stats[i, :, sl], stats[o][:, :, sl], membership[o], online, True)
                          for i in range(n_models) for o in [leave_one_out(n_models, i)]])
            results[f"lira_{'online' if online else 'offline'}, {views}"] = pooled(s, membership.numpy())
        for name, r in rmia_variants(signal[:, :, sl], membership).items():
            results[f"{name}, {views}"] = r
    return {"what": f"{n_models} LeNet-5 models trained with random crop + flip, {epochs} epochs, "
                    f"on halves of a {pool}-example pool; {bundle.describe()}",
            "shadow_models_per_target": n_models - 2, "train_s": round(trained, 1),
            "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--flip-models", type=int, default=16)
    parser.add_argument("--flip-pool", type=int, default=1000)
    parser.add_argument("--flip-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = {"benchmark": "lira_variants", "issue": 25, "python": sys.version.split()[0],
              "torch": torch.__version__, "machine": platform.machine(), "threads": args.threads,
              "zoo": zoo_part(args.models, args.dataset),
              "views": views_part(args.flip_models, args.flip_pool, args.flip_epochs, args.dataset)}
    for part in ("zoo", "views"):
        print(record[part]["what"])
        for name, r in record[part]["results"].items():
            tprs = ", ".join(f"TPR@{fpr:.2%}".replace(".00%", "%") + " "
                             + ("-" if r[k] is None else f"{r[k]:.4f}") for k, fpr in FPRS.items())
            print(f"  {name:55s} AUC {r['auc']:.4f}  {tprs}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
