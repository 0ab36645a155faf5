"""Train many shadow models of one architecture together (chapter 1, threat models).

Shadow models are the cost of membership inference: Shokri et al.'s attack wants a few, LiRA
wants 16 to 256. Training them one after another wastes most of the time on small kernels and
Python overhead, so :func:`train_models_batched` trains ``M`` models of one architecture *as
one network*: every parameter is stacked along a new first dimension (as
``torch.func.stack_module_state`` does), the activations of all models are laid side by side
in the channel dimension, and each layer runs once for all models:

* a convolution becomes one grouped convolution (``groups = M x groups``), in channels-last
  memory layout, which the CPU (oneDNN) and cuDNN both run well;
* a linear layer becomes one batched matrix product (``baddbmm``);
* BatchNorm and GroupNorm normalise per channel or per channel group, so one call over the
  ``M x C`` channels is exactly ``M`` independent normalisations, running statistics included;
* ReLU, pooling and flattening act per channel anyway; residual blocks add per channel.

``torch.func.vmap`` over ``functional_call`` computes the same thing, but on the CPU its
batching rule for convolutions (grouped convolutions in NCHW layout, plus layout copies) was
about twice as slow as training the models one by one on a 2-core CPU; the explicit grouped form
in channels-last layout is what makes batching pay off (``benchmarks/shadow_training.py``).

The loss is the *sum* of the models' mean cross-entropies, so each model's slice of the stacked
gradient is exactly its own gradient, and one Adam or SGD optimiser on the stacked tensors is
``M`` independent optimisers (both are elementwise, weight decay included). Each model ``i``
is initialised under ``torch.manual_seed(seeds[i])`` and trained with
``dataclasses.replace(config, seed=seeds[i])``: the same shuffles as
:func:`~mcmia_helpers.training.fit` (one ``torch.Generator`` per model, seeded
``seed * 100_003 + epoch``, which also drives augmentation), so batched and sequential training
(:func:`train_models_sequential`) give the same models up to float rounding (in float64 the
forward pass, gradients and BatchNorm statistics agree to 1e-14; in float32 rounding differences
grow slowly over many Adam steps, as between any two convolution kernels).

Supported in the grouped form: LeNet-5 and the small-image VGG16, MobileNetV2 and ResNet18
(with BatchNorm or GroupNorm), i.e. models whose forward applies their children in order, built
from ``Conv2d``, ``Linear``, ``BatchNorm2d``, ``GroupNorm``, ``ReLU``/``ReLU6``, pooling,
``Flatten``, ``Identity`` and the residual blocks of :mod:`mcmia_helpers.models`. Support is
checked numerically against the model's own forward; anything else (dropout, torchvision's
ImageNet models, a custom forward) falls back to sequential ``fit``, with the same results.
On a 2-core CPU batching gains most for LeNet-5; for MobileNetV2 and ResNet18 the grouped and
sequential paths cost about the same there, and batching pays off on a GPU.

*Group invariance.* A model's numbers do not depend on the group it trains (or predicts) in,
so a model retrained alone after damage, or in another group after an interrupt, is bit for bit
the model it replaces. Measured on the CPU (oneDNN, one thread; LeNet-5 and the small VGG16,
MobileNetV2 and ResNet18 on 1-channel images): every model's gradients in a group of 2 and of 4
to 40 stacked models are bit for bit the same, at any position; a group of one (ordinary, not
grouped, convolutions) and a group of three (a first convolution with 3 input channels in
all, for which oneDNN evidently picks another kernel: only that layer's gradient differs) round
differently, up to 2e-2 in a ResNet18 gradient, which a few epochs of Adam grow into whole-model
differences (8e-3 in ResNet18 x0.125 weights after 2 epochs; the probe of issue 23 saw 0.08 in
shadow weights and 0.56 in zoo logits after a retrain). Those two sizes therefore run padded
with a detached copy of the first model (:func:`padded_group_size`, :meth:`GroupedNet.forward`):
since then a model trained alone, in 2, 3, 5 or 9 equals itself bit for bit (LeNet-5 with and
without augmentation, ResNet18 x0.125, 3 epochs, weights and logits), and so do ci zoo models
retrained after damage (LeNet-5 on Fashion-MNIST, 20 epochs: dense models retrained in a group
of 2 and an ADMM-pruned model retrained alone, all trained first in groups of 4: identical
logits). The padding costs a lone model about 1.5x (LeNet-5 0.6 -> 0.9 s, ResNet18 x0.125
3.9 -> 5.6 s for 3 epochs on 256 digits, one CPU thread) and a group of three about 1.0-1.4x.
``tests/test_retrain_reproduces.py`` checks the invariance on the machine that runs the tests.
On a GPU it was not measured (no GPU was available): cuDNN chooses kernels by shape and some of
its weight-gradient kernels are not deterministic unless
``torch.use_deterministic_algorithms(True)``, so there bit-identity is not established and the
size of the difference is unknown.

Trained shadow models are cached like targets: :func:`load_or_train_models` keys each model by
its configuration, seed and training indices (:func:`shadow_identity`), stores key and identity
in the entry, trains only the missing ones (together, saving each group as it finishes, with an
epoch checkpoint of the group in training) and refuses an entry that is another model's.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.errors import UserError
from mcmia_helpers.io import (KEY_FIELD, atomic_torch_save, check_or_set_aside, entry_key,
                              load_verified)
from mcmia_helpers.models import BasicBlock, _InvertedResidual
from mcmia_helpers.training import (TrainConfig, _autocast, cache_dir, check_finite_model, config_key,
                                    epoch_seed, fit, get_device, make_optimizer, make_scheduler,
                                    load_cache_entry, predict_logits, query_precision)

ArchBuilder = Callable[[], nn.Module]

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.Identity)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm, nn.Flatten) + _ELEMENTWISE + _POOLS


# --------------------------------------------------------------------------- grouped executor


@dataclass
class _Node:
    """One step of the grouped network: a leaf layer, a stack, or a residual block."""

    kind: str  # "leaf", "seq", "basic" (ResNet), "inverted" (MobileNetV2)
    prefix: str = ""
    module: nn.Module | None = None
    children: list["_Node"] = field(default_factory=list)


def _plan(module: nn.Module, prefix: str = "", top: bool = True) -> _Node | None:
    """The grouped plan of ``module``, or ``None`` if a part of it is not supported.

    The top-level model is assumed to apply its children in registration order (LeNet-5 and
    the small VGG16, MobileNetV2 and ResNet18 all compute ``classifier(features(x))``);
    :meth:`GroupedNet.try_build` checks this numerically.
    """
    if isinstance(module, _LEAVES):
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            return None
        return _Node("leaf", prefix, module)
    named = list(module.named_children())
    if isinstance(module, (BasicBlock, _InvertedResidual)):
        body = _plan(module.body, prefix + "body.", False)
        shortcut = _plan(module.shortcut, prefix + "shortcut.", False)
        if body is None or shortcut is None:
            return None
        if isinstance(module, BasicBlock):
            relu = _Node("leaf", prefix + "relu.", module.relu)
            return _Node("basic", prefix, module, [body, shortcut, relu])
        return _Node("inverted", prefix, module, [body, shortcut])
    if not named or not (top or isinstance(module, nn.Sequential)):
        return None  # an unknown leaf, or a block with a forward of its own
    children = [_plan(child, f"{prefix}{name}.", False) for name, child in named]
    if any(c is None for c in children):
        return None
    # relu(maxpool(x)) == maxpool(relu(x)) with the same gradient (where a window's maximum is
    # not positive both give zero); pooling first makes the ReLU touch a quarter of the values.
    for i in range(len(children) - 1):
        a, b = children[i], children[i + 1]
        if (a.kind == "leaf" and b.kind == "leaf" and isinstance(a.module, (nn.ReLU, nn.ReLU6))
                and isinstance(b.module, nn.MaxPool2d)):
            children[i], children[i + 1] = b, a
    return _Node("seq", prefix, module, children)


def _first_leaf(node: _Node) -> _Node:
    while node.kind != "leaf":
        node = node.children[0]
    return node


class GroupedNet:
    """Runs ``M`` stacked copies of one architecture as one network (see the module docstring).

    ``params`` and ``buffers`` are dicts of stacked tensors (first dimension ``M``) keyed like
    ``model.state_dict()``; :meth:`forward` takes one input batch per model ``(M, B, C, H, W)``
    (or one shared batch ``(B, C, H, W)`` for all models) and returns logits ``(M, B, K)``.
    """

    def __init__(self, plan: _Node):
        self.plan = plan

    @classmethod
    def try_build(cls, template: nn.Module, example: torch.Tensor) -> "GroupedNet | None":
        """A :class:`GroupedNet` for ``template``'s architecture, or ``None`` if unsupported.

        Support is checked by running the grouped form of one copy of ``template`` on
        ``example`` (a small input batch), as a shared and as a per-model input, against
        ``template`` itself, in eval mode.
        """
        plan = _plan(template)
        if plan is None:
            return None
        net = cls(plan)
        probe = copy.deepcopy(template).eval().float()
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # non-trivial running statistics, so that eval-mode BN is checked too
            for m in probe.modules():
                if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        params, buffers = stack_states([probe])
        try:  # compared in float32, even inside a caller's autocast region
            with torch.no_grad(), torch.autocast(device_type=example.device.type, enabled=False):
                expected = probe(example)
                got = [net.forward(params, buffers, example, training=False)[0],
                       net.forward(params, buffers, example.unsqueeze(0), training=False)[0]]
        except (RuntimeError, ValueError, TypeError, KeyError):
            return None
        for out in got:
            if out.shape != expected.shape or not torch.allclose(out, expected, rtol=1e-4, atol=1e-5):
                return None
        return net

    def forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                x: torch.Tensor, training: bool) -> torch.Tensor:
        """Logits ``(M, B, K)``; ``x`` is ``(M, B, C, H, W)``, or ``(B, C, H, W)`` shared by all.

        A group of a size whose kernels round differently (:func:`padded_group_size`) runs
        padded with copies of its first model, so that every model's numbers are the same
        whatever group it trains or predicts in (see the module docstring, *group invariance*).
        """
        n_models = next(iter(params.values())).shape[0]
        padded = padded_group_size(n_models, _first_leaf(self.plan).module)
        if padded != n_models:
            return self._forward_padded(params, buffers, x, training, padded - n_models)
        return self._forward(params, buffers, x, training)

    def _forward_padded(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                        x: torch.Tensor, training: bool, extra: int) -> torch.Tensor:
        """:meth:`_forward` with ``extra`` detached copies of model 0 appended: the gradient of
        the real models is the slice of a concatenation (no arithmetic), the copies' outputs are
        dropped and the real models' buffers (BatchNorm statistics) are copied back."""
        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t[:1].detach().expand(extra, *t.shape[1:])])

        padded_params = {k: pad(v) for k, v in params.items()}
        padded_buffers = {k: pad(v).clone() for k, v in buffers.items()}
        out = self._forward(padded_params, padded_buffers, pad(x) if x.dim() == 5 else x, training)
        if training:
            with torch.no_grad():
                for k, v in buffers.items():
                    v.copy_(padded_buffers[k][:v.shape[0]])
        return out[:out.shape[0] - extra]

    def _forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 x: torch.Tensor, training: bool) -> torch.Tensor:
        n_models = next(iter(params.values())).shape[0]
        first = _first_leaf(self.plan)
        shared = x.dim() == 4 and isinstance(first.module, nn.Conv2d) and first.module.groups == 1
        if x.dim() == 4 and not shared:
            h = x.repeat(1, n_models, 1, 1)  # the same images for every model
        elif x.dim() == 4:
            h = x  # the first convolution applies every model's filters to the shared images
        else:
            m, b, c, hh, ww = x.shape
            h = x.transpose(0, 1).reshape(b, m * c, hh, ww)
        state = {"n": n_models, "params": params, "buffers": buffers, "training": training,
                 "flat": False, "shared": first if shared else None}
        h = self._run(self.plan, h.contiguous(memory_format=torch.channels_last), state)
        if not state["flat"]:
            raise ValueError("the network never flattens")
        return h

    def _run(self, node: _Node, h: torch.Tensor, state: dict) -> torch.Tensor:
        if node.kind == "seq":
            for child in node.children:
                h = self._run(child, h, state)
            return h
        if node.kind in ("basic", "inverted"):
            if state["flat"]:
                raise ValueError("residual block after flatten")
            out = self._run(node.children[0], h, state)
            if node.kind == "inverted" and node.module.stride != 1:
                return out
            out = out + self._run(node.children[1], h, state)
            return self._run(node.children[2], out, state) if node.kind == "basic" else out
        return self._leaf(node, h, state)

    def _leaf(self, node: _Node, h: torch.Tensor, state: dict) -> torch.Tensor:
        layer, prefix, n = node.module, node.prefix, state["n"]
        params, flat = state["params"], state["flat"]
        if isinstance(layer, nn.Conv2d):
            if flat:
                raise ValueError("convolution after flatten")
            w = params[prefix + "weight"]
            bias = params.get(prefix + "bias")
            groups = layer.groups * n
            if state["shared"] is node:  # shared input: one ordinary convolution, M x O filters
                groups, state["shared"] = 1, None
            return F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if bias is None else bias.reshape(-1),
                            layer.stride, layer.padding, layer.dilation, groups)
        if isinstance(layer, nn.Linear):
            if not flat:
                raise ValueError("linear layer before flatten")
            w, bias = params[prefix + "weight"], params.get(prefix + "bias")
            if bias is None:
                return torch.bmm(h, w.transpose(1, 2))
            return torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
        if isinstance(layer, nn.BatchNorm2d):
            return self._batch_norm(layer, prefix, params, state["buffers"], h, state["training"])
        if isinstance(layer, nn.GroupNorm):
            w, bias = params.get(prefix + "weight"), params.get(prefix + "bias")
            return F.group_norm(h, layer.num_groups * n, None if w is None else w.reshape(-1),
                                None if bias is None else bias.reshape(-1), layer.eps)
        if isinstance(layer, nn.Flatten):
            if flat or layer.start_dim != 1 or layer.end_dim not in (-1, 3):
                raise ValueError("unsupported flatten")
            state["flat"] = True
            return h.reshape(h.shape[0], n, -1).transpose(0, 1)
        if flat and isinstance(layer, _POOLS):
            raise ValueError("pooling after flatten")
        return layer(h)  # pooling (per channel); ReLU, ReLU6, Identity (elementwise)

    @staticmethod
    def _batch_norm(layer: nn.BatchNorm2d, prefix: str, params, buffers, h, training: bool):
        w, bias = params.get(prefix + "weight"), params.get(prefix + "bias")
        mean, var = buffers.get(prefix + "running_mean"), buffers.get(prefix + "running_var")
        factor = 0.0 if layer.momentum is None else layer.momentum
        if training and layer.track_running_stats:
            tracked = buffers.get(prefix + "num_batches_tracked")
            if tracked is not None:
                tracked.add_(1)
                if layer.momentum is None:
                    factor = 1.0 / float(tracked[0])
        use_batch_stats = training or mean is None
        return F.batch_norm(h, None if mean is None else mean.view(-1),
                            None if var is None else var.view(-1),
                            None if w is None else w.reshape(-1),
                            None if bias is None else bias.reshape(-1),
                            use_batch_stats, factor, layer.eps)


def padded_group_size(n_models: int, first: nn.Module | None = None) -> int:
    """The group size to run ``n_models`` stacked models at: ``n_models``, raised past the sizes
    whose kernels round differently from the others (see the module docstring, *group
    invariance*): one model (ordinary, not grouped, convolutions) and a first convolution with
    3 input channels in all."""
    in_channels = first.in_channels // first.groups if isinstance(first, nn.Conv2d) else 0
    size = max(2, n_models)
    while size == 3 or size * in_channels == 3:
        size += 1
    return size


def stack_states(models: Sequence[nn.Module]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stacked parameters (leaf tensors that require grad) and buffers of ``models``."""
    named_params = [dict(m.named_parameters()) for m in models]
    named_buffers = [dict(m.named_buffers()) for m in models]
    params = {k: torch.stack([p[k].detach() for p in named_params]).requires_grad_(True)
              for k in named_params[0]}
    buffers = {k: torch.stack([b[k].detach() for b in named_buffers]).clone()
               for k in named_buffers[0]}
    return params, buffers


def unstack_into(models: Sequence[nn.Module], params: dict[str, torch.Tensor],
                 buffers: dict[str, torch.Tensor]) -> None:
    """Copy slice ``i`` of the stacked tensors into ``models[i]``."""
    with torch.no_grad():
        for i, model in enumerate(models):
            state = {k: v[i].detach().clone() for k, v in {**params, **buffers}.items()}
            model.load_state_dict(state, strict=True)


def grouped_net_for(model: nn.Module, bundle: DatasetBundle) -> GroupedNet | None:
    """The grouped executor for ``model``'s architecture on ``bundle``'s images, if supported."""
    example = torch.randn(2, bundle.in_channels, bundle.image_size, bundle.image_size,
                          generator=torch.Generator().manual_seed(0))
    return GroupedNet.try_build(copy.deepcopy(model).cpu().float(), example)


# --------------------------------------------------------------------------- training


def _build_models(arch_builder: ArchBuilder, seeds: Sequence[int]) -> list[nn.Module]:
    """One model per seed, each initialised under ``torch.manual_seed(seed)``."""
    models = []
    for seed in seeds:
        torch.manual_seed(int(seed))
        models.append(arch_builder())
    return models


def _check_inputs(n_models: int, index_sets: Sequence[torch.Tensor], seeds: Sequence[int]) -> None:
    if n_models < 1:
        raise UserError(f"n_models must be at least 1 (got {n_models})")
    if len(index_sets) != n_models or len(seeds) != n_models:
        raise UserError(f"need one index set and one seed per model: got {len(index_sets)} index "
                        f"sets and {len(seeds)} seeds for {n_models} models")
    if any(len(idx) == 0 for idx in index_sets):
        raise UserError("cannot train a shadow model on an empty set: check the split sizes")


def train_models_sequential(arch_builder: ArchBuilder, n_models: int, bundle: DatasetBundle,
                            index_sets: Sequence[torch.Tensor], config: TrainConfig,
                            seeds: Sequence[int], *, device: torch.device | None = None,
                            progress: bool = False,
                            histories: list | None = None) -> list[nn.Module]:
    """The reference: model ``i`` built under ``seeds[i]``, trained by ``fit`` with ``seed=seeds[i]``.

    ``histories``, if given a list, receives each model's per-epoch history.
    """
    _check_inputs(n_models, index_sets, seeds)
    device = device or get_device()
    models = _build_models(arch_builder, seeds)
    for model, idx, seed in zip(models, index_sets, seeds):
        history = fit(model, bundle, idx, replace(config, seed=int(seed)), device=device,
                      progress=progress)
        if histories is not None:
            histories.append(history)
    return models


def restore_group_checkpoint(checkpoint: Path | None, params: dict[str, torch.Tensor],
                             buffers: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                             scheduler: Any, device: torch.device) -> dict | None:
    """Load a stacked group's epoch checkpoint into ``params``, ``buffers``, ``optimizer`` and
    ``scheduler`` in place and return its whole state; ``None`` (nothing changed) when there is
    none, or when it is damaged (set aside: the group starts from epoch 0). One home for the
    resume of every grouped loop (shadow models here, the zoo's phases in ``zoo.grouped``)."""
    if checkpoint is None or not check_or_set_aside(checkpoint, "training the group from epoch 0"):
        return None
    state, _ = load_verified(checkpoint, map_location=device)
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(state["params"][k])
        for k, v in buffers.items():
            v.copy_(state["buffers"][k])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    return state


def _train_group(net: GroupedNet, models: list[nn.Module], bundle: DatasetBundle,
                 index_sets: list[torch.Tensor], config: TrainConfig, seeds: list[int],
                 device: torch.device, progress: bool,
                 checkpoint: Path | None = None) -> list[list[dict]]:
    """Train ``models`` (equal-size index sets) together in place; return their histories.

    With ``checkpoint`` the group (stacked weights, buffers, optimiser, schedule, histories) is
    saved atomically after every epoch, and a killed run resumes from its last finished epoch
    with the same numbers (every shuffle derives from a model's seed and the epoch); a damaged
    checkpoint is set aside and the group starts from epoch 0.
    """
    from tqdm.auto import tqdm

    n_models = len(models)
    params, buffers = stack_states(models)
    params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    optimizer = make_optimizer(list(params.values()), config)
    scheduler = make_scheduler(optimizer, config)
    index_sets = [torch.as_tensor(idx, dtype=torch.long) for idx in index_sets]
    n = len(index_sets[0])
    histories: list[list[dict]] = [[] for _ in range(n_models)]
    start_epoch = 0
    state = restore_group_checkpoint(checkpoint, params, buffers, optimizer, scheduler, device)
    if state is not None:
        histories = json.loads(state["histories"])
        start_epoch = int(state["epoch"]) + 1
    bar = tqdm(range(start_epoch, config.epochs), disable=not progress, desc=f"{n_models} models",
               leave=False)
    for epoch in bar:
        gens = [torch.Generator().manual_seed(epoch_seed(s, epoch)) for s in seeds]
        orders = torch.stack([idx[torch.randperm(n, generator=g)] for idx, g in zip(index_sets, gens)])
        total_loss = torch.zeros(n_models, dtype=torch.float64)
        correct = torch.zeros(n_models, dtype=torch.long)
        for start in range(0, n, config.batch_size):
            chunk = orders[:, start:start + config.batch_size]
            if config.augment:  # each model's augmentation draws from its own generator, as in fit
                parts = [bundle.batch(c, augment=True, generator=g) for c, g in zip(chunk, gens)]
                x = torch.stack([p[0] for p in parts])
                y = torch.stack([p[1] for p in parts])
            else:
                x, y = bundle.batch(chunk.reshape(-1))
                x = x.view(n_models, -1, *x.shape[1:])
                y = y.view(n_models, -1)
            x, y = x.to(device), y.to(device)
            with _autocast(device, config.amp):
                logits = net.forward(params, buffers, x, training=True)
                losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                         reduction="none").view(n_models, -1).mean(1)
                loss = losses.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += losses.detach().double().cpu() * y.shape[1]
            correct += (logits.detach().argmax(-1) == y).sum(1).cpu()
        if scheduler is not None:
            scheduler.step()
        for i in range(n_models):
            histories[i].append({"epoch": epoch, "loss": float(total_loss[i]) / n,
                                 "acc": int(correct[i]) / n})
        if checkpoint is not None:
            atomic_torch_save({"params": {k: v.detach().cpu() for k, v in params.items()},
                               "buffers": {k: v.detach().cpu() for k, v in buffers.items()},
                               "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict() if scheduler is not None else {},
                               "histories": json.dumps(histories), "epoch": epoch},
                              checkpoint, key=entry_key(checkpoint))
    unstack_into(models, params, buffers)
    return histories


def train_models_batched(arch_builder: ArchBuilder, n_models: int, bundle: DatasetBundle,
                         index_sets: Sequence[torch.Tensor], config: TrainConfig,
                         seeds: Sequence[int], *, device: torch.device | None = None,
                         progress: bool = False, max_group: int | None = 32,
                         histories: list | None = None,
                         checkpoint: Path | None = None) -> list[nn.Module]:
    """Train ``n_models`` models of one architecture together; return them (on ``device``).

    Model ``i`` is built by ``arch_builder()`` under ``torch.manual_seed(seeds[i])`` and
    trained on ``bundle[index_sets[i]]`` with ``replace(config, seed=seeds[i])``: the same
    result as :func:`train_models_sequential` up to float rounding. Models with equal-size
    index sets train as one grouped network (at most ``max_group`` at a time, to bound memory);
    architectures the grouped form does not support fall back to sequential ``fit``.
    ``arch_builder`` should not reseed torch itself, or all models share one initialisation.
    ``histories``, if given a list, receives each model's per-epoch history. ``checkpoint`` (a
    path prefix) makes every group resumable after every epoch (files ``<checkpoint>.<j>.pt``,
    see ``_train_group``; the caller deletes them, :func:`drop_checkpoints`, once the models
    are saved). A model's numbers do not depend on which group it trains in (see the module
    docstring, *group invariance*), so resumed, regrouped and retrained models are the same.
    """
    _check_inputs(n_models, index_sets, seeds)
    device = device or get_device()
    models = _build_models(arch_builder, seeds)
    net = grouped_net_for(models[0], bundle)
    if net is None:  # unsupported architecture: same results, one model at a time
        out: list[list[dict]] = []
        for i, (model, idx, seed) in enumerate(zip(models, index_sets, seeds)):
            path = None if checkpoint is None else Path(f"{checkpoint}.{i}.pt")
            out.append(fit(model, bundle, idx, replace(config, seed=int(seed)), device=device,
                           progress=progress, checkpoint_path=path))
        if histories is not None:
            histories.extend(out)
        return models
    for model in models:
        model.to(device)
    max_group = max(1, max_group or n_models)
    by_size: dict[int, list[int]] = {}
    for i, idx in enumerate(index_sets):
        by_size.setdefault(len(idx), []).append(i)
    found: dict[int, list[dict]] = {}
    for members in by_size.values():
        for start in range(0, len(members), max_group):
            group = members[start:start + max_group]
            path = None if checkpoint is None else Path(f"{checkpoint}.{group[0]}.pt")
            hist = _train_group(net, [models[i] for i in group], bundle,
                                [index_sets[i] for i in group], config,
                                [int(seeds[i]) for i in group], device, progress, path)
            found.update(zip(group, hist))
    if histories is not None:
        histories.extend(found[i] for i in range(n_models))
    return models


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def predict_logits_many(models: Sequence[nn.Module], bundle: DatasetBundle, indices: torch.Tensor,
                        *, batch_size: int = 512, device: torch.device | None = None,
                        max_group: int = 32) -> torch.Tensor:
    """Logits of every model on the same ``indices``: a float32 CPU tensor ``(M, N, K)``, computed
    in float32 (see :func:`~mcmia_helpers.training.query_precision`).

    Models of a supported architecture run together (``max_group`` at a time) as one grouped
    network in eval mode; any other architecture runs model by model through
    :func:`~mcmia_helpers.training.predict_logits`.
    """
    indices = torch.as_tensor(indices, dtype=torch.long)
    if not models:
        return torch.empty(0, len(indices), bundle.num_classes)
    device = device or next(models[0].parameters()).device
    net = grouped_net_for(models[0], bundle)
    if net is None:
        return torch.stack([predict_logits(m.to(device), bundle, indices, batch_size, device)
                            for m in models])
    groups, step = [], max(1, max_group)
    for start in range(0, len(models), step):
        chunk = [m.float() for m in models[start:start + step]]
        params, buffers = stack_states(chunk)
        params = {k: v.detach().to(device) for k, v in params.items()}
        buffers = {k: v.to(device) for k, v in buffers.items()}
        out = []
        for first in range(0, len(indices), batch_size):
            x, _ = bundle.batch(indices[first:first + batch_size])
            with query_precision(device):  # float32: attacks read these logits
                out.append(net.forward(params, buffers, x.to(device), training=False).float().cpu())
        groups.append(torch.cat(out, dim=1) if out else torch.empty(len(chunk), 0, bundle.num_classes))
    return torch.cat(groups)


# --------------------------------------------------------------------------- cache


def _digest(indices: torch.Tensor) -> str:
    data = torch.as_tensor(indices, dtype=torch.long).cpu().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class ShadowSpec:
    """One shadow model to have: its training indices and seed (the rest is shared)."""

    indices: torch.Tensor
    seed: int


def shadow_identity(base_config: dict[str, Any], spec: ShadowSpec, config: TrainConfig) -> dict[str, Any]:
    """What identifies one shadow model (JSON-normalised): ``base_config`` (architecture, data,
    width...), its training configuration with its own seed, and its training indices (size and
    hash). Its :func:`~mcmia_helpers.training.config_key` is the model's cache key."""
    model_config = {**base_config, "role": "shadow", "n_train": int(len(spec.indices)),
                    "indices_sha256": _digest(spec.indices),
                    "train": replace(config, seed=int(spec.seed)).to_dict()}
    return json.loads(json.dumps(model_config, sort_keys=True, default=str))


def drop_checkpoints(prefix: Path) -> None:
    """Delete the epoch checkpoints ``<prefix>.<j>.pt`` of :func:`train_models_batched`."""
    for path in prefix.parent.glob(prefix.name + ".*.pt"):
        path.unlink(missing_ok=True)


def load_or_train_models(base_config: dict[str, Any], arch_builder: ArchBuilder,
                         bundle: DatasetBundle, specs: Sequence[ShadowSpec], config: TrainConfig, *,
                         device: torch.device | None = None, progress: bool = False,
                         cache: str | None = None,
                         group_size: int = 32) -> tuple[list[nn.Module], dict[str, Any]]:
    """The models of ``specs``, from the cache where there, the missing ones trained together.

    Each model's cache key is that of its :func:`shadow_identity` (``base_config`` plus its
    training configuration with its own seed and a hash of its training indices), so a model is
    shared by every experiment that would train exactly it (e.g. by all defences of one target).
    Returns the models (on the CPU) and ``{"cached": n_loaded, "trained": n_trained, "keys": [...]}``.

    The missing models train ``group_size`` at a time; each group's models are saved as soon as
    it finishes, and the group in training keeps an epoch checkpoint, so an interrupt loses at
    most one epoch of one group (the rerun loads the saved models and resumes the group). A
    model's seed and data order come from its spec alone and the grouped engine gives every
    model the same numbers whatever its group (the module docstring, *group invariance*), so a model retrained
    alone after damage, or resumed, is bit for bit the model it replaces.

    Each entry stores its key and identity inside its digested content. A cached model is set
    aside with a one-line notice and trained again with the missing ones when it is damaged
    (unreadable, digest mismatch, wrong shapes) or is another model's valid entry (its stored
    key or identity is not this model's). An entry written before identities were stored is
    trusted when its stored seed is the spec's and it loads strictly, and is then re-saved with
    its key (a copy of another shadow model has another seed, so it is caught too). A model whose
    weights turn non-finite raises :class:`~mcmia_helpers.errors.TrainingDiverged` and nothing
    of it is cached.
    """
    folder = cache_dir(cache)
    identities = [shadow_identity(base_config, spec, config) for spec in specs]
    keys = [config_key(identity) for identity in identities]
    models: list[nn.Module | None] = [None] * len(specs)
    missing = []
    for i, (spec, key) in enumerate(zip(specs, keys)):
        path = folder / f"{key}.pt"
        model = _load_cached_shadow(path, arch_builder, int(spec.seed)) if path.exists() else None
        if model is not None:
            models[i] = model
        else:
            missing.append(i)
    if missing:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the model cache {folder} ({exc.strerror}): set "
                            "MCMIA_CACHE to a writable folder") from None
    step = max(1, int(group_size))
    for start in range(0, len(missing), step):
        group = missing[start:start + step]
        checkpoint = folder / f"shadow-group-{config_key({'shadow_group': [keys[i] for i in group]})}"
        trained = train_models_batched(arch_builder, len(group), bundle,
                                       [specs[i].indices for i in group], config,
                                       [specs[i].seed for i in group], device=device,
                                       progress=progress, max_group=len(group),
                                       checkpoint=checkpoint)
        for model in trained:
            check_finite_model(model)
        for i, model in zip(group, trained):
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            atomic_torch_save({"state_dict": state, "seed": int(specs[i].seed),
                               "identity": json.dumps(identities[i], sort_keys=True)},
                              folder / f"{keys[i]}.pt", key=keys[i])
            models[i] = model.cpu()
        drop_checkpoints(checkpoint)
    info = {"cached": len(specs) - len(missing), "trained": len(missing), "keys": keys}
    return [m for m in models if m is not None], info


def _shadow_check(path: Path, seed: int) -> Callable[[dict], str | None]:
    """:func:`~mcmia_helpers.training.load_cache_entry`'s check of a shadow entry: it stores this
    model's seed, and its stored identity (where it has one: entries written before identities
    were stored have none) hashes to its key (the stored key is checked against the file name
    on load)."""
    def check(blob: dict) -> str | None:
        stored = blob.get("seed")
        if not isinstance(stored, int) or isinstance(stored, bool) or stored != seed:
            return f"it is the entry of another shadow model (seed {stored!r}, not {seed})"
        text = blob.get("identity")
        if text is None:
            return None
        try:
            found = config_key(json.loads(text)) if isinstance(text, str) else None
        except (ValueError, TypeError):
            found = None
        if found != blob.get(KEY_FIELD, entry_key(path)):
            return "its stored identity is not the one its key stands for"
        return None
    return check


def _load_cached_shadow(path, arch_builder: ArchBuilder, seed: int) -> nn.Module | None:
    """A cached shadow model, or ``None`` (after a one-line notice) when its file is damaged or
    holds another model (see :func:`load_or_train_models`)."""
    torch.manual_seed(seed)
    model = arch_builder()
    return model if load_cache_entry(path, model, _shadow_check(Path(path), seed)) is not None else None
