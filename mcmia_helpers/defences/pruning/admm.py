"""ADMM pruning, written once: the penalty, the Z- and U-steps and the rho schedule.

:class:`ADMMState` holds ``Z``, ``U`` and ``rho`` for weights with a leading **model
dimension** (``M`` models stacked, as the zoo's grouped engine trains them; one model is a
stack of one) and does every step of the algorithm (see the package docstring): the W-step's
penalty ``rho/2 * sum_l ||W_l - Z_l + U_l||^2`` (:meth:`ADMMState.penalty`, each model's slice
of its gradient is that model's own), the Z-step ``Z = proj(W + U)`` (each model projected on
its own constraint, :func:`~.magnitude.project_rows`), the U-step ``U += W - Z``, ``rho``'s
growth with ``U`` rescaled by ``rho_old / rho_new``, the final hard masks and a state that
round-trips through a checkpoint. Two thin adaptors call it: :class:`ADMMCallback` (one model,
through :func:`~mcmia_helpers.training.fit`) and the zoo's
:class:`~mcmia_helpers.zoo.grouped.StackedADMM` (many models at once).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
from torch import nn

from mcmia_helpers.defences.pruning.magnitude import project_rows
from mcmia_helpers.defences.pruning.masks import _layer, _weight_param
from mcmia_helpers.defences.pruning.profiles import check_sparsity
from mcmia_helpers.errors import UserError
from mcmia_helpers.training import TrainingCallback


@dataclass(frozen=True)
class ADMMSettings:
    """ADMM's penalty schedule (defaults from the framework's published code, see module doc).

    ``rho`` starts at ``rho_init`` and is multiplied after every Z/U update by at least
    ``rho_growth``, and by more when the ADMM phase has too few updates for ``rho`` to reach
    ``rho_max`` at that pace (so that the last epoch always trains at ``rho_max``).
    ``updates_per_epoch`` Z/U updates are spread evenly over each epoch (the framework: one).
    """

    rho_init: float = 1e-3
    rho_growth: float = 1.3
    rho_max: float = 1.0
    updates_per_epoch: int = 1

    def growth_for(self, n_updates: int) -> float:
        """The growth factor used in a phase of ``n_updates`` Z/U updates."""
        if n_updates <= 1 or self.rho_max <= self.rho_init:
            return self.rho_growth
        return max(self.rho_growth, (self.rho_max / self.rho_init) ** (1.0 / (n_updates - 1)))

    def to_dict(self) -> dict:
        return asdict(self)


class ADMMState:
    """ADMM's ``Z``, ``U`` and ``rho`` for stacked weights ``{key: [M, ...]}``.

    ``targets`` maps keys to sparsities; keys at sparsity 0 carry no constraint. ``Z`` starts
    at the projection of the initial weights, ``U`` at zero. Every method takes the current
    weights as a mapping with the same keys (tensors on any device: the state follows them).
    """

    def __init__(self, weights: Mapping[str, torch.Tensor], targets: Mapping[str, float],
                 rho_init: float = 1e-3, rho_growth: float = 1.3, rho_max: float = 1.0) -> None:
        if not (rho_init > 0 and rho_growth >= 1 and rho_max >= rho_init):
            raise UserError(f"ADMM needs rho_init > 0, rho_growth >= 1 and rho_max >= rho_init "
                            f"(got {rho_init}, {rho_growth}, {rho_max}): use 1e-3, 1.3, 1.0")
        self.targets = {key: check_sparsity(s, key) for key, s in targets.items() if s > 0}
        self.rho, self.rho_growth, self.rho_max = float(rho_init), float(rho_growth), float(rho_max)
        self.updates = 0
        with torch.no_grad():
            self.Z = {k: weights[k].detach() * project_rows(weights[k], s)
                      for k, s in self.targets.items()}
            self.U = {k: torch.zeros_like(weights[k]) for k in self.targets}

    def _sync(self, weights: Mapping[str, torch.Tensor]) -> None:
        for k in self.targets:
            device = weights[k].device
            if self.Z[k].device != device:
                self.Z[k], self.U[k] = self.Z[k].to(device), self.U[k].to(device)

    def penalty(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The W-step's ``rho/2 * sum ||W - Z + U||^2`` over every constrained key and model."""
        if not self.targets:
            return None
        self._sync(weights)
        total = sum((weights[k].float() - self.Z[k] + self.U[k]).pow(2).sum() for k in self.targets)
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self, weights: Mapping[str, torch.Tensor]) -> None:
        """One Z-step and U-step, then ``rho`` grows (and ``U`` is rescaled to match)."""
        self._sync(weights)
        for k, s in self.targets.items():
            candidate = weights[k].detach().float() + self.U[k]
            self.Z[k] = candidate * project_rows(candidate, s)
            self.U[k] = candidate - self.Z[k]  # U + W - Z
        new_rho = min(self.rho * self.rho_growth, self.rho_max)
        for k in self.U:
            self.U[k] *= self.rho / new_rho
        self.rho = new_rho
        self.updates += 1

    @torch.no_grad()
    def residual(self, weights: Mapping[str, torch.Tensor]) -> float:
        """``||W - Z|| / ||W||`` over all constrained keys (and models): how far W is from sparse."""
        self._sync(weights)
        num = sum(float((weights[k].float() - self.Z[k]).pow(2).sum()) for k in self.targets)
        den = sum(float(weights[k].float().pow(2).sum()) for k in self.targets)
        return math.sqrt(num / den) if den > 0 else 0.0

    def hard_masks(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The final projection of ``W`` itself: ``{key: keep mask}`` for every constrained key."""
        return {k: project_rows(weights[k], s) for k, s in self.targets.items()}

    def state_dict(self) -> dict:
        return {"Z": {k: z.cpu() for k, z in self.Z.items()},
                "U": {k: u.cpu() for k, u in self.U.items()},
                "rho": self.rho, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.Z = {k: z.clone() for k, z in state["Z"].items()}
        self.U = {k: u.clone() for k, u in state["U"].items()}
        self.rho, self.updates = float(state["rho"]), int(state.get("updates", 0))


class ADMMCallback(TrainingCallback):
    """:class:`ADMMState` for one model (a stack of one) as a training callback.

    ``extra_loss`` is the penalty ``rho/2 * sum_l ||W_l - Z_l + U_l||^2``; the Z- and U-steps run
    every ``update_every`` optimiser steps (or at the end of each epoch when ``None``). The
    state round-trips through ``state_dict`` so an interrupted ADMM phase resumes exactly.
    ``targets`` maps layer names to sparsities; layers at sparsity 0 carry no constraint.
    ``Z`` and ``U`` are the state's tensors seen without the model dimension.
    """

    def __init__(self, model: nn.Module, targets: Mapping[str, float], rho_init: float = 1e-3,
                 rho_growth: float = 1.3, rho_max: float = 1.0,
                 update_every: int | None = None) -> None:
        self.names = [name for name, s in targets.items() if s > 0]
        self.update_every = update_every
        self.steps = 0
        self.state = ADMMState(self._weights(model), targets, rho_init, rho_growth, rho_max)

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: _weight_param(_layer(model, name)).unsqueeze(0) for name in self.names}

    @property
    def targets(self) -> dict[str, float]:
        return self.state.targets

    @property
    def rho(self) -> float:
        return self.state.rho

    @property
    def updates(self) -> int:
        return self.state.updates

    @property
    def Z(self) -> dict[str, torch.Tensor]:
        return {name: z[0] for name, z in self.state.Z.items()}

    @property
    def U(self) -> dict[str, torch.Tensor]:
        return {name: u[0] for name, u in self.state.U.items()}

    def extra_loss(self, model, x, y, logits):
        return self.state.penalty(self._weights(model))

    def update(self, model: nn.Module) -> None:
        """One Z-step and U-step, then ``rho`` grows (and ``U`` is rescaled to match)."""
        self.state.update(self._weights(model))

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.update_every and self.steps % self.update_every == 0:
            self.update(model)

    def residual(self, model: nn.Module) -> float:
        """``||W - Z|| / ||W||`` over all constrained layers: how far W is from sparse."""
        return self.state.residual(self._weights(model))

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        if not self.update_every:
            self.update(model)
        return {"rho": self.rho, "admm_residual": self.residual(model),
                "admm_updates": self.updates}

    def hard_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The final projection of ``W`` itself: ``{layer: keep mask}`` for every constrained layer."""
        return {name: m[0].cpu() for name, m in self.state.hard_masks(self._weights(model)).items()}

    def state_dict(self) -> dict:
        # the one-model checkpoint keeps its form of before the shared state (no model dimension)
        state = self.state.state_dict()
        return {"Z": {n: z[0] for n, z in state["Z"].items()},
                "U": {n: u[0] for n, u in state["U"].items()},
                "rho": state["rho"], "steps": self.steps, "updates": state["updates"]}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.state.load_state_dict({"Z": {n: z.unsqueeze(0) for n, z in state["Z"].items()},
                                    "U": {n: u.unsqueeze(0) for n, u in state["U"].items()},
                                    "rho": state["rho"], "updates": state["updates"]})
        self.steps = int(state["steps"])
