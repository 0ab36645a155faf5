"""What pruning buys: sparsity, compression ratio, FLOPs, bytes on disk and CPU latency.

Introduced in the pruning chapter. Every number here is counted from the model itself, never
taken from the pruning targets, so a report cannot claim a compression that the weights do not
have:

* **sparsity** per prunable layer (conv and linear weights, the layers ADMM prunes) and in total;
* **compression ratio**, the usual ``total / nonzero``, reported twice: over *all* parameters
  (biases and norm layers included, which are never pruned; ``compression_ratio``) and over the
  prunable weights only (``compression_ratio_prunable``, the number pruning papers quote);
* **FLOPs**, counted as multiply-accumulates (one MAC = one FLOP here, the convention of thop and
  ptflops) of every conv and linear layer, measured with forward hooks on one input; the
  *effective* count scales each layer by its weight density (what a sparse kernel would do);
* **size on disk**: the state dict saved densely with ``torch.save`` vs saved in our sparse
  format (:func:`save_sparse`);
* **CPU latency** (:func:`measure_latency`, :func:`compare_latency`), which only structured
  pruning (:func:`~mcmia_helpers.defences.pruning.prune_filters`) can lower: unstructured zeros
  still cost a dense multiply.

The sparse format (``FORMAT_VERSION`` 1) is one ``np.savez_compressed`` archive. For tensor
number ``i`` of the state dict (in order) it holds either ``t{i}_dense`` (the tensor as is) or,
when that is smaller, ``t{i}_mask`` (``np.packbits`` of ``tensor != 0``, row-major) and
``t{i}_values`` (the nonzero values in that order, float32 or float16); ``meta`` is a JSON
string with the format version, the value dtype and, per tensor, its key, shape, torch dtype and
encoding. With float32 values a model round-trips exactly (-0.0 comes back as 0.0).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mcmia_helpers.errors import UserError

FORMAT_VERSION = 1
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


# --------------------------------------------------------------------------- what is prunable


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights pruning may zero: every ``Conv2d`` and ``Linear``, by module name.

    Biases and normalisation layers are left dense (they are a tiny share of the parameters
    and zeroing them does not save multiplications).
    """
    return {name: module for name, module in model.named_modules()
            if isinstance(module, PRUNABLE_TYPES) and isinstance(getattr(module, "weight", None),
                                                                  torch.Tensor)}


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer computes with: ``weight`` (already masked under ``torch.nn.utils.prune``)."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def sparsity_per_layer(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights in each prunable layer, counted from the weights."""
    out = {}
    for name, module in prunable_layers(model).items():
        weight = effective_weight(module)
        out[name] = 1.0 - int(torch.count_nonzero(weight)) / weight.numel()
    return out


# --------------------------------------------------------------------------- FLOPs


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one conv/linear call producing ``out`` (per example)."""
    per_example = out[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_example * (module.in_channels // module.groups) * kh * kw
    return per_example * module.in_features  # Linear: every output sums in_features products


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Dense multiply-accumulates per prunable layer for one example of ``input_shape``.

    ``input_shape`` is ``(C, H, W)`` or ``(1, C, H, W)``. Measured with forward hooks, so
    layers that run twice count twice and layers never called count zero.
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or shape[0] != 1:
        raise UserError(f"input_shape {tuple(input_shape)} is not (C, H, W): use e.g. (1, 28, 28)")
    layers = prunable_layers(model)
    macs = {name: 0 for name in layers}
    handles = []
    for name, module in layers.items():
        def hook(mod, _inp, out, name=name):
            macs[name] += _layer_macs(mod, out)
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros(shape, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return macs


# --------------------------------------------------------------------------- sparse format


def _encode(state: dict[str, torch.Tensor], value_dtype: str) -> tuple[dict[str, np.ndarray], dict]:
    if value_dtype not in _NP_DTYPES:
        raise UserError(f"value_dtype '{value_dtype}' is not supported: use float32 or float16")
    np_value = _NP_DTYPES[value_dtype]
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for i, (key, tensor) in enumerate(state.items()):
        tensor = tensor.detach().cpu()
        entry = {"key": key, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        if tensor.is_floating_point() and tensor.dtype != torch.float64:  # float64 stays exact
            flat = tensor.reshape(-1).float().numpy()
            nonzero = flat != 0
            nnz = int(nonzero.sum())
            sparse_bytes = nnz * np.dtype(np_value).itemsize + (flat.size + 7) // 8
            if sparse_bytes < flat.size * tensor.element_size():
                arrays[f"t{i}_mask"] = np.packbits(nonzero)
                arrays[f"t{i}_values"] = flat[nonzero].astype(np_value)
                entry["encoding"] = "mask+values"
                entries.append(entry)
                continue
            arrays[f"t{i}_dense"] = flat.reshape(tuple(tensor.shape)).astype(np.float32) \
                if tensor.dtype == torch.bfloat16 else tensor.numpy()
        else:
            arrays[f"t{i}_dense"] = tensor.numpy()
        entry["encoding"] = "dense"
        entries.append(entry)
    meta = {"format": "mcmia-sparse", "version": FORMAT_VERSION, "value_dtype": value_dtype,
            "tensors": entries}
    return arrays, meta


def _write_npz(handle, arrays: dict[str, np.ndarray], meta: dict, compress: bool = True) -> None:
    save = np.savez_compressed if compress else np.savez
    save(handle, meta=np.array(json.dumps(meta)), **arrays)


def save_sparse(model: nn.Module | dict[str, torch.Tensor], path: str | os.PathLike,
                value_dtype: str = "float32") -> Path:
    """Save ``model``'s state dict in the sparse format (see the module docstring); return the path.

    ``value_dtype="float16"`` halves the stored values (lossy); ``float32`` round-trips exactly.
    A layer under ``torch.nn.utils.prune`` is saved as shipped (its masked ``weight``, see
    :func:`shipped_state`). The file is written atomically.
    """
    from mcmia_helpers.io import atomic_write

    arrays, meta = _encode(shipped_state(model), value_dtype)
    return atomic_write(path, lambda handle: _write_npz(handle, arrays, meta))


def _decode(archive) -> dict[str, torch.Tensor]:
    meta = json.loads(str(archive["meta"]))
    if meta.get("format") != "mcmia-sparse" or meta.get("version") != FORMAT_VERSION:
        raise UserError(f"not an mcmia sparse file of version {FORMAT_VERSION}: save it again "
                        "with save_sparse")
    state = {}
    for i, entry in enumerate(meta["tensors"]):
        dtype = getattr(torch, entry["dtype"])
        shape = tuple(entry["shape"])
        if entry["encoding"] == "dense":
            tensor = torch.from_numpy(np.array(archive[f"t{i}_dense"])).to(dtype).reshape(shape)
        else:
            numel = int(np.prod(shape, dtype=np.int64))
            mask = np.unpackbits(archive[f"t{i}_mask"], count=numel).astype(bool)
            flat = np.zeros(numel, dtype=np.float32)
            flat[mask] = archive[f"t{i}_values"].astype(np.float32)
            tensor = torch.from_numpy(flat).to(dtype).reshape(shape)
        state[entry["key"]] = tensor
    return state


def load_sparse(path: str | os.PathLike, model: nn.Module | None = None):
    """Read a file written by :func:`save_sparse`: into ``model`` (returned), or as a state dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sparse model file {path} does not exist: write it with save_sparse first")
    with np.load(path, allow_pickle=False) as archive:
        state = _decode(archive)
    if model is None:
        return state
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{path} does not fit this model (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}): load it into the architecture it was saved from")
    device = next(iter(own.values())).device if own else torch.device("cpu")
    model.load_state_dict({k: v.to(device) for k, v in state.items()})
    return model


def dense_size_bytes(model: nn.Module | dict[str, torch.Tensor]) -> int:
    """Bytes of ``torch.save`` of the state dict: what a dense checkpoint costs on disk."""
    buffer = io.BytesIO()
    torch.save(shipped_state(model), buffer)
    return buffer.getbuffer().nbytes


def sparse_size_bytes(model: nn.Module | dict[str, torch.Tensor], value_dtype: str = "float32",
                      compress: bool = True) -> int:
    """Bytes of the model in the sparse format (what :func:`save_sparse` would write);
    ``compress=False``: the same arrays stored without deflate (raw sparse)."""
    arrays, meta = _encode(shipped_state(model), value_dtype)
    buffer = io.BytesIO()
    _write_npz(buffer, arrays, meta, compress)
    return buffer.getbuffer().nbytes


def dense_compressed_size_bytes(model: nn.Module | dict[str, torch.Tensor]) -> int:
    """Bytes of the dense state dict in the same deflate-compressed container as the sparse
    format (``np.savez_compressed``): the like-for-like baseline of a compressed sparse file."""
    state = shipped_state(model)
    arrays = {f"t{i}": (t.detach().cpu().float() if t.dtype == torch.bfloat16 else t.detach().cpu()).numpy()
              for i, t in enumerate(state.values())}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, keys=np.array(json.dumps(list(state))), **arrays)
    return buffer.getbuffer().nbytes


# --------------------------------------------------------------------------- the report

#: The keys of :func:`compression_report` that measure files (left out with ``file_sizes=False``).
FILE_SIZE_KEYS: tuple[str, ...] = (
    "size_dense_bytes", "size_sparse_raw_bytes", "size_ratio_raw", "size_dense_compressed_bytes",
    "size_sparse_bytes", "size_ratio_compressed", "sparse_value_dtype")


def shipped_state(model: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as the pruned model would be shipped, on the CPU.

    A layer under ``torch.nn.utils.prune`` saves ``weight_orig`` (dense) plus ``weight_mask``;
    here they become the one masked ``weight`` that ``prune.remove`` would leave. Keys are
    sorted, so the bytes do not depend on the order in which layers registered their tensors.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith("_mask") and key.removesuffix("_mask") + "_orig" in state:
            continue
        if key.endswith("_orig") and key.removesuffix("_orig") + "_mask" in state:
            base = key.removesuffix("_orig")
            out[base] = (tensor * state[base + "_mask"]).detach().cpu()
            continue
        out[key] = tensor.detach().cpu()
    return dict(sorted(out.items()))


def _parameter_names(model: nn.Module) -> set[str]:
    """State-dict keys of the model's parameters (``x.weight_orig`` counted as ``x.weight``)."""
    return {name.removesuffix("_orig") for name, _ in model.named_parameters()}


def compression_report(model: nn.Module, input_shape: tuple[int, ...],
                       value_dtype: str = "float32", file_sizes: bool = True) -> dict[str, Any]:
    """Sparsity, compression ratios, FLOPs and sizes of ``model``, counted from its weights.

    Returns a JSON-able dict: ``layers`` (per prunable layer: ``params``, ``nonzero``,
    ``sparsity``, ``flops_dense``, ``flops_effective``), ``sparsity_per_layer``,
    ``sparsity`` (over prunable weights), ``params_total``/``params_nonzero`` (all parameters),
    ``prunable_total``/``prunable_nonzero``, ``compression_ratio`` (all parameters),
    ``compression_ratio_prunable``, ``flops_dense``/``flops_effective`` (MACs of conv and
    linear layers for one example), and file sizes compared like for like: raw
    (``size_dense_bytes``, ``torch.save``; ``size_sparse_raw_bytes``, the sparse arrays without
    deflate; ``size_ratio_raw``) and compressed (``size_dense_compressed_bytes``, the dense
    arrays deflated in the same container; ``size_sparse_bytes``, :func:`save_sparse` with
    ``value_dtype``; ``size_ratio_compressed``). Deflate alone shrinks a dense file little
    (float weights compress poorly); comparing a deflated sparse file with a raw dense one
    would credit pruning with the compressor's gain. ``file_sizes=False`` leaves the file sizes
    and their ratios out (:data:`FILE_SIZE_KEYS`): they serialise and deflate every weight (tens
    of seconds for a 550 MB VGG16), which a model nobody ships, such as an attacker's
    defence-aware shadow model, does not need.
    """
    macs = count_macs(model, input_shape)
    layers: dict[str, dict[str, Any]] = {}
    for name, module in prunable_layers(model).items():
        weight = effective_weight(module)
        nonzero = int(torch.count_nonzero(weight))
        density = nonzero / weight.numel()
        layers[name] = {"params": weight.numel(), "nonzero": nonzero, "sparsity": 1.0 - density,
                        "flops_dense": macs[name], "flops_effective": macs[name] * density}
    state = shipped_state(model)
    param_keys = {key for key in state if key in _parameter_names(model)}
    total = sum(state[k].numel() for k in param_keys)
    nonzero_all = sum(int(torch.count_nonzero(state[k])) for k in param_keys)
    prunable_total = sum(v["params"] for v in layers.values())
    prunable_nonzero = sum(v["nonzero"] for v in layers.values())
    report = {
        "layers": layers,
        "sparsity_per_layer": {name: v["sparsity"] for name, v in layers.items()},
        "sparsity": 1.0 - prunable_nonzero / max(1, prunable_total),
        "params_total": total,
        "params_nonzero": nonzero_all,
        "prunable_total": prunable_total,
        "prunable_nonzero": prunable_nonzero,
        "compression_ratio": total / max(1, nonzero_all),
        "compression_ratio_prunable": prunable_total / max(1, prunable_nonzero),
        "flops_dense": int(sum(v["flops_dense"] for v in layers.values())),
        "flops_effective": int(round(sum(v["flops_effective"] for v in layers.values()))),
    }
    if not file_sizes:
        return report
    size_dense = dense_size_bytes(state)
    size_sparse = sparse_size_bytes(state, value_dtype)
    size_sparse_raw = sparse_size_bytes(state, value_dtype, compress=False)
    size_dense_compressed = dense_compressed_size_bytes(state)
    report.update({
        "size_dense_bytes": size_dense,
        "size_sparse_raw_bytes": size_sparse_raw,
        "size_ratio_raw": size_dense / max(1, size_sparse_raw),
        "size_dense_compressed_bytes": size_dense_compressed,
        "size_sparse_bytes": size_sparse,
        "size_ratio_compressed": size_dense_compressed / max(1, size_sparse),
        "sparse_value_dtype": value_dtype,
    })
    return report


# --------------------------------------------------------------------------- latency


@torch.inference_mode()
def _time_once(model: nn.Module, x: torch.Tensor,
               clock: Callable[[], float] = time.perf_counter) -> float:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    start = clock()
    model(x)
    if x.is_cuda:  # kernels run asynchronously: wait for them before stopping the clock
        torch.cuda.synchronize(x.device)
    return clock() - start


def measure_latency(model: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``model`` (eval mode) on ``x``, on its device.

    The median of ``repeats`` timed passes after ``warmup`` untimed ones, so one stall of a
    shared machine does not move the number. Runs on CPU tensors as given; ``x`` is moved to
    the model's device.
    """
    if repeats < 1:
        raise UserError(f"repeats {repeats} must be at least 1: use e.g. 20")
    was_training = model.training
    model.eval()
    x = x.to(next(model.parameters()).device)
    try:
        for _ in range(warmup):
            _time_once(model, x)
        times = [_time_once(model, x) for _ in range(repeats)]
    finally:
        model.train(was_training)
    return float(np.median(times))


def compare_latency(models: dict[str, nn.Module], x: torch.Tensor, repeats: int = 20,
                    warmup: int = 3, clock: Callable[[], float] = time.perf_counter
                    ) -> dict[str, float]:
    """Median forward seconds of several models on ``x``, measured side by side.

    The passes are interleaved (one pass of each model per round), so a slowdown of the
    machine hits every model alike and the ratios stay meaningful on a shared CPU.
    ``clock`` is wall-clock time by default. On an oversubscribed CPU a long pass is preempted
    more often than a short one, which inflates wall-clock ratios; ``time.thread_time`` counts
    only the CPU time of the calling thread, which preemption does not inflate (a CPU-only
    measure, meaningful with ``torch.set_num_threads(1)``, where the pass runs in that thread).
    """
    if repeats < 1:
        raise UserError(f"repeats {repeats} must be at least 1: use e.g. 20")
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        inputs = {}
        for name, m in models.items():
            m.eval()
            inputs[name] = x.to(next(m.parameters()).device)
        for round_ in range(warmup + repeats):
            for name, m in models.items():
                elapsed = _time_once(m, inputs[name], clock)
                if round_ >= warmup:
                    times[name].append(elapsed)
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {name: float(np.median(t)) for name, t in times.items()}
