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
network of the attacks chapter (:class:`~mcmia_helpers.attacks.InferenceModel`).

:class:`MinMaxCallback` is the game as a :class:`~mcmia_helpers.training.TrainingCallback`, so
it runs through :func:`~mcmia_helpers.training.fit` unchanged, and through both ADMM phases of
:func:`~mcmia_helpers.pruning.prune_model` (the paper's "MCMIA-Pruning & Min-Max": the
adversarial term is part of the ADMM W-step and of the masked retraining).

Choices where the paper is silent: ``h`` trains with Adam (lr ``1e-3``) on posteriors from
``f`` in evaluation mode (what an attacker queries; it also keeps BatchNorm statistics free of
reference data), a fresh reference batch per ``h`` step; the gain ``f`` sees is computed on
the training-mode logits of the member batch, with gradients flowing into ``f`` only.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mcmia_helpers.data import DatasetBundle, MIASplit
from mcmia_helpers.errors import UserError
from mcmia_helpers.training import TrainingCallback, fit, load_or_train

__all__ = ["MINMAX_DEFAULTS", "MinMaxCallback", "validate_minmax_params", "check_reference_set",
           "make_minmax_callback", "train_minmax", "train_prune_minmax"]

#: Bump when a change to the game makes cached Min-Max models wrong.
MINMAX_VERSION = 1

#: The ``params`` of the ``minmax`` defence, with their defaults (``lam`` as in Nasr et al.'s
#: CIFAR experiments is 1-6; 3 is the middle of the range the MCMIA paper sweeps).
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
        """``n`` reference indices, without replacement when the reference set is big enough."""
        m = self.reference.numel()
        if n <= m:
            pick = torch.randperm(m, generator=self.generator)[:n]
        else:
            pick = torch.randint(m, (n,), generator=self.generator)
        return self.reference[pick]

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

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor | None:
        device = logits.device
        self._to(device)
        member = (self._posteriors(model, x), self._onehot(y))
        for _ in range(self.k_steps):
            xr, yr = self.bundle.batch(self._sample_reference(len(y)))
            reference = (self._posteriors(model, xr.to(device)), self._onehot(yr.to(device)))
            with torch.autocast(device_type=device.type, enabled=False):  # h trains in float32
                self._h_step(member, reference)
        with torch.autocast(device_type=device.type, enabled=False):
            # h frozen: its parameters get no gradient from f's loss, f's optimiser never sees them
            requires = [p.requires_grad for p in self.h.parameters()]
            for p in self.h.parameters():
                p.requires_grad_(False)
            try:
                self.h.eval()
                h_logits = self.h(F.softmax(logits.float(), dim=1), member[1]).float().reshape(-1)
                adv_gain = F.logsigmoid(h_logits).mean()
            finally:
                for p, r in zip(self.h.parameters(), requires):
                    p.requires_grad_(r)
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


def make_minmax_callback(ctx, params: Mapping[str, Any]) -> MinMaxCallback:
    """A fresh game for the experiment ``ctx``: a seeded ``h`` and ``ctx.split.reference`` as ``D'``."""
    from mcmia_helpers.attacks import InferenceModel  # attacks imports the experiment machinery

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.spec.seed + 7919)  # h's init: seeded, independent of f's
        h = InferenceModel(ctx.bundle.num_classes, hidden=H_SETTINGS["hidden"])
    return MinMaxCallback(h, ctx.bundle, ctx.split.reference, params["lam"], params["k_steps"],
                          lr=H_SETTINGS["lr"], seed=ctx.spec.seed)


def _final(history: list[dict], key: str) -> float | None:
    rows = [row for row in history if key in row]
    return float(rows[-1][key]) if rows else None


def train_minmax(ctx) -> tuple[nn.Module, dict[str, Any]]:
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


def _train_pruned_from(ctx, params: Mapping[str, Any],
                       dense: Callable[[], tuple[nn.Module, dict[str, Any]]],
                       callback_extra: Callable[[], TrainingCallback] | None,
                       cache_extra: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`pruning.train_pruned` from another dense model, with a callback in both phases.

    The same steps as ``pruning.train_pruned`` (targets, epochs, ADMM settings, cache key,
    compression report), generalised: ``dense()`` gives the starting model, a fresh
    ``callback_extra()`` joins the ADMM W-steps and the masked retraining, ``cache_extra``
    extends the cache key. Meant to move into ``pruning`` as ``train_pruned``'s body.
    """
    from mcmia_helpers import pruning as P
    from mcmia_helpers.compression import compression_report, prunable_layers

    params = P.validate_pruning_params(params)
    method = params["pruning"]
    probe = ctx.build()
    if params["sparsity_spec"] is not None:
        sparsity: Any = P.resolve_sparsity(probe, params["sparsity_spec"])
    elif method == "admm":
        sparsity = P.default_sparsity_profile(probe, params["sparsity"])
    else:
        sparsity = params["sparsity"]
    targets = P.resolve_sparsity(probe, sparsity)
    sizes = {name: m.weight.numel() for name, m in prunable_layers(probe).items()}
    overall = (params["sparsity"] if params["sparsity_spec"] is None else
               sum(sizes[n] * s for n, s in targets.items()) / sum(sizes.values()))
    dense_model, dense_info = dense()
    epochs = max(1, ctx.train_config.epochs // 2)
    settings = P.ADMMSettings()
    config = ctx.cache_config(pruning=method, sparsity_targets=sparsity if isinstance(sparsity, dict)
                              else {"global": sparsity}, admm_epochs=epochs, retrain_epochs=epochs,
                              admm=settings.to_dict(), iterative_rounds=3,
                              pruning_version=P.PRUNING_VERSION, **cache_extra)
    run_info: dict[str, Any] = {}

    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        _, _, info = P.prune_model(model, ctx.bundle, ctx.split.members, ctx.train_config, method,
                                   sparsity, admm_epochs=epochs, retrain_epochs=epochs,
                                   callback_extra=callback_extra() if callback_extra else None,
                                   device=ctx.device, progress=ctx.progress, admm=settings,
                                   checkpoint_path=checkpoint)
        run_info.update(info)
        return info["history"]

    model, cache_info = load_or_train(config, lambda: copy.deepcopy(dense_model), train)
    report = compression_report(model, (ctx.bundle.in_channels, ctx.bundle.image_size,
                                        ctx.bundle.image_size))
    extra = {key: report[key] for key in (
        "sparsity_per_layer", "compression_ratio", "compression_ratio_prunable",
        "size_dense_bytes", "size_sparse_bytes", "flops_dense", "flops_effective")}
    extra.update({
        "pruning": method, "sparsity": overall, "sparsity_spec": params["sparsity_spec"],
        "sparsity_targets": targets if isinstance(sparsity, dict) else {"global": sparsity},
        "sparsity_achieved": report["sparsity"],
        "admm_epochs": epochs if method == "admm" else 0,
        "retrain_epochs": epochs if method == "admm" else 2 * epochs,
        "dense_cached": dense_info.get("cached"), "cached": cache_info["cached"],
        "history": cache_info["history"],
    })
    if "train_acc_before_retrain" in run_info:
        extra["train_acc_before_retrain"] = run_info["train_acc_before_retrain"]
    return model, extra


def train_prune_minmax(ctx) -> tuple[nn.Module, dict[str, Any]]:
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
    from mcmia_helpers import pruning as P

    mm = validate_minmax_params(ctx.spec.params, other_keys=tuple(P.PARAM_DEFAULTS))
    prune_params = {k: v for k, v in ctx.spec.params.items() if k not in MINMAX_DEFAULTS}
    check_reference_set(ctx.split)
    minmax_ctx = replace(ctx, spec=replace(ctx.spec, defense="minmax", params=dict(mm)))
    dense_extra: dict[str, Any] = {}

    def dense() -> tuple[nn.Module, dict[str, Any]]:
        model, extra = train_minmax(minmax_ctx)
        dense_extra.update(extra)
        return model, extra

    model, extra = _train_pruned_from(
        ctx, prune_params, dense, lambda: make_minmax_callback(ctx, mm),
        {"inference_model": H_SETTINGS, "minmax_version": MINMAX_VERSION, "minmax": mm})
    history = extra["history"]
    extra.update({"lam": mm["lam"], "k_steps": mm["k_steps"],
                  "final_gain": _final(history, "gain"), "final_h_acc": _final(history, "h_acc"),
                  "minmax_final_gain": dense_extra.get("final_gain")})
    return model, extra
