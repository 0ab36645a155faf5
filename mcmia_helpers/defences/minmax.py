"""The Min-Max game (adversarial regularisation) and its combination with ADMM pruning.

Introduced in the Min-Max chapter. Nasr, Shokri and Houmansadr (CCS 2018), "Machine Learning
with Membership Privacy using Adversarial Regularization", train the classifier ``f`` against
an inference model ``h`` that tries to tell the training set ``D`` (members) from a reference
set ``D'`` drawn from the same distribution::

    min_f  [ L_D(f) + lam * max_h G(f, h) ],
    G(f, h) = E_D[ log h(f(x), y) ] + E_D'[ log(1 - h(f(x'), y')) ].

Training alternates. For each member batch, ``k`` steps improve ``h`` (binary cross-entropy on
the member batch vs a sampled reference batch of the same size, both as ``f``'s softmax
posteriors with one-hot labels, ``f`` frozen); then one step of ``f`` on its cross-entropy plus
``lam * mean log h(f(x), y)`` over the member batch (``h`` frozen): the term ``f`` minimises
pushes members towards what ``h`` takes for non-members. ``h`` is the Nasr et al. inference
network of the attacks chapter (:class:`~mcmia_helpers.models.InferenceModel`).

:class:`MinMaxCallback` is the game as a :class:`~mcmia_helpers.training.TrainingCallback`, so
it runs through :func:`~mcmia_helpers.training.fit` unchanged, and through both ADMM phases of
:func:`~mcmia_helpers.defences.pruning.prune_model` (the paper's "MCMIA-Pruning & Min-Max": the
adversarial term is part of the ADMM W-step and of the masked retraining).

Choices where the paper is silent: ``h`` trains with Adam (lr ``1e-3``) on posteriors from
``f`` in evaluation mode (what an attacker queries; it also keeps BatchNorm statistics free of
reference data), a fresh reference batch per ``h`` step; the gain ``f`` sees is computed on
the training-mode logits of the member batch, with gradients flowing into ``f`` only. The
authors' published code differs from the paper's Algorithm 1 in two ways we do not copy: its
classifier loss adds ``lam * (mean h - 1/2)`` instead of the log-gain, and it trains ``h`` on
dozens of batches per classifier step (here ``k_steps``, default 1, sets that ratio).

What to expect at small scale: with few members ``h`` is a weak attacker (its accuracy on
its own training batches stays near 0.55-0.6 at the ``ci`` scale) and the game mostly acts as
a noisy regulariser: it lowers member confidence and test accuracy together. It visibly
shrinks a fresh attack's AUC once the undefended model overfits (see ``tests/test_defences``).
"""

from __future__ import annotations

import numbers
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mcmia_helpers.context import TargetContext
from mcmia_helpers.data import DatasetBundle, MIASplit
from mcmia_helpers.defences.pruning import PARAM_DEFAULTS as PRUNING_DEFAULTS
from mcmia_helpers.defences.pruning import train_pruned
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import InferenceModel
from mcmia_helpers.training import TrainingCallback, fit, load_or_train

__all__ = ["MINMAX_DEFAULTS", "MinMaxCallback", "validate_minmax_params", "check_reference_set",
           "make_minmax_callback", "train_minmax", "train_prune_minmax"]

#: Bump when a change to the game makes cached Min-Max models wrong.
MINMAX_VERSION = 1

#: The ``params`` of the ``minmax`` defence, with their defaults (``lam = 3`` is the value in
#: Nasr et al.'s published Purchase-100 code; one ``h`` step per classifier step is the
#: cheapest game).
MINMAX_DEFAULTS: dict[str, Any] = {"lam": 3.0, "k_steps": 1}

#: How the defender's inference model ``h`` is built and trained (part of the cache key).
H_SETTINGS: dict[str, Any] = {"model": "nasr2018", "hidden": 64, "optimizer": "adam", "lr": 1e-3}


# --------------------------------------------------------------------------- parameters


def validate_minmax_params(params: Mapping[str, Any], *,
                           other_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{lam, k_steps}`` from ``params`` with defaults filled in, or a one-line :class:`UserError`.

    ``lam`` (>= 0) weighs the inference model's gain against the classification loss;
    ``k_steps`` (>= 1) is how many ``h`` updates precede each step of the classifier. Keys in
    ``other_keys`` belong to another part of a combined defence and are left out; ``None``
    values mean "not given".
    """
    unknown = sorted(set(params) - set(MINMAX_DEFAULTS) - set(other_keys))
    if unknown:
        raise UserError(f"unknown Min-Max parameter(s) {unknown}: use "
                        f"{sorted(set(MINMAX_DEFAULTS) | set(other_keys))}")
    out = {**MINMAX_DEFAULTS, **{k: v for k, v in params.items()
                                 if k in MINMAX_DEFAULTS and v is not None}}
    lam = out["lam"]
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not lam >= 0 \
            or lam == float("inf"):
        raise UserError(f"lam {lam!r} is not a finite number >= 0: use e.g. --lam 3")
    k = out["k_steps"]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise UserError(f"k_steps {k!r} is not an integer >= 1: use e.g. --k-steps 1")
    return {"lam": float(lam), "k_steps": int(k)}


def check_reference_set(split: MIASplit) -> None:
    """Fail unless the reference set is non-empty and disjoint from members and non-members.

    The reference set stands for "data the model was not trained on" in the game; if it
    shared examples with the members, ``h`` would be taught to call members non-members, and
    if it shared examples with the evaluation non-members, the defender would have trained on
    the very examples the attack is scored on. Raises :class:`UserError` naming the overlap,
    then runs the split's own pairwise check (``AssertionError`` on any other overlap).
    """
    reference = set(split.reference.tolist())
    if not reference:
        raise UserError("the Min-Max reference set is empty: draw the split with a reference part "
                        "(data.make_split with scales.split_sizes)")
    for name in ("members", "nonmembers"):
        shared = reference & set(getattr(split, name).tolist())
        if shared:
            raise UserError(f"the Min-Max reference set shares {len(shared)} example(s) with the "
                            f"{name}: draw the split with data.make_split, whose parts are disjoint")
    split.verify_disjoint()


# --------------------------------------------------------------------------- the game


class MinMaxCallback(TrainingCallback):
    """The Min-Max game of Nasr et al. (2018) as a training callback (see the module doc).

    ``extra_loss`` first runs ``k_steps`` updates of ``inference_model`` (``h``) on the current
    member batch against reference batches of the same size sampled from
    ``reference_indices``, then returns ``lam * mean log h(member)`` with gradients into the
    classifier only. ``epoch_end`` reports the epoch's means: ``gain`` (the objective ``h``
    maximises, ``(mean log h(member) + mean log(1 - h(reference))) / 2``; ``log 1/2 = -0.693``
    means ``h`` guesses), ``adv_gain`` (``mean log h(member)``, the term ``f`` minimises),
    ``h_acc`` (``h``'s accuracy on its balanced training batches) and ``ce`` (the classifier's
    cross-entropy alone). ``state_dict`` holds ``h``'s weights, its optimiser and the sampler,
    so a resumed run continues the game exactly.
    """

    def __init__(self, inference_model: nn.Module, bundle: DatasetBundle,
                 reference_indices: torch.Tensor, lam: float, k_steps: int = 1,
                 lr: float = 1e-3, seed: int = 0) -> None:
        checked = validate_minmax_params({"lam": lam, "k_steps": k_steps})
        self.lam, self.k_steps = checked["lam"], checked["k_steps"]
        self.h = inference_model
        self.bundle = bundle
        self.reference = torch.as_tensor(reference_indices, dtype=torch.long)
        if self.reference.numel() == 0:
            raise UserError("the Min-Max reference set is empty: give reference_indices")
        self.num_classes = bundle.num_classes
        self.optimizer = torch.optim.Adam(self.h.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.device: torch.device | None = None
        self._reset_sums()

    # ---------------------------------------------------------------- helpers

    def _reset_sums(self) -> None:
        self._sums = {"gain": 0.0, "h_correct": 0.0, "h_seen": 0, "h_steps": 0,
                      "adv_gain": 0.0, "ce": 0.0, "f_steps": 0}

    def _to(self, device: torch.device) -> None:
        """Move ``h`` and its optimiser's moments to ``device`` (once, on first use)."""
        if self.device == device:
            return
        self.h.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":  # Adam keeps ``step`` on the CPU
                    state[key] = value.to(device)
        self.device = device

    def _sample_reference(self, n: int) -> torch.Tensor:
        """``n`` reference indices: random permutations of the reference set, end to end."""
        m = self.reference.numel()
        perms = [torch.randperm(m, generator=self.generator) for _ in range(-(-n // m))]
        return self.reference[torch.cat(perms)[:n]]

    @torch.no_grad()
    def _posteriors(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``f``'s softmax posteriors for ``x`` in evaluation mode, as an attacker sees them."""
        was_training = model.training
        model.eval()
        probs = F.softmax(model(x).float(), dim=1)
        model.train(was_training)
        return probs

    def _onehot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).float()

    def _h_step(self, member: tuple[torch.Tensor, torch.Tensor],
                reference: tuple[torch.Tensor, torch.Tensor]) -> None:
        """One Adam step of ``h`` maximising its gain (minimising BCE) on detached inputs."""
        probs = torch.cat([member[0], reference[0]])
        onehot = torch.cat([member[1], reference[1]])
        target = torch.cat([torch.ones(len(member[0])), torch.zeros(len(reference[0]))]).to(probs.device)
        self.h.train()
        logits = self.h(probs, onehot).float().reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._sums["gain"] += -float(loss.detach())  # = (mean log h(m) + mean log(1-h(r))) / 2
        self._sums["h_correct"] += float(((logits.detach() > 0).float() == target).sum())
        self._sums["h_seen"] += len(target)
        self._sums["h_steps"] += 1

    # ---------------------------------------------------------------- hooks

    def train_h(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """``k_steps`` updates of ``h``: members ``(x, y)`` against fresh reference batches.

        ``f`` is only queried (no gradient), so nothing here leaves gradients in ``f``.
        """
        device = x.device
        self._to(device)
        n = len(y)
        member = (self._posteriors(model, x), self._onehot(y))
        # one forward of f over all k reference batches, then k steps of h
        xr, yr = self.bundle.batch(self._sample_reference(n * self.k_steps))
        ref_probs, ref_onehot = self._posteriors(model, xr.to(device)), self._onehot(yr.to(device))
        with torch.autocast(device_type=device.type, enabled=False):  # h trains in float32
            for step in range(self.k_steps):
                part = slice(step * n, (step + 1) * n)
                self._h_step(member, (ref_probs[part], ref_onehot[part]))

    def adversarial_gain(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``mean log h(softmax(logits), y)`` with gradients into ``logits`` only (``h`` frozen)."""
        self._to(logits.device)
        requires = [p.requires_grad for p in self.h.parameters()]
        for p in self.h.parameters():
            p.requires_grad_(False)
        try:
            self.h.eval()
            with torch.autocast(device_type=logits.device.type, enabled=False):
                h_logits = self.h(F.softmax(logits.float(), dim=1), self._onehot(y))
            return F.logsigmoid(h_logits.float().reshape(-1)).mean()
        finally:
            for p, r in zip(self.h.parameters(), requires):
                p.requires_grad_(r)

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor | None:
        self.train_h(model, x, y)
        adv_gain = self.adversarial_gain(logits, y)
        self._sums["adv_gain"] += float(adv_gain.detach())
        self._sums["ce"] += float(F.cross_entropy(logits.detach().float(), y))
        self._sums["f_steps"] += 1
        return self.lam * adv_gain

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        s = self._sums
        row = {"gain": s["gain"] / max(1, s["h_steps"]),
               "h_acc": s["h_correct"] / max(1, s["h_seen"]),
               "adv_gain": s["adv_gain"] / max(1, s["f_steps"]),
               "ce": s["ce"] / max(1, s["f_steps"])}
        self._reset_sums()
        return row

    def state_dict(self) -> dict:
        return {"h": {k: v.detach().cpu() for k, v in self.h.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.h.load_state_dict(state["h"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.device = None  # the loaded moments may sit on another device: move on next use
        self._reset_sums()


# --------------------------------------------------------------------------- defences


def make_minmax_callback(ctx: TargetContext, params: Mapping[str, Any]) -> MinMaxCallback:
    """A fresh game for the experiment ``ctx``: a seeded ``h`` and ``ctx.split.reference`` as ``D'``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.spec.seed + 7919)  # h's init: seeded, independent of f's
        h = InferenceModel(ctx.bundle.num_classes, hidden=H_SETTINGS["hidden"])
    return MinMaxCallback(h, ctx.bundle, ctx.split.reference, params["lam"], params["k_steps"],
                          lr=H_SETTINGS["lr"], seed=ctx.spec.seed)


def _final(history: list[dict], key: str) -> float | None:
    rows = [row for row in history if key in row]
    return float(rows[-1][key]) if rows else None


def train_minmax(ctx: TargetContext) -> tuple[nn.Module, dict[str, Any]]:
    """The ``minmax`` defence: train the target from scratch in the Min-Max game.

    ``ctx.spec.params``: ``lam`` (default 3.0) and ``k_steps`` (default 1). ``D`` is
    ``ctx.split.members``, ``D'`` is ``ctx.split.reference`` (checked disjoint from members and
    evaluation non-members first). The model is cached under the full configuration with the
    parameters' defaults filled in, so ``--lam 3`` and no ``--lam`` share one cache entry; the
    cached history holds the game's curves (``gain``, ``adv_gain``, ``h_acc``, ``ce``). Extra
    record fields: ``lam``, ``k_steps``, ``final_gain``, ``final_h_acc``, ``cached``, ``history``.
    """
    params = validate_minmax_params(ctx.spec.params)
    check_reference_set(ctx.split)
    ctx = replace(ctx, spec=replace(ctx.spec, params=params))
    config = ctx.cache_config(inference_model=H_SETTINGS, minmax_version=MINMAX_VERSION)

    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        return fit(model, ctx.bundle, ctx.split.members, ctx.train_config, device=ctx.device,
                   progress=ctx.progress, checkpoint_path=checkpoint,
                   callback=make_minmax_callback(ctx, params))

    model, info = load_or_train(config, ctx.build, train)
    history = info["history"]
    return model, {"lam": params["lam"], "k_steps": params["k_steps"],
                   "final_gain": _final(history, "gain"), "final_h_acc": _final(history, "h_acc"),
                   "cached": info["cached"], "history": history}


def train_prune_minmax(ctx: TargetContext) -> tuple[nn.Module, dict[str, Any]]:
    """The ``prune+minmax`` defence (MCMIA-Pruning & Min-Max): ADMM pruning inside the game.

    Starts from the ``minmax`` defence's model for the same ``lam`` and ``k_steps`` (the same
    cache entry, trained once), then prunes it as the ``prune`` defence does, with the game's
    adversarial term added to the ADMM W-steps and to the masked retraining (a fresh ``h``
    joins at the start of pruning: the cache keeps ``f``, not ``h``; it catches up within the
    first epoch, see ``h_acc`` in the history). ``ctx.spec.params``: ``sparsity`` (0.9),
    ``pruning`` ("admm"), ``sparsity_spec``, ``lam`` (3.0), ``k_steps`` (1). Extra record
    fields: all of the ``prune`` defence's plus ``lam``, ``k_steps``, ``final_gain``,
    ``final_h_acc`` and the dense model's ``minmax_final_gain``.
    """
    mm = validate_minmax_params(ctx.spec.params, other_keys=tuple(PRUNING_DEFAULTS))
    prune_params = {k: v for k, v in ctx.spec.params.items() if k not in MINMAX_DEFAULTS}
    check_reference_set(ctx.split)
    minmax_ctx = replace(ctx, spec=replace(ctx.spec, defense="minmax", params=dict(mm)))
    dense_extra: dict[str, Any] = {}

    def dense() -> tuple[nn.Module, dict[str, Any]]:
        model, extra = train_minmax(minmax_ctx)
        dense_extra.update(extra)
        return model, extra

    model, extra = train_pruned(
        ctx, params=prune_params, dense=dense, callback_extra=lambda: make_minmax_callback(ctx, mm),
        cache_extra={"inference_model": H_SETTINGS, "minmax_version": MINMAX_VERSION, "minmax": mm})
    history = extra["history"]
    extra.update({"lam": mm["lam"], "k_steps": mm["k_steps"],
                  "final_gain": _final(history, "gain"), "final_h_acc": _final(history, "h_acc"),
                  "minmax_final_gain": dense_extra.get("final_gain")})
    return model, extra
