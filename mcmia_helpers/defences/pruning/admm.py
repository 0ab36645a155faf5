"""ADMM pruning's state: the penalty, the Z- and U-steps and the rho schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
from torch import nn

from mcmia_helpers.defences.pruning.magnitude import project
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


class ADMMCallback(TrainingCallback):
    """ADMM's state (``Z``, ``U``, ``rho``) as a training callback.

    ``extra_loss`` is the penalty ``rho/2 * sum_l ||W_l - Z_l + U_l||^2``; the Z- and U-steps run
    every ``update_every`` optimiser steps (or at the end of each epoch when ``None``). The
    state round-trips through ``state_dict`` so an interrupted ADMM phase resumes exactly.
    ``targets`` maps layer names to sparsities; layers at sparsity 0 carry no constraint.
    """

    def __init__(self, model: nn.Module, targets: Mapping[str, float], rho_init: float = 1e-3,
                 rho_growth: float = 1.3, rho_max: float = 1.0,
                 update_every: int | None = None) -> None:
        if not (rho_init > 0 and rho_growth >= 1 and rho_max >= rho_init):
            raise UserError(f"ADMM needs rho_init > 0, rho_growth >= 1 and rho_max >= rho_init "
                            f"(got {rho_init}, {rho_growth}, {rho_max}): use 1e-3, 1.3, 1.0")
        self.targets = {name: check_sparsity(s, name) for name, s in targets.items() if s > 0}
        self.rho_growth, self.rho_max = float(rho_growth), float(rho_max)
        self.update_every = update_every
        self.rho = float(rho_init)
        self.steps = 0
        self.updates = 0
        with torch.no_grad():
            weights = self._weights(model)
            self.Z = {n: w.detach() * project(w, self.targets[n]) for n, w in weights.items()}
            self.U = {n: torch.zeros_like(w) for n, w in weights.items()}

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: _weight_param(_layer(model, name)) for name in self.targets}

    def _sync(self, weights: dict[str, torch.Tensor]) -> None:
        for name, w in weights.items():
            if self.Z[name].device != w.device:
                self.Z[name], self.U[name] = self.Z[name].to(w.device), self.U[name].to(w.device)

    def extra_loss(self, model, x, y, logits):
        weights = self._weights(model)
        if not weights:
            return None
        self._sync(weights)
        total = sum((w.float() - self.Z[n] + self.U[n]).pow(2).sum() for n, w in weights.items())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One Z-step and U-step, then ``rho`` grows (and ``U`` is rescaled to match)."""
        weights = self._weights(model)
        self._sync(weights)
        for name, w in weights.items():
            w = w.detach().float()
            candidate = w + self.U[name]
            self.Z[name] = candidate * project(candidate, self.targets[name])
            self.U[name] = candidate - self.Z[name]  # U + W - Z
        new_rho = min(self.rho * self.rho_growth, self.rho_max)
        for name in self.U:
            self.U[name] *= self.rho / new_rho
        self.rho = new_rho
        self.updates += 1

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.update_every and self.steps % self.update_every == 0:
            self.update(model)

    @torch.no_grad()
    def residual(self, model: nn.Module) -> float:
        """``||W - Z|| / ||W||`` over all constrained layers: how far W is from sparse."""
        weights = self._weights(model)
        self._sync(weights)
        num = sum(float((w.float() - self.Z[n]).pow(2).sum()) for n, w in weights.items())
        den = sum(float(w.float().pow(2).sum()) for w in weights.values())
        return math.sqrt(num / den) if den > 0 else 0.0

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        if not self.update_every:
            self.update(model)
        return {"rho": self.rho, "admm_residual": self.residual(model),
                "admm_updates": self.updates}

    def hard_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The final projection of ``W`` itself: ``{layer: keep mask}`` for every constrained layer."""
        return {name: project(w, self.targets[name]).cpu()
                for name, w in self._weights(model).items()}

    def state_dict(self) -> dict:
        return {"Z": {n: z.cpu() for n, z in self.Z.items()},
                "U": {n: u.cpu() for n, u in self.U.items()},
                "rho": self.rho, "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.Z = {n: z.clone() for n, z in state["Z"].items()}
        self.U = {n: u.clone() for n, u in state["U"].items()}
        self.rho, self.steps, self.updates = float(state["rho"]), int(state["steps"]), int(state["updates"])
