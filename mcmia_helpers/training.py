"""One ``fit``/``evaluate`` pair used by every chapter, plus seeds, devices and the model cache.

``fit`` trains on in-memory tensors (see :class:`~mcmia_helpers.data.DatasetBundle`) with SGD
or Adam, an optional cosine or step schedule and weight decay, bfloat16 autocast on CUDA, and
an optional :class:`TrainingCallback` through which the defences hook in: ADMM pruning adds its
penalty and updates its auxiliary variables, the Min-Max game adds the inference model's gain,
masks are re-applied after each step. With ``checkpoint_path`` every epoch is checkpointed
atomically and a killed run resumes from its last finished epoch with the same result.

``load_or_train`` keys a trained model by its full configuration: a reader never waits twice
for the same model. The cache lives in ``MCMIA_CACHE`` (default ``~/.cache/mcmia/models``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.errors import UserError
from mcmia_helpers.io import atomic_torch_save

#: Bump when a change to training makes old cached models wrong.
CACHE_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (and so part of its cache key)."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    augment: bool = False
    seed: int = 0
    amp: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) in one place."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given, else CUDA, else Apple's MPS, else the CPU (``MCMIA_DEVICE`` overrides)."""
    prefer = prefer or os.environ.get("MCMIA_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class TrainingCallback:
    """Hooks through which a defence changes training without copying the loop.

    ``extra_loss`` is added to the cross-entropy of each batch; ``after_step`` runs after each
    optimiser step (e.g. to keep pruned weights at zero); ``epoch_end`` runs after each epoch
    (e.g. ADMM's Z and U updates). ``state_dict``/``load_state_dict`` let a resumed run pick the
    callback's own state up again.
    """

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_step(self, model: nn.Module) -> None:
        pass

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, as ``config.optimizer`` says."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise UserError(f"unknown optimizer '{config.optimizer}': choose sgd or adam")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """A per-epoch learning-rate schedule: ``none``, ``cosine`` or ``step`` (x0.1 at 50%, 75%)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    if config.schedule == "step":
        milestones = [int(config.epochs * 0.5), int(config.epochs * 0.75)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if config.schedule == "none":
        return None
    raise UserError(f"unknown schedule '{config.schedule}': choose none, cosine or step")


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=enabled and device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, bundle: DatasetBundle, indices: torch.Tensor,
                   batch_size: int = 512, device: torch.device | None = None) -> torch.Tensor:
    """The model's logits for ``indices``, in order, as a float32 CPU tensor."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        x, _ = bundle.batch(indices[start:start + batch_size])
        with _autocast(device, True):
            out.append(model(x.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, bundle.num_classes)


def evaluate(model: nn.Module, bundle: DatasetBundle, indices: torch.Tensor,
             batch_size: int = 512, device: torch.device | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``indices``."""
    logits = predict_logits(model, bundle, indices, batch_size, device)
    labels = bundle.labels[torch.as_tensor(indices, dtype=torch.long)]
    return {"loss": float(F.cross_entropy(logits, labels)),
            "acc": float((logits.argmax(1) == labels).float().mean())}


def load_epoch_checkpoint(path: str | os.PathLike, model: nn.Module,
                          optimizer: torch.optim.Optimizer, scheduler, device: torch.device
                          ) -> tuple[dict, list[dict[str, float]], int]:
    """Restore model, optimiser and schedule from an epoch checkpoint written by a training loop.

    Returns the whole checkpoint (for loop-specific state such as a callback's or a privacy
    accountant's), the history so far, and the epoch to resume from.
    """
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    return state, list(state["history"]), int(state["epoch"]) + 1


def fit(model: nn.Module, bundle: DatasetBundle, indices: torch.Tensor, config: TrainConfig, *,
        device: torch.device | None = None, progress: bool = False,
        checkpoint_path: str | os.PathLike | None = None,
        callback: TrainingCallback | None = None,
        optimizer: torch.optim.Optimizer | None = None) -> list[dict[str, float]]:
    """Train ``model`` on ``bundle[indices]`` for ``config.epochs``; return per-epoch history.

    Each epoch's shuffle and random state derive from ``(config.seed, epoch)``, so a run
    resumed from ``checkpoint_path`` ends with exactly the weights of an uninterrupted one.
    """
    from tqdm.auto import tqdm

    device = device or get_device()
    model.to(device)
    callback = callback or TrainingCallback()
    indices = torch.as_tensor(indices, dtype=torch.long)
    if len(indices) == 0:
        raise UserError("cannot train on an empty set: check the split sizes")
    optimizer = optimizer or make_optimizer(model.parameters(), config)
    scheduler = make_scheduler(optimizer, config)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state, history, start_epoch = load_epoch_checkpoint(checkpoint_path, model, optimizer,
                                                            scheduler, device)
        callback.load_state_dict(state.get("callback", {}))
    bar = tqdm(range(start_epoch, config.epochs), disable=not progress, desc="epochs", leave=False)
    for epoch in bar:
        model.train()
        torch.manual_seed(config.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = indices[torch.randperm(len(indices), generator=gen)]
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), config.batch_size):
            x, y = bundle.batch(order[start:start + config.batch_size], augment=config.augment,
                                generator=gen)
            x, y = x.to(device), y.to(device)
            with _autocast(device, config.amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                extra = callback.extra_loss(model, x, y, logits)
                if extra is not None:
                    loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            callback.after_step(model)
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        if scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch, "loss": total_loss / seen, "acc": correct / seen}
        row.update(callback.epoch_end(epoch, model))
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['acc']:.3f}")
        if checkpoint_path is not None:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict() if scheduler else {},
                               "callback": callback.state_dict(), "history": history,
                               "epoch": epoch}, checkpoint_path)
    return history


# --------------------------------------------------------------------------- cache


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where trained models are cached: ``path``, ``MCMIA_CACHE``, or ``~/.cache/mcmia/models``."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get("MCMIA_CACHE"):
        return Path(os.environ["MCMIA_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mcmia" / "models"


def config_key(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able configuration (the cache key)."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_or_train(config: dict[str, Any], build: Callable[[], nn.Module],
                  train: Callable[[nn.Module, Path], list[dict]], *,
                  cache: str | os.PathLike | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Return the model trained with ``config``: from the cache if there, else trained now.

    ``build()`` makes the untrained model; ``train(model, checkpoint_path)`` trains it in place
    (resuming from ``checkpoint_path`` if a killed run left one) and returns its history. The
    finished model is saved atomically under the configuration's key.
    """
    folder = cache_dir(cache)
    key = config_key(config)
    final, partial = folder / f"{key}.pt", folder / f"{key}.partial.pt"
    model = build()
    if final.exists():
        blob = torch.load(final, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"])
        return model, {"key": key, "cached": True, "history": list(blob["history"])}
    folder.mkdir(parents=True, exist_ok=True)
    history = train(model, partial)
    cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": cpu_state, "history": history,
                       "config": json.dumps(config, sort_keys=True, default=str)}, final)
    partial.unlink(missing_ok=True)
    return model, {"key": key, "cached": False, "history": history}
