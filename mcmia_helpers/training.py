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

import contextlib
import hashlib
import itertools
import json
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.errors import TrainingDiverged, UserError
from mcmia_helpers.io import (KEY_FIELD, DamagedFile, atomic_torch_save, check_or_set_aside,
                              entry_key, load_verified, set_aside)

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


#: torch's generators take seeds in ``[0, 2**64)``: derived seeds are reduced into that range.
_SEED_SPACE = 2**64


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and augmentation: ``seed * 100_003 + epoch``, reduced
    modulo ``2**64`` so that derived seeds (a shadow model's ``seed * 100_000 + role``) never
    overflow torch's generator (every seed that worked before keeps its value)."""
    return (int(seed) * 100_003 + int(epoch)) % _SEED_SPACE


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) in one place."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(int(seed) % _SEED_SPACE)


def check_device(text: str, source: str = "MCMIA_DEVICE") -> torch.device:
    """``text`` as a device this machine has, or a one-line :class:`UserError` that lists them.

    Accepted: ``cpu``; ``cuda`` or ``cuda:N`` when torch sees a GPU N; ``mps`` when Apple's
    backend is available. ``source`` names where the value came from, for the message.
    """
    available = ["cpu"]
    if torch.cuda.is_available():
        available += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    try:
        device = torch.device(text.strip())
    except (RuntimeError, ValueError, TypeError):
        device = None
    ok = device is not None and (
        device.type == "cpu"
        or (device.type == "cuda" and torch.cuda.is_available()
            and (device.index is None or device.index < torch.cuda.device_count()))
        or (device.type == "mps" and "mps" in available))
    if not ok:
        raise UserError(f"{source}={text!r} is not a device torch sees here: use one of "
                        f"{', '.join(available)} (or unset {source})")
    return device


def get_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given, else CUDA, else Apple's MPS, else the CPU (``MCMIA_DEVICE`` overrides).

    A requested device that torch does not see (``cuda`` without a GPU, ``cuda:7`` on a one-GPU
    machine, a misspelling) is a one-line :class:`UserError` (see :func:`check_device`).
    """
    if prefer:
        return check_device(str(prefer), "device")
    if os.environ.get("MCMIA_DEVICE"):
        return check_device(os.environ["MCMIA_DEVICE"])
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


def optimiser_step(optimizer: torch.optim.Optimizer, device: torch.device, amp: bool,
                   forward: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                   extra_loss: Callable[[torch.Tensor], torch.Tensor | None],
                   after_step: Callable[[], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step, the same in both training loops (:func:`fit` for one model,
    :func:`~mcmia_helpers.zoo.grouped.train_stacked` for ``M`` stacked models): under autocast
    ``forward()`` gives ``(logits, loss)`` and ``extra_loss(logits)`` a defence's term (or
    ``None``); then zero the gradients, back-propagate, step, and ``after_step()`` (masks
    re-applied, ADMM's counters). Returns ``(logits, loss)``.

    The loops around it stay two because they step two model forms: an ``nn.Module`` and the
    grouped engine's stacked tensors. Training the zoo's models through the module loop one at
    a time costs it half its speed: 32 LeNet-5 models on Fashion-MNIST (500 examples each,
    2 epochs, 2 CPU cores) train in 2.8 s of CPU time grouped against 6.2 s one at a time
    (x2.21), ADMM at 90% in 3.2 s against 6.3 s (x2.0; ``benchmarks/results/zoo_training.json``).
    """
    with _autocast(device, amp):
        logits, loss = forward()
        extra = extra_loss(logits)
        if extra is not None:
            loss = loss + extra
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    after_step()
    return logits, loss


def query_precision(device: torch.device):
    """The context of every query an attack or a utility measure makes: autocast off (float32).

    Training may run under bfloat16 autocast (:class:`TrainConfig` ``amp``); queries must not,
    or LiRA's statistics are rounded. Turning autocast off explicitly also overrides an autocast
    region the caller may be in (a defence that queries while it trains).
    """
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def predict_logits(model: nn.Module, bundle: DatasetBundle, indices: torch.Tensor,
                   batch_size: int = 512, device: torch.device | None = None) -> torch.Tensor:
    """The model's logits for ``indices``, in order, as a float32 CPU tensor.

    Computed in float32 (:func:`query_precision`), even inside a caller's autocast region:
    every attack and utility measure reads these logits, and bfloat16 would round them (steps of
    0.0625 for ``|z|`` in [8, 16)) exactly in the low-FPR tail that LiRA measures.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        x, _ = bundle.batch(indices[start:start + batch_size])
        with query_precision(device):
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
    accountant's), the history so far, and the epoch to resume from. The checkpoint's digest is
    checked (:func:`~mcmia_helpers.io.load_verified`): a damaged one raises
    :class:`~mcmia_helpers.io.DamagedFile` (callers check with
    :func:`~mcmia_helpers.io.check_or_set_aside` first and start afresh instead).
    """
    state, _ = load_verified(path, map_location=device)
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
    if checkpoint_path is not None and check_or_set_aside(checkpoint_path, "training from epoch 0"):
        state, history, start_epoch = load_epoch_checkpoint(checkpoint_path, model, optimizer,
                                                            scheduler, device)
        callback.load_state_dict(state.get("callback", {}))
    bar = tqdm(range(start_epoch, config.epochs), disable=not progress, desc="epochs", leave=False)
    for epoch in bar:
        model.train()
        torch.manual_seed(epoch_seed(config.seed, epoch))
        gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
        order = indices[torch.randperm(len(indices), generator=gen)]
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), config.batch_size):
            x, y = bundle.batch(order[start:start + config.batch_size], augment=config.augment,
                                generator=gen)
            x, y = x.to(device), y.to(device)
            def forward() -> tuple[torch.Tensor, torch.Tensor]:
                logits = model(x)
                return logits, F.cross_entropy(logits.float(), y)

            logits, loss = optimiser_step(
                optimizer, device, config.amp, forward,
                lambda logits: callback.extra_loss(model, x, y, logits),
                lambda: callback.after_step(model))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(diverged_message(f"the loss became {value} in epoch {epoch}"))
            total_loss += value * len(y)
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
                               "epoch": epoch}, checkpoint_path, key=entry_key(checkpoint_path))
    return history


def diverged_message(what: str) -> str:
    """The one-line explanation of a diverged training run (``what`` says how it showed)."""
    return (f"training diverged ({what}): nothing was cached; lower the learning rate or the "
            "defence's strength (e.g. --lam, --max-grad-norm)")


def check_finite_model(model: nn.Module, history: list[dict[str, Any]] | None = None) -> None:
    """Raise :class:`~mcmia_helpers.errors.TrainingDiverged` if a weight, a buffer or a logged
    loss of a trained model is NaN or infinite (its metrics would be meaningless, or crash)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TrainingDiverged(diverged_message(f"{name} is not finite"))
    for row in history or []:
        loss = row.get("loss") if isinstance(row, dict) else None
        if isinstance(loss, float) and not math.isfinite(loss):
            raise TrainingDiverged(diverged_message(f"the loss is {loss} in epoch {row.get('epoch')}"))


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
                  cache: str | os.PathLike | None = None,
                  aliases: Iterable[dict[str, Any]] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Return the model trained with ``config``: from the cache if there, else trained now.

    ``build()`` makes the untrained model; ``train(model, checkpoint_path)`` trains it in place
    (resuming from ``checkpoint_path`` if a killed run left one) and returns its history. The
    finished model is saved atomically under the configuration's key, with a content digest.

    A cached entry is used only if it loads, matches its digest and fits the model; otherwise it
    is set aside with a one-line notice and the model is trained again (the same numbers as
    before the damage: training is deterministic). An entry written before digests existed is
    checked by loading it fully into the model and then re-saved with its digest. A damaged
    partial checkpoint is set aside the same way (training restarts from epoch 0). A run whose
    loss or weights turn non-finite raises :class:`~mcmia_helpers.errors.TrainingDiverged` and
    caches nothing.

    ``aliases`` are older spellings of the same configuration (see :func:`legacy_spellings`):
    when ``config`` has no entry yet, an intact entry under an alias is used and saved under
    ``config``'s key too, so that models cached before a key was made canonical are still found.
    """
    folder = cache_dir(cache)
    key = config_key(config)
    final, partial = folder / f"{key}.pt", folder / f"{key}.partial.pt"
    aliases = list(aliases)
    # whose an entry may be: this configuration, or an older spelling of it (an alias copy)
    own = _configured_as([config, *aliases])
    model = build()
    if final.exists():
        cached = _load_cached_model(final, model, own)
        if cached is not None:
            return model, {"key": key, "cached": True, "history": cached[0]}
        model = build()  # a failed load_state_dict may have filled part of the model
    for alias in aliases:
        old = folder / f"{config_key(alias)}.pt"
        if old == final or not old.exists():
            continue
        cached = _load_cached_model(old, model, own)
        if cached is not None:
            with contextlib.suppress(UserError):  # a read-only cache: found under the alias next time
                atomic_torch_save(cached[1], final, key=key)
            return model, {"key": key, "cached": True, "history": cached[0]}
        model = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the model cache {folder} ({exc.strerror}): set "
                        "MCMIA_CACHE to a writable folder") from None
    check_or_set_aside(partial, "training from epoch 0")
    try:
        history = train(model, partial)
        check_finite_model(model, history)
    except TrainingDiverged:
        partial.unlink(missing_ok=True)  # its last epoch leads to the same divergence
        raise
    cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": cpu_state, "history": history,
                       "config": json.dumps(config, sort_keys=True, default=str)}, final, key=key)
    partial.unlink(missing_ok=True)
    return model, {"key": key, "cached": False, "history": history}


def _configured_as(configs: list[dict[str, Any]]) -> Callable[[dict], str | None]:
    """A check for :func:`load_cache_entry`: the entry's stored configuration must be one of
    ``configs`` (a target's own, or an older spelling of it), as :func:`load_or_train` stores it;
    entries that store none pass."""
    accepted = {json.dumps(c, sort_keys=True, default=str) for c in configs}

    def check(blob: dict) -> str | None:
        text = blob.get("config")
        if not isinstance(text, str) or text in accepted:
            return None
        return f"it was trained for another configuration ({text[:60]})"
    return check


def load_cache_entry(path: Path, model: nn.Module,
                     check: Callable[[dict], str | None] | None = None) -> dict | None:
    """Load the cached weights at ``path`` into ``model`` and return the file's content, or
    ``None`` (after setting the file aside with a one-line notice) when it is damaged: its
    digest does not match, it cannot be read, it is a valid entry stored under another key
    (:func:`~mcmia_helpers.io.load_verified`), ``check(content)`` names a reason (the entry's
    stored identity is not the one asked for), or it does not fit ``model`` strictly. A legacy
    entry (no digest) that loads fully and strictly is re-saved with its digest. Used for every
    cached model: targets (:func:`load_or_train`) and shadow models alike."""
    try:
        blob, had_digest = load_verified(path)
        reason = check(blob) if check is not None else None
        if reason is not None:
            raise DamagedFile(reason)
        model.load_state_dict(blob["state_dict"])
        if "history" in blob:
            blob["history"] = list(blob["history"])
    except (DamagedFile, KeyError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, DamagedFile) else f"{type(exc).__name__}: {str(exc)[:100]}"
        set_aside(path, reason, "training the model again")
        return None
    if not had_digest or KEY_FIELD not in blob:  # legacy: checked as far as it can be, upgraded
        try:
            atomic_torch_save(blob, path, key=entry_key(path))
        except UserError:
            pass  # a read-only cache: keep using the legacy entry as it is
    return blob


def _load_cached_model(path: Path, model: nn.Module, check: Callable[[dict], str | None] | None = None
                       ) -> tuple[list[dict], dict] | None:
    """:func:`load_cache_entry` for a target: its history and the file's content, or ``None``."""
    blob = load_cache_entry(path, model, check)
    if blob is None or "history" not in blob:
        if blob is not None:
            set_aside(path, "no training history in the entry", "training the model again")
        return None
    return blob["history"], blob


def legacy_spellings(params: dict[str, Any], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """The ways ``params`` (canonical: defaults filled in, numbers typed) may have been spelt
    before they were canonical: each value at its default in ``defaults`` present or left out,
    each whole-number float also as an int (a grid's ``epsilon: 4``). For
    :func:`load_or_train`'s ``aliases``; ``params`` itself is not among them. Only values equal to
    their default may be left out, so no spelling names a different experiment."""
    absent = object()
    choices = []
    for name, value in sorted(params.items()):
        options = [value]
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            options.append(int(value))
        if name in defaults and defaults[name] == value:
            options.append(absent)
        choices.append([(name, option) for option in options])
    out = []
    for combo in itertools.product(*choices):
        spelling = {name: option for name, option in combo if option is not absent}
        if spelling != params or any(type(spelling[k]) is not type(params[k]) for k in spelling):
            out.append(spelling)
    return out
