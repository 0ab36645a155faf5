"""DP-SGD with Opacus: the defence with a guarantee (chapter 4, differential privacy).

DP-SGD (Abadi et al. 2016) changes three things in SGD: every example's gradient is clipped to
norm ``max_grad_norm``; Gaussian noise of standard deviation ``noise_multiplier *
max_grad_norm`` is added to the sum of a batch's clipped gradients; batches are drawn by
Poisson sampling (every member joins a batch with probability ``sample_rate``), so that an
accountant can bound what the whole run reveals about any one member by ``(epsilon, delta)``.
That bound holds for *every* membership inference attack, tried or not, unlike the empirical
defences (pruning, the Min-Max game), which are only measured against the attacks we run.

:func:`train_dp` trains a model on ``bundle[indices]`` for a target epsilon with Opacus'
``PrivacyEngine``. As in ``make_private_with_epsilon``, the accountant (RDP by default; Opacus'
PRV accountant has known numerical failures) fixes the noise multiplier that spends between
``target_epsilon - 0.01`` and ``target_epsilon`` over the planned steps; for RDP we find it with
a faster search (:func:`noise_multiplier_for`, Opacus' own RDP analysis, five evaluations instead
of fifteen: seconds saved per run on a small CPU) and hand it to ``make_private``.
``BatchMemoryManager`` splits large logical (Poisson) batches into physical batches that fit
the device. The model must be in the DP-compatible form of
:func:`~mcmia_helpers.models.build_model` (GroupNorm instead of BatchNorm, which mixes the
examples of a batch; no in-place operations, which break Opacus' hooks); it is checked with
Opacus' ``ModuleValidator.validate``, never silently changed with ``ModuleValidator.fix``.

:func:`train_dp_target` is the ``dp`` defence of :data:`~mcmia_helpers.defences.registry.DEFENSES`
(parameters ``epsilon``, ``delta``, ``max_grad_norm``, checked by :func:`validate_dp_params`).

Choices stated once:

* ``delta`` defaults to ``10**-k``, the largest power of ten at or below ``1 / (10 n)`` for
  ``n`` members (500 members: ``1e-4``), so ``delta < 1/n`` as DP requires.
* Training under DP uses :func:`dp_train_config`: plain SGD with momentum 0.9 at learning rate
  :data:`DP_LR` and logical batch :data:`DP_BATCH_SIZE` (clipped, noised gradients are small and
  noisy: a larger batch raises the signal-to-noise ratio, a larger step size makes up for the
  clipping), no weight decay, no augmentation (augmented copies of a member would need
  augmentation multiplicity), float32 (no autocast), and the base configuration's epochs.
  Chosen on Fashion-MNIST, LeNet-5, 500 members, 20 epochs, three member sets: test accuracy
  0.58-0.62 at epsilon 8, 0.57-0.61 at 4, 0.52-0.55 at 2 (two sets; non-private: 0.72); SGD at
  learning rate 0.5, Adam at 1e-3 and batches of 64 were clearly worse.
* Epsilon is from the RDP accountant over the orders :data:`RDP_ALPHAS` (a wider, coarser grid
  than Opacus' default: epsilon differs by under 1%).
* Each epoch's sampling and noise derive from ``(seed, epoch)``; with ``checkpoint_path`` every
  epoch is saved with the optimiser and accountant state, and a killed run resumes from its
  last finished epoch with the same weights and the same epsilon.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mcmia_helpers.context import TargetContext
from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.errors import UserError
from mcmia_helpers.io import atomic_torch_save
from mcmia_helpers.defences.registry import canonical_params
from mcmia_helpers.training import (TrainConfig, epoch_seed, get_device, legacy_spellings,
                                    load_epoch_checkpoint, load_or_train, make_optimizer,
                                    make_scheduler)

#: Accountants accepted by :func:`train_dp` (``rdp`` is the default and the recommended one).
ACCOUNTANTS = ("rdp", "prv")

#: RDP orders over which epsilon is minimised: Opacus' default range (1.1 to 63) widened to
#: 1024, so the optimum is never at the edge of the grid for the budgets used here, and with
#: fractional orders every 0.25 to 4 and every 0.5 to 11 instead of every 0.1: fractional
#: orders cost a slow series each, and the coarser grid changes epsilon by under 1%.
RDP_ALPHAS: tuple[float, ...] = (
    (1.1, 1.25, 1.5, 1.75) + tuple(2 + x / 4 for x in range(8)) + tuple(4 + x / 2 for x in range(14))
    + tuple(range(11, 64)) + (64, 80, 96, 128, 192, 256, 512, 1024))
_MAX_SIGMA = 1e6  # as Opacus: more noise than this means the budget is too small to train
_MIN_SIGMA = 1e-2  # less noise than this is no longer worth searching for

#: Defaults of the ``dp`` defence's parameters (``--epsilon``, ``--delta``, ``--max-grad-norm``).
DEFAULT_EPSILON = 4.0
DEFAULT_MAX_GRAD_NORM = 1.0

#: Training under DP-SGD (see :func:`dp_train_config`).
DP_OPTIMIZER = "sgd"
DP_LR = 0.1
DP_MOMENTUM = 0.9
DP_BATCH_SIZE = 256


class MaskKeeper(Protocol):
    """Anything with ``after_step(model)``, e.g. a pruning callback that re-zeroes pruned weights."""

    def after_step(self, model: nn.Module) -> None: ...


# --------------------------------------------------------------------------- parameters


def default_delta(n: int) -> float:
    """``10**-k``, the largest power of ten at or below ``1 / (10 n)``: safely below ``1/n``."""
    if n < 1:
        raise UserError("cannot train on an empty set: check the split sizes")
    k = 0
    while 10**k < 10 * n:
        k += 1
    return float(10.0**-k)


def _show(value: Any) -> str:
    """A number as the user would type it (``-1``, not ``-1.0``); anything else as ``repr``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return repr(value)


def check_epsilon(epsilon: Any) -> float:
    """``epsilon`` as a positive finite float, or a one-line :class:`UserError`."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise UserError(f"epsilon {epsilon!r} is not a number: use e.g. --epsilon 4") from None
    if not math.isfinite(value):
        raise UserError(f"epsilon {_show(epsilon)} must be a finite number: use e.g. --epsilon 4")
    if value <= 0:
        raise UserError(f"epsilon {_show(epsilon)} must be > 0: use e.g. --epsilon 4")
    return value


def check_delta(delta: Any, n: int | None) -> float:
    """``delta`` as a float in ``(0, 1/n)`` for ``n`` members, or a one-line :class:`UserError`.

    With ``n=None`` (member count not known yet, e.g. on the command line) only ``(0, 1)``.
    """
    example = f"{default_delta(n):g}" if n else "1e-5"
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise UserError(f"delta {delta!r} is not a number: use e.g. --delta {example}") from None
    bound = 1 / n if n else 1.0
    if not 0 < value < bound:
        where = f"(0, 1/n) = (0, {bound:.3g}) for {n} members" if n else "(0, 1/n) for n members"
        raise UserError(f"delta {_show(delta)} must be in {where}: use e.g. --delta {example}")
    return value


def check_max_grad_norm(max_grad_norm: Any) -> float:
    """The clipping norm as a positive finite float, or a one-line :class:`UserError`."""
    try:
        value = float(max_grad_norm)
    except (TypeError, ValueError):
        raise UserError(f"max_grad_norm {max_grad_norm!r} is not a number: use e.g. "
                        "--max-grad-norm 1.0") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"max_grad_norm {_show(max_grad_norm)} must be a finite number > 0: use "
                        "e.g. --max-grad-norm 1.0")
    return value


def validate_dp_params(params: dict[str, Any], n_members: int | None = None) -> dict[str, Any]:
    """Check the ``dp`` defence's parameters; return them with defaults filled in.

    Keys: ``epsilon`` (default 4), ``delta`` (``None``: :func:`default_delta` of the member
    count), ``max_grad_norm`` (default 1). ``delta`` is checked against ``1/n_members`` when the
    member count is known. Unknown keys are left alone (other defences may share ``params``).
    """
    out = dict(params)
    out["epsilon"] = check_epsilon(params.get("epsilon", DEFAULT_EPSILON))
    out["max_grad_norm"] = check_max_grad_norm(params.get("max_grad_norm", DEFAULT_MAX_GRAD_NORM))
    delta = params.get("delta")
    out["delta"] = None if delta is None else check_delta(delta, n_members)
    return out


def check_dp_compatible(model: nn.Module) -> None:
    """Raise a one-line :class:`UserError` unless Opacus can compute per-example gradients."""
    from opacus.validators import ModuleValidator

    problems = [str(e).split("\n")[0] for e in ModuleValidator.validate(model, strict=False)]
    if any(getattr(m, "inplace", False) for m in model.modules()):
        problems.append("in-place operations")
    if any(name.endswith("_orig") for name, _ in model.named_parameters()):
        problems.append("torch.nn.utils.prune reparametrisation (call prune.remove and keep "
                        "the mask with mask_callback)")
    if problems:
        raise UserError(f"model is not DP-compatible ({'; '.join(sorted(set(problems)))}): "
                        "build it with build_model(..., dp_compatible=True)")


def dp_train_config(base: TrainConfig, *, batch_size: int | None = None,
                    lr: float | None = None) -> TrainConfig:
    """The training configuration DP-SGD uses, derived from the non-private ``base``.

    Keeps ``base``'s epochs and seed; SGD with momentum :data:`DP_MOMENTUM` at ``lr`` (default
    :data:`DP_LR`), logical batch ``batch_size`` (default :data:`DP_BATCH_SIZE`), no weight
    decay, no schedule, no augmentation, no autocast.
    """
    return replace(base, optimizer=DP_OPTIMIZER, lr=DP_LR if lr is None else lr,
                   momentum=DP_MOMENTUM, batch_size=batch_size or DP_BATCH_SIZE,
                   weight_decay=0.0, schedule="none", augment=False, amp=False)


# --------------------------------------------------------------------------- training


@contextmanager
def _quiet_opacus(search: bool = False) -> Iterator[None]:
    """Silence the two warnings every Opacus run emits (nothing else).

    * ``PrivacyEngine`` warns that ``secure_mode`` is off: we use PyTorch's pseudo-random
      generator for sampling and noise, as every research run does (the book says so);
    * PyTorch warns that a full backward hook fires without input gradients: this is how
      Opacus' hooks see the first layer, whose input (the images) needs no gradient.

    With ``search=True`` also the RDP accountant's "optimal order is the largest/smallest
    alpha" warning, which the noise search triggers at its far brackets (noise 20, 40, ...),
    never at the noise it returns.
    """
    with warnings.catch_warnings():
        if search:
            warnings.filterwarnings("ignore", message=r"Optimal order is the (largest|smallest) "
                                    r"alpha", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Secure RNG turned off", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Full backward hook is firing when gradients "
                                r"are computed with respect to module outputs", category=UserWarning)
        yield


def _rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` sampled Gaussian steps: Opacus' RDP analysis over :data:`RDP_ALPHAS`."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = np.asarray(_rdp_per_step(float(noise_multiplier), float(sample_rate))) * steps
    with _quiet_opacus(search=True):
        eps, _ = get_privacy_spent(orders=list(RDP_ALPHAS), rdp=rdp, delta=delta)
    return max(float(eps), 0.0)  # the RDP conversion goes below 0 for huge noise: (0, delta)-DP


@functools.lru_cache(maxsize=256)
def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                         accountant: str = "rdp", tolerance: float = 0.01) -> float:
    """The noise multiplier that spends between ``target_epsilon - tolerance`` and
    ``target_epsilon`` in ``steps`` steps at ``sample_rate``.

    The contract of Opacus' ``get_noise_multiplier`` (what ``make_private_with_epsilon`` calls),
    found faster for RDP: epsilon falls smoothly with the noise, almost a straight line in
    log-log, so a bracketed false-position search (Illinois) on ``log sigma`` needs about five
    accountant evaluations where bisection needs fifteen, each up to a second on a small CPU.
    Opacus' own search is used for other accountants. Memoised.
    """
    if steps < 1:
        raise UserError(f"cannot calibrate noise for {steps} steps: train for at least one epoch")

    def budget_too_low() -> UserError:
        return UserError(f"epsilon {target_epsilon} is too small for {steps} steps at sample "
                         f"rate {sample_rate:.3g}: use a larger --epsilon")

    if accountant != "rdp":
        from opacus.accountants.utils import get_noise_multiplier

        try:
            with _quiet_opacus(search=True):
                return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                                  sample_rate=sample_rate, steps=steps,
                                                  accountant=accountant, epsilon_tolerance=tolerance))
        except ValueError as exc:
            if "budget is too low" in str(exc):
                raise budget_too_low() from None
            raise

    def gap(log_sigma: float) -> float:  # > 0: too little noise; < 0: within budget
        eps = _rdp_epsilon(math.exp(log_sigma), sample_rate, steps, delta)
        return math.log(max(eps, 1e-12)) - math.log(target_epsilon)

    lo, hi = 0.0, 0.0  # log sigma; bracket [lo, hi] with gap(lo) > 0 >= gap(hi)
    g_hi = gap(hi)
    while g_hi > 0:  # too little noise at sigma = 1: double until within budget
        lo, hi = hi, hi + math.log(2.0)
        if hi > math.log(_MAX_SIGMA):
            raise budget_too_low()
        g_hi = gap(hi)
    g_lo = gap(lo) if lo != hi else g_hi
    while g_lo <= 0:  # within budget at sigma = 1: halve until over budget
        hi, g_hi = lo, g_lo
        if hi < math.log(_MIN_SIGMA):
            return float(math.exp(hi))  # a budget so large that almost no noise spends it
        lo -= math.log(2.0)
        g_lo = gap(lo)
    side = 0
    for _ in range(100):
        if target_epsilon * (1 - math.exp(g_hi)) <= tolerance:  # eps(hi) in [target - tol, target]
            break
        mid = hi - g_hi * (hi - lo) / (g_hi - g_lo)  # false position on the secant
        g_mid = gap(mid)
        if g_mid > 0:
            lo, g_lo = mid, g_mid
            if side == -1:
                g_hi /= 2  # Illinois: keep the stale end from stalling the search
            side = -1
        else:
            hi, g_hi = mid, g_mid
            if side == 1:
                g_lo /= 2
            side = 1
    return float(math.exp(hi))


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """Renyi DP of one sampled Gaussian step at each order of :data:`RDP_ALPHAS`."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return tuple(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                             orders=list(RDP_ALPHAS)))


def _spent(engine, delta: float) -> float:
    """Epsilon spent so far, as the engine's accountant computes it.

    For RDP this is ``RDPAccountant.get_epsilon`` (over :data:`RDP_ALPHAS`) with the per-step
    RDP memoised: RDP adds up over steps, so the per-epoch value costs no new series sums.
    """
    accountant = engine.accountant
    if accountant.mechanism() != "rdp":
        with _quiet_opacus():
            return float(accountant.get_epsilon(delta=delta))
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not accountant.history:
        return 0.0
    rdp = sum(np.asarray(_rdp_per_step(float(sigma), float(q))) * steps
              for sigma, q, steps in accountant.history)
    with _quiet_opacus():
        eps, _ = get_privacy_spent(orders=list(RDP_ALPHAS), rdp=rdp, delta=delta)
    return max(float(eps), 0.0)


def train_dp(model: nn.Module, bundle: DatasetBundle, indices: torch.Tensor, config: TrainConfig,
             *, target_epsilon: float, delta: float | None = None, max_grad_norm: float = 1.0,
             accountant: str = "rdp", max_physical_batch_size: int = 128,
             dp_batch_size: int | None = None, device: torch.device | None = None,
             progress: bool = False, mask_callback: MaskKeeper | None = None,
             checkpoint_path: str | os.PathLike | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` with DP-SGD on ``bundle[indices]`` to spend at most ``target_epsilon``.

    ``config`` gives epochs, optimiser, learning rate, momentum, weight decay, schedule and seed
    as they are (see :func:`dp_train_config` for the values DP-SGD wants); the logical batch is
    ``dp_batch_size`` or ``config.batch_size`` (the *expected* size: batches are Poisson
    sampled with ``sample_rate = 1 / ceil(n / batch)``), processed in physical batches of at
    most ``max_physical_batch_size``. ``delta`` defaults to :func:`default_delta` of ``n``.

    ``mask_callback.after_step(model)`` runs after every optimiser step (for DP fine-tuning of
    a pruned model: masked weights receive noise like any other and are re-zeroed after each DP
    step; re-zeroing is post-processing and costs no privacy). The mask and the starting weights
    are not covered by epsilon: if they came from non-private training on the same members, the
    guarantee describes only this fine-tuning.

    Returns the trained model, unwrapped (a plain module with its usual ``state_dict`` keys;
    trained in place), and a dict with ``epsilon`` (spent, from the accountant),
    ``target_epsilon``, ``delta``, ``noise_multiplier``, ``max_grad_norm``, ``accountant``,
    ``sample_rate``, ``batch_size`` and ``history`` (per epoch: ``epoch``, ``loss``, ``acc``,
    ``epsilon`` so far, ``delta``, ``noise_multiplier``, ``sample_rate``).
    """
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from tqdm.auto import tqdm

    indices = torch.as_tensor(indices, dtype=torch.long)
    n = len(indices)
    if n == 0:
        raise UserError("cannot train on an empty set: check the split sizes")
    target_epsilon = check_epsilon(target_epsilon)
    delta = default_delta(n) if delta is None else check_delta(delta, n)
    max_grad_norm = check_max_grad_norm(max_grad_norm)
    if accountant not in ACCOUNTANTS:
        raise UserError(f"unknown accountant '{accountant}': choose one of {', '.join(ACCOUNTANTS)}")
    batch_size = int(dp_batch_size or config.batch_size)
    if batch_size < 1 or max_physical_batch_size < 1:
        raise UserError(f"batch sizes must be positive (got {batch_size} and "
                        f"{max_physical_batch_size}): use e.g. 128")
    if config.epochs < 1:
        raise UserError(f"epochs must be at least 1 (got {config.epochs})")
    if config.augment:
        raise UserError("augmentation is not supported under DP-SGD here: use augment=False "
                        "(see dp_train_config)")
    check_dp_compatible(model)

    device = device or get_device()
    model.to(device)
    model.train()
    x, y = bundle.batch(indices)
    loader = DataLoader(TensorDataset(x, y), batch_size=min(batch_size, n), shuffle=False)
    optimizer = make_optimizer(model.parameters(), config)
    scheduler = make_scheduler(optimizer, config)

    sample_rate = 1 / len(loader)  # Opacus' rule: one expected batch per loader batch
    steps = config.epochs * int(1 / sample_rate)  # as many as Opacus' Poisson sampler draws
    noise_multiplier = noise_multiplier_for(target_epsilon, delta, sample_rate, steps, accountant)
    with _quiet_opacus():
        engine = PrivacyEngine(accountant=accountant)
        dp_model, dp_optimizer, dp_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, poisson_sampling=True)

    history: list[dict[str, float]] = []
    start_epoch = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state, history, start_epoch = load_epoch_checkpoint(checkpoint_path, model, optimizer,
                                                            scheduler, device)
        engine.accountant.load_state_dict(state["accountant"])
        if mask_callback is not None and hasattr(mask_callback, "load_state_dict"):
            mask_callback.load_state_dict(state.get("callback", {}))

    try:
        bar = tqdm(range(start_epoch, config.epochs), disable=not progress, desc="DP epochs",
                   leave=False)
        for epoch in bar:
            torch.manual_seed(epoch_seed(config.seed, epoch))  # Poisson sampling and noise
            total_loss, correct, seen = 0.0, 0, 0
            with _quiet_opacus(), BatchMemoryManager(
                    data_loader=dp_loader, max_physical_batch_size=max_physical_batch_size,
                    optimizer=dp_optimizer) as physical_loader:
                for xb, yb in physical_loader:
                    xb, yb = xb.to(device), yb.to(device)
                    dp_optimizer.zero_grad(set_to_none=True)
                    logits = dp_model(xb)
                    loss = F.cross_entropy(logits, yb)
                    loss.backward()
                    dp_optimizer.step()
                    if mask_callback is not None and not dp_optimizer._is_last_step_skipped:
                        mask_callback.after_step(model)
                    if len(yb):
                        total_loss += float(loss.detach()) * len(yb)
                        correct += int((logits.detach().argmax(1) == yb).sum())
                        seen += len(yb)
            if scheduler is not None:
                scheduler.step()
            row = {"epoch": epoch, "loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1),
                   "epsilon": _spent(engine, delta), "delta": delta,
                   "noise_multiplier": noise_multiplier, "sample_rate": sample_rate}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['acc']:.3f}",
                            eps=f"{row['epsilon']:.2f}")
            if checkpoint_path is not None:
                callback_state = (mask_callback.state_dict()
                                  if hasattr(mask_callback, "state_dict") else {})
                atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict() if scheduler else {},
                                   "accountant": engine.accountant.state_dict(),
                                   "callback": callback_state, "history": history,
                                   "epoch": epoch}, checkpoint_path)
    finally:
        dp_model.cleanup()  # remove Opacus' hooks and per-sample attributes: a plain module again

    info = privacy_info(history, target_epsilon=target_epsilon, delta=delta,
                        max_grad_norm=max_grad_norm, accountant=accountant,
                        noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    info["batch_size"] = batch_size
    return model, info


def privacy_info(history: list[dict[str, float]], *, target_epsilon: float, delta: float,
                 max_grad_norm: float, accountant: str, noise_multiplier: float | None = None,
                 sample_rate: float | None = None) -> dict[str, Any]:
    """The privacy summary of a DP run from its history (so a cached model reports it too)."""
    last = history[-1] if history else {}
    return {"epsilon": float(last.get("epsilon", 0.0)), "target_epsilon": target_epsilon,
            "delta": float(last.get("delta", delta)),
            "noise_multiplier": float(last.get("noise_multiplier", noise_multiplier or 0.0)),
            "max_grad_norm": max_grad_norm, "accountant": accountant,
            "sample_rate": float(last.get("sample_rate", sample_rate or 0.0)),
            "history": history}


# --------------------------------------------------------------------------- the defence


def train_dp_target(ctx: TargetContext) -> tuple[nn.Module, dict[str, Any]]:
    """The ``dp`` defence: the target trained with DP-SGD (``ctx`` is a ``TargetContext``).

    Parameters from ``ctx.spec.params``: ``epsilon`` (default 4), ``delta`` (default
    :func:`default_delta` of the member count), ``max_grad_norm`` (default 1). Trains with
    :func:`dp_train_config` of the experiment's configuration, cached by
    :func:`~mcmia_helpers.training.load_or_train`; every epoch is checkpointed (model, optimiser,
    accountant), so a killed run resumes where it stopped. The extra record fields are the
    privacy summary of :func:`train_dp` (``epsilon`` spent, ``delta``, ``noise_multiplier``, ...)
    and ``train_config``, the configuration that actually trained the target.
    """
    n = len(ctx.split.members)
    params = validate_dp_params(ctx.spec.params, n)
    delta = params["delta"] if params["delta"] is not None else default_delta(n)
    config = dp_train_config(ctx.train_config)
    dp = {"epsilon": params["epsilon"], "delta": delta, "max_grad_norm": params["max_grad_norm"],
          "accountant": "rdp", "batch_size": config.batch_size}

    def build() -> nn.Module:
        return ctx.build(dp_compatible=True)

    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        _, info = train_dp(model, ctx.bundle, ctx.split.members, config,
                           target_epsilon=dp["epsilon"], delta=delta,
                           max_grad_norm=dp["max_grad_norm"], accountant=dp["accountant"],
                           device=ctx.device, progress=ctx.progress, checkpoint_path=checkpoint)
        return info["history"]

    # Keyed on the canonical parameters (every spelling of the same run is one model); models
    # cached under an older spelling (``{"epsilon": 4}``, ``{}``) are found through aliases.
    canonical = canonical_params("dp", ctx.spec.params)
    key = replace(ctx, spec=replace(ctx.spec, params=canonical)).cache_config(
        dp=dp, dp_train=config.to_dict())
    defaults = {"epsilon": DEFAULT_EPSILON, "max_grad_norm": DEFAULT_MAX_GRAD_NORM}
    aliases = [{**key, "params": spelling} for spelling in legacy_spellings(canonical, defaults)]
    model, cached = load_or_train(key, build, train, aliases=aliases)
    info = privacy_info(cached["history"], target_epsilon=dp["epsilon"], delta=delta,
                        max_grad_norm=dp["max_grad_norm"], accountant=dp["accountant"])
    info["cached"] = cached["cached"]
    info["train_config"] = config.to_dict()
    return model, info
