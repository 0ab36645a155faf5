"""Training a model zoo: every model on its half of the pool, cached one file per model.

A zoo (see :mod:`mcmia_helpers.zoo.membership`; Carlini et al. 2022) is ``N`` models of one
recipe. Each model is cached in its own file, keyed by its full recipe (architecture, data and
view, width, training configuration with the model's own seed, defence and its parameters,
and hashes of its members, the pool and the pool's labels), holding its weights, its logits
on the whole pool and its test accuracy. So

* a killed zoo resumes: what was saved stays, only the missing models train. Models trained
  together (dense, dense-long and pruned zoos, in groups of ``group_size`` on the grouped
  engine) checkpoint the whole group after every epoch (:func:`group_checkpoint`), so a kill
  loses at most the epoch in training; models trained one at a time (Min-Max, DP-SGD,
  iterative pruning) resume from their defence trainer's own epoch checkpoints;
* a zoo can be trained anywhere, in parts: :func:`train_zoo_models` puts any models of it into
  the cache (``zoo --train-only --model-range A:B``, one task of a cluster array), and processes
  sharing one cache never train a model twice (a per-model claim, :mod:`~mcmia_helpers.zoo.claims`;
  entries are written atomically). Models train together in aligned blocks
  (:func:`model_blocks`), so an aligned range gives the same models as the whole zoo, bit for bit;
* a zoo with more models reuses the first ones (their members and seeds do not depend on N);
* an entry knows whose it is: it stores its key and identity (the recipe the key hashes) in its
  digested content, and a load checks them, the seed, the logits' shape (pool, classes) and a
  dense model's weight shapes (``_check_entry``), so another model's valid entry, or one
  with half its logits, is set aside and retrained; the retrained model is bit for bit the one
  it replaces (its seed and data order are its own, and the grouped engine gives a model the
  same numbers in every group: :mod:`mcmia_helpers.shadow`, *group invariance*);
* the zoo of a defence reuses the dense zoo's halves and seeds: model ``i`` of every zoo trains
  on row ``i`` of one membership matrix, initialised and shuffled with seed
  :func:`~mcmia_helpers.zoo.membership.model_seed` ``(seed, i)``.

Zoos by defence:

``none``        the dense zoo, trained together on the grouped engine
                (:func:`~mcmia_helpers.shadow.train_models_batched`);
``dense-long``  dense model ``i`` trained on for as many more epochs as pruning takes after
                it (``admm_epochs + retrain_epochs``, a fresh optimiser as in each pruning
                phase), together on the grouped engine: "dense trained as long as the pruned
                models", continuing the dense models rather than starting over;
``prune``       dense model ``i`` pruned (ADMM or magnitude) and retrained on its own members,
                together on the grouped engine (:mod:`mcmia_helpers.zoo.grouped`) with the
                recipe of the ``prune`` defence's trainer; iterative pruning, filter pruning
                (narrow VGG16 models: each entry records its conv widths, ``conv_channels``,
                from which ``_model_from`` rebuilds it) and anything the engine cannot run
                go through that trainer, one model at a time;
other defences  (``minmax``, ``prune+minmax``, ``dp``) through their registered trainer on
                model ``i``'s members and seed, one model at a time.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from mcmia_helpers.context import ExperimentSpec, TargetContext, arch_view
from mcmia_helpers.data import DATASETS, MIASplit, load_dataset
from mcmia_helpers.defences import (DEFENSES, PARAM_VALIDATORS, check_defense_name,
                                    validate_defense_params)
from mcmia_helpers.defences.pruning import (PRUNING_CHOICES, STRUCTURED, ADMMSettings,
                                            check_pruning_arch, conv_channels,
                                            default_sparsity_profile,
                                            resolve_sparsity, train_pruned, vgg_with_channels)
from mcmia_helpers.errors import UserError
from mcmia_helpers.io import (KEY_FIELD, DamagedFile, atomic_torch_save, load_verified, notice,
                              set_aside)
from mcmia_helpers.models import ARCHITECTURES, build_model
from mcmia_helpers.scales import SCALES, ZooScale, get_scale, zoo_scale
from mcmia_helpers.shadow import predict_logits_many, train_models_batched
from mcmia_helpers.training import TrainConfig, cache_dir, check_finite_model, config_key, get_device
import mcmia_helpers.zoo.claims as claims
from mcmia_helpers.zoo.grouped import continue_training, prune_models_batched, train_new_models
from mcmia_helpers.zoo.membership import (ZooPool, check_zoo_sizes, digest, draw_pool,
                                          labelled_bundle, membership_matrix, model_seed)

#: Bump when a change to zoo training makes cached zoo models wrong.
ZOO_VERSION = 1
#: A zoo-only defence, the dense models trained on for as long as pruning trains after them.
DENSE_LONG = "dense-long"


def zoo_defences() -> tuple[str, ...]:
    """Every defence a zoo can have: the registered ones and ``dense-long``."""
    return tuple(sorted(DEFENSES)) + (DENSE_LONG,)


@dataclass
class ZooSpec:
    """What zoo to build: architecture, data (with stand-in), scale, defence, sizes, seed.

    ``n_models``, ``pool`` and ``canaries`` default (``None``) to the scale's
    :class:`~mcmia_helpers.scales.ZooScale`.
    """

    arch: str
    dataset: str
    scale: str = "ci"
    defense: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    n_models: int | None = None
    pool: int | None = None
    canaries: int | None = None
    seed: int = 0
    standin: str | None = None

    def validate(self) -> "ZooSpec":
        """Check every name and parameter that needs no data (one-line UserError); returns self."""
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture '{self.arch}': choose one of {', '.join(ARCHITECTURES)}")
        for name in (self.dataset, self.standin):
            if name is not None and name not in DATASETS:
                raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
        if self.scale not in SCALES:
            raise UserError(f"unknown scale '{self.scale}': use --scale {', '.join(SCALES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed {self.seed!r} is not a non-negative integer: use e.g. --seed 0")
        if self.defense == DENSE_LONG:
            if self.params:
                raise UserError(f"--defense {DENSE_LONG} takes no parameters: drop "
                                + ", ".join("--" + k.replace("_", "-") for k in self.params))
        else:
            if self.defense not in DEFENSES:
                raise UserError(f"unknown defense '{self.defense}': choose one of {', '.join(zoo_defences())}")
            check_defense_name(self.defense)
            check_pruning_arch(validate_defense_params(self.defense, self.params), self.arch)
        zoo_scale(self.scale, self.arch)  # the architecture has zoo sizes at this scale
        check_zoo_sizes(self.models(), self.pool_size(), self.n_canaries(), 10**12, 0, 0, "")
        return self

    def sizes(self) -> ZooScale:
        return zoo_scale(self.scale, self.arch)

    def models(self) -> int:
        return self.n_models if self.n_models is not None else self.sizes().models_for(self.defense)

    def pool_size(self) -> int:
        return self.pool if self.pool is not None else self.sizes().pool

    def n_canaries(self) -> int:
        return self.canaries if self.canaries is not None else self.sizes().canaries

    def normalised_params(self) -> dict[str, Any]:
        """The defence's parameters with its defaults filled in (one cache key however spelled)."""
        return normalise_params(self.defense, self.params)


def normalise_params(defense: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of ``defense`` with the defence's defaults filled in, as its validator returns
    them (so that ``--sparsity 0.9`` and no ``--sparsity`` name one zoo)."""
    validate = PARAM_VALIDATORS.get(defense)
    if validate is None or defense == DENSE_LONG:
        return dict(params)
    out = validate(dict(params))
    return dict(out if isinstance(out, dict) else params)


@dataclass
class ZooSetup:
    """A prepared zoo: the spec, sizes, the labelled data, the pool, the membership matrix and
    the base context (recipe, device) from which every model's context derives."""

    spec: ZooSpec
    sizes: ZooScale
    ctx: TargetContext
    zoo_pool: ZooPool
    membership: torch.Tensor

    @property
    def n_models(self) -> int:
        return int(self.membership.shape[0])

    def seeds(self, n: int | None = None) -> list[int]:
        return [model_seed(self.spec.seed, i) for i in range(n or self.n_models)]


def prepare_zoo(spec: ZooSpec, *, progress: bool = False,
                device: torch.device | None = None) -> ZooSetup:
    """Validate ``spec``, load the data (naming a stand-in), draw pool, canaries and membership.

    Everything a user can get wrong is reported here, as one line, before any training.
    """
    spec.validate()
    sizes = spec.sizes()
    arch_scale = get_scale(spec.scale).for_arch(spec.arch)
    arch_scale = replace(arch_scale, epochs=sizes.epochs or arch_scale.epochs,
                         width=sizes.width or arch_scale.width)
    standin = spec.standin
    bundle = load_dataset(spec.dataset, standin=standin,
                          needs=spec.pool_size() + sizes.test + sizes.reference)
    bundle = arch_view(spec.arch, bundle)
    check_zoo_sizes(spec.models(), spec.pool_size(), spec.n_canaries(), len(bundle), sizes.test,
                    sizes.reference, bundle.name_used)
    zoo_pool = draw_pool(bundle, spec.pool_size(), sizes.test, sizes.reference, spec.n_canaries(),
                         spec.seed)
    bundle = labelled_bundle(bundle, zoo_pool)
    membership = membership_matrix(spec.models(), spec.pool_size(), spec.seed)
    config = TrainConfig(epochs=arch_scale.epochs, batch_size=arch_scale.batch_size,
                         optimizer=arch_scale.optimizer, lr=arch_scale.lr,
                         weight_decay=arch_scale.weight_decay, schedule=arch_scale.schedule,
                         augment=bool(getattr(arch_scale, "augment", False)), seed=spec.seed)
    exp = ExperimentSpec(arch=spec.arch, dataset=spec.dataset, defense="none", scale=spec.scale,
                         seed=spec.seed, standin=standin, params={})
    split = _split_for(zoo_pool, membership[0], spec.seed, bundle.name_used)
    ctx = TargetContext(exp, arch_scale, bundle, split, config, device or get_device(), progress)
    return ZooSetup(spec, sizes, ctx, zoo_pool, membership)


def _split_for(zoo_pool: ZooPool, row: torch.Tensor, seed: int, dataset: str) -> MIASplit:
    split = MIASplit(members=zoo_pool.pool[row], nonmembers=zoo_pool.pool[~row],
                     shadow_pool=torch.empty(0, dtype=torch.long), reference=zoo_pool.reference,
                     test=zoo_pool.test, seed=int(seed), dataset=dataset)
    return split


def model_context(setup: ZooSetup, i: int, defense: str, params: dict[str, Any]) -> TargetContext:
    """The context of zoo model ``i`` with ``defense``: its members (row ``i``), its own seed,
    and cache entries that name the zoo pool and its labels (canaries)."""
    seed = model_seed(setup.spec.seed, i)
    split = _split_for(setup.zoo_pool, setup.membership[i], setup.spec.seed,
                       setup.ctx.bundle.name_used)
    spec = replace(setup.ctx.spec, seed=seed, defense=defense, params=dict(params))
    return replace(setup.ctx, spec=spec, split=split,
                   train_config=replace(setup.ctx.train_config, seed=seed),
                   cache_extra={"role": "zoo model", "zoo_version": ZOO_VERSION,
                                "members_sha256": digest(split.members),
                                **setup.zoo_pool.identity()})


class ZooKey(str):
    """A zoo model's cache key (the string) that also carries what it stands for: the model's
    identity (the recipe it hashes), its seed, and the shapes its entry must have (logits on
    the pool; the builder's weights for dense and dense-long models). ``_load_entry`` checks
    an entry against them before it is used."""

    identity: dict
    seed: int
    logits_shape: tuple[int, int]
    state_shapes: dict[str, tuple[int, ...]] | None

    def __new__(cls, key: str, identity: dict, seed: int, logits_shape: tuple[int, int],
                state_shapes: dict[str, tuple[int, ...]] | None) -> "ZooKey":
        self = super().__new__(cls, key)
        self.identity, self.seed = identity, int(seed)
        self.logits_shape, self.state_shapes = logits_shape, state_shapes
        return self

    def __reduce__(self):  # copies and pickles keep what the key stands for
        return (ZooKey, (str(self), self.identity, self.seed, self.logits_shape, self.state_shapes))


def model_key(setup: ZooSetup, i: int, defense: str, params: dict[str, Any]) -> ZooKey:
    """The cache key of zoo model ``i`` of ``defense``: its whole recipe (see the module doc)."""
    ctx = model_context(setup, i, defense, params)
    blob = {"zoo_model": ctx.cache_config(), "num_classes": ctx.bundle.num_classes,
            "dense_long_epochs": long_epochs(setup.ctx.train_config) if defense == DENSE_LONG else None}
    identity = json.loads(json.dumps(blob, sort_keys=True, default=str))
    shapes = _state_shapes(setup) if defense in ("none", DENSE_LONG) else None
    return ZooKey(config_key(identity), identity, ctx.train_config.seed,
                  (len(setup.zoo_pool.pool), ctx.bundle.num_classes), shapes)


def _state_shapes(setup: ZooSetup) -> dict[str, tuple[int, ...]]:
    """The weight shapes of the zoo's architecture as built (one template per setup)."""
    found = getattr(setup, "_state_shapes", None)
    if found is None:
        found = {k: tuple(v.shape) for k, v in _builder(setup)().state_dict().items()}
        setup._state_shapes = found
    return found


def long_epochs(config: TrainConfig) -> int:
    """How many epochs pruning trains after the dense model (``admm + retrain``, see
    :func:`~mcmia_helpers.defences.pruning.train_pruned`): what ``dense-long`` adds."""
    return 2 * max(1, config.epochs // 2)


# --------------------------------------------------------------------------- the zoo


@dataclass
class Zoo:
    """A trained zoo: per model its logits on the pool ``(N, P, K)``, test accuracy and seed.

    ``membership`` is the ``(N, P)`` matrix the models trained on; ``labels`` the pool's labels
    as trained (canaries carry their wrong label); ``canary`` marks the canaries; ``info`` says
    how many models came from the cache and how many were trained now, and how long that took.
    """

    defense: str
    params: dict[str, Any]
    logits: torch.Tensor
    membership: torch.Tensor
    labels: torch.Tensor
    canary: torch.Tensor
    test_acc: list[float]
    seeds: list[int]
    keys: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    extras: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_models(self) -> int:
        return int(self.logits.shape[0])

    @property
    def label(self) -> str:
        """``defense`` plus its parameters, e.g. ``prune(pruning=admm, sparsity=0.9)``."""
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()) if v is not None)
        return f"{self.defense}({shown})" if shown else self.defense

    def member_acc(self) -> list[float]:
        """Each model's accuracy on its own members (pool labels as trained)."""
        correct = self.logits.argmax(-1) == self.labels.unsqueeze(0)
        m = self.membership
        return [float(correct[i][m[i]].float().mean()) for i in range(self.n_models)]


def _path(key: str):
    return cache_dir() / "zoo" / f"{key}.pt"


def _check_entry(key: str, blob: dict) -> None:
    """Raise :class:`DamagedFile` unless ``blob`` is a whole entry of the model ``key`` stands
    for: every field there, logits of the pool's shape, a test accuracy, and (a :class:`ZooKey`)
    this model's seed, its identity (where stored) and the architecture's weight shapes.

    Entries written before keys and identities were stored (legacy: no ``cache_key``) are
    trusted when their seed and shapes are this model's, and re-saved with key and identity by
    ``_load_entry``: a copy of another model of the zoo has another seed and is caught.
    """
    for name in ("state_dict", "logits", "test_acc", "seed"):
        if name not in blob:
            raise DamagedFile(f"no {name} in the entry")
    logits, state = blob["logits"], blob["state_dict"]
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise DamagedFile("its logits are not a float tensor")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DamagedFile("its weights are not a state dict")
    if not isinstance(blob["test_acc"], float) or not 0.0 <= blob["test_acc"] <= 1.0:
        raise DamagedFile(f"its test accuracy {blob['test_acc']!r} is not a fraction")
    if not isinstance(key, ZooKey):
        return
    if tuple(logits.shape) != key.logits_shape:
        raise DamagedFile(f"logits of shape {tuple(logits.shape)}, not {key.logits_shape} "
                          "(pool size, classes)")
    if blob["seed"] != key.seed:
        raise DamagedFile(f"the entry of another model (seed {blob['seed']!r}, not {key.seed})")
    if "identity" in blob and blob["identity"] != json.dumps(key.identity, sort_keys=True):
        raise DamagedFile("the entry of another recipe (its stored identity is not this model's)")
    if key.state_shapes is not None and blob.get("conv_channels") is None:
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != key.state_shapes:
            wrong = sorted(set(found.items()) ^ set(key.state_shapes.items()))[:1]
            raise DamagedFile(f"weights that are not the architecture's (e.g. {wrong[0][0]})")


def _load_entry(key: str) -> dict | None:
    """The checked entry of zoo model ``key`` (``_check_entry``), or ``None`` when there is
    none or it was set aside (damaged, or another model's valid entry: one-line notice)."""
    path = _path(key)
    if not path.exists():
        return None
    try:
        blob, _ = load_verified(path, key=str(key))
        _check_entry(key, blob)
    except DamagedFile as exc:
        set_aside(path, str(exc), "training the zoo model again")
        return None
    if KEY_FIELD not in blob and isinstance(key, ZooKey):  # legacy: upgraded once it passed
        blob["identity"] = json.dumps(key.identity, sort_keys=True)
        with contextlib.suppress(UserError):  # a read-only cache: checked again next time
            atomic_torch_save(blob, path, key=str(key))
    return blob


def _save_entries(setup: ZooSetup, keys: Sequence[str], models: Sequence[nn.Module],
                  seeds: Sequence[int], extra: dict[str, Any]) -> list[dict]:
    """Logits of ``models`` on the pool and the test set (together on the grouped engine), then
    one atomic file per model; returns the saved entries."""
    for model in models:
        check_finite_model(model)
    models = [m.eval() for m in models]
    logits, test_logits = _logits(setup, models)
    test_labels = setup.ctx.bundle.labels[setup.zoo_pool.test]
    folder = cache_dir() / "zoo"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the model cache {folder} ({exc.strerror}): set MCMIA_CACHE "
                        "to a writable folder") from None
    out = []
    for key, model, seed, pool_logits, test in zip(keys, models, seeds, logits, test_logits):
        blob = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "logits": pool_logits.float().clone(),
                "test_acc": float((test.argmax(-1) == test_labels).float().mean()),
                "seed": int(seed), "extra": json.dumps(extra, sort_keys=True, default=str)}
        if extra.get("pruning") == STRUCTURED:  # a narrow model: its shapes are not the builder's
            blob["conv_channels"] = conv_channels(model)
        if isinstance(key, ZooKey):
            blob["identity"] = json.dumps(key.identity, sort_keys=True)
        atomic_torch_save(blob, _path(key), key=str(key))
        out.append(blob)
    return out


def group_checkpoint(keys: Sequence[str]) -> Path:
    """Where a group of zoo models trained together keeps its epoch checkpoints (a prefix: one
    file per phase), named by the group's model keys."""
    return cache_dir() / "zoo" / f"group-{config_key({'zoo_group': list(keys)})}"


def _drop_checkpoints(prefix: Path) -> None:
    for path in prefix.parent.glob(prefix.name + ".*.pt"):
        path.unlink(missing_ok=True)


def _logits(setup: ZooSetup, models: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    bundle, device = setup.ctx.bundle, setup.ctx.device
    models = [m.to(device) for m in models]
    pool = predict_logits_many(list(models), bundle, setup.zoo_pool.pool, device=device)
    test = predict_logits_many(list(models), bundle, setup.zoo_pool.test, device=device)
    return pool, test


def _builder(setup: ZooSetup, dp_compatible: bool = False) -> Callable[[], nn.Module]:
    ctx = setup.ctx

    def build() -> nn.Module:
        return build_model(ctx.spec.arch, num_classes=ctx.bundle.num_classes,
                           in_channels=ctx.bundle.in_channels, image_size=ctx.bundle.image_size,
                           width=ctx.arch_scale.width, dp_compatible=dp_compatible)
    return build


def _model_from(setup: ZooSetup, blob: dict) -> nn.Module:
    """The zoo model saved in ``blob``: the zoo's architecture, narrowed to the entry's
    ``conv_channels`` when it holds a filter-pruned VGG16, with the saved weights."""
    model = _builder(setup)()
    if blob.get("conv_channels") is not None:
        model = vgg_with_channels(model, list(blob["conv_channels"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()


class ZooModelsMissing(UserError):
    """Models of a zoo that are not in the cache when training is not allowed
    (``require_cached``); ``indices`` are the missing models, ``label`` names the zoo."""

    def __init__(self, label: str, indices: Sequence[int], n_models: int) -> None:
        self.label, self.indices, self.n_models = label, sorted(int(i) for i in indices), n_models
        super().__init__(f"{describe_indices(self.indices)} of the {label} zoo of {n_models} "
                         f"models are not in the model cache ({cache_dir()})")


def describe_indices(indices: Sequence[int]) -> str:
    """``model 3`` or ``models 0-3, 6`` (runs of consecutive indices joined)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    text = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
    return f"model{'s' if len(indices) != 1 else ''} {text}"


def train_zoo(setup: ZooSetup, defense: str = "none", params: dict[str, Any] | None = None,
              n_models: int | None = None, *, group_size: int = 16,
              progress: bool = False, batched_pruning: bool = True,
              require_cached: bool = False) -> Zoo:
    """The first ``n_models`` models of ``setup``'s zoo with ``defense``: cached ones loaded,
    missing ones trained (dense, dense-long and pruned zoos together, in the aligned blocks of
    ``group_size`` of :func:`model_blocks`, unless ``batched_pruning`` is off; other defences one
    at a time) and each saved as soon as it is done; a model another process is training is
    waited for (:mod:`~mcmia_helpers.zoo.claims`). With ``require_cached`` nothing trains: a
    missing model raises :class:`ZooModelsMissing`. See the module docstring."""
    params = normalise_params(defense, dict(params or {}))
    n = setup.n_models if n_models is None else int(n_models)
    if not 1 <= n <= setup.n_models:
        raise UserError(f"the zoo has {setup.n_models} models: ask for 1 to {setup.n_models}")
    if defense != DENSE_LONG:
        check_defense_name(defense)
    started = time.perf_counter()
    keys = [model_key(setup, i, defense, params) for i in range(n)]
    entries, counts = _ensure(setup, defense, params, list(range(n)), group_size=group_size,
                              progress=progress, batched_pruning=batched_pruning,
                              require_cached=require_cached)
    blobs = [entries[i] for i in range(n)]
    zoo = Zoo(defense=defense, params=params,
              logits=torch.stack([b["logits"] for b in blobs]),
              membership=setup.membership[:n].clone(), labels=setup.zoo_pool.labels,
              canary=setup.zoo_pool.canary, test_acc=[float(b["test_acc"]) for b in blobs],
              seeds=setup.seeds(n), keys=keys,
              info={"cached": counts["cached"], "trained": counts["trained"],
                    "seconds": round(time.perf_counter() - started, 3)},
              extras=[json.loads(b.get("extra") or "{}") for b in blobs])
    return zoo


def train_zoo_models(setup: ZooSetup, defense: str, params: dict[str, Any] | None,
                     indices: Sequence[int], *, group_size: int = 16, progress: bool = False,
                     batched_pruning: bool = True) -> dict[str, Any]:
    """Put models ``indices`` of ``setup``'s zoo with ``defense`` into the cache (trained where
    missing, as :func:`train_zoo` trains them) and return how many were ``cached`` (found,
    also after waiting for another process) and ``trained`` here, and the ``seconds``: one task
    of a zoo fanned out over a cluster (``zoo --train-only --model-range A:B``)."""
    params = normalise_params(defense, dict(params or {}))
    if defense != DENSE_LONG:
        check_defense_name(defense)
    bad = [i for i in indices if not 0 <= int(i) < setup.n_models]
    if bad:
        raise UserError(f"model {bad[0]} is not in the zoo of {setup.n_models} models: use "
                        f"indices from 0 to {setup.n_models - 1}")
    started = time.perf_counter()
    _, counts = _ensure(setup, defense, params, sorted({int(i) for i in indices}),
                        group_size=group_size, progress=progress, batched_pruning=batched_pruning)
    return {**counts, "seconds": round(time.perf_counter() - started, 3)}


def missing_models(setup: ZooSetup, defense: str, params: dict[str, Any] | None,
                   n_models: int | None = None) -> list[int]:
    """Which of the first ``n_models`` models of the zoo have no cache entry (a quick look at
    the files; a damaged entry counts as present until it is read)."""
    params = normalise_params(defense, dict(params or {}))
    n = setup.n_models if n_models is None else int(n_models)
    return [i for i in range(n) if not _path(model_key(setup, i, defense, params)).exists()]


def model_blocks(indices: Sequence[int], group_size: int) -> list[list[int]]:
    """``indices`` split into the aligned blocks that train together: model ``i`` trains with
    the other models ``j`` to train with ``j // group_size == i // group_size``. Blocks do not
    depend on which other models are cached or trained elsewhere, so a task that trains an
    aligned range (a multiple of ``group_size``, as ``zoo --print-commands`` gives by default)
    runs the same grouped computations as one process that trains the whole zoo, and gets the
    same models bit for bit. (A group of another composition gives the same models up to float
    summation noise. Measured on the 2-core CPU, torch 2.14, LeNet-5 ci zoo: one step's
    gradients are bit-identical for groups of 2 and of 4 to 16 against a group of 32, and 20
    epochs in groups of 2, 5, 6, 7, 11 and 16 give bit-identical models; a group of 1 runs a
    plain convolution and a group of 3 another first-layer weight-gradient kernel, and 20
    epochs of Adam grow those rounding differences to 7e-7 to 3e-2 in the weights.)"""
    size = max(1, int(group_size))
    blocks: dict[int, list[int]] = {}
    for i in sorted(indices):
        blocks.setdefault(i // size, []).append(i)
    return list(blocks.values())


def _lock_path(key: str) -> Path:
    return cache_dir() / "zoo" / f".{key}.lock"


def _ensure(setup: ZooSetup, defense: str, params: dict[str, Any], indices: list[int], *,
            group_size: int, progress: bool, batched_pruning: bool = True,
            require_cached: bool = False) -> tuple[dict[int, dict], dict[str, int]]:
    """The cache entries of models ``indices`` (normalised ``params``): loaded, or trained
    under per-model claims (:mod:`~mcmia_helpers.zoo.claims`): claim what is missing without
    waiting, look again under the claim, train what is still missing, release; then wait for
    the models other processes hold and load them (claiming and training any that such a
    process left unsaved). Returns the entries and the counts ``cached`` and ``trained``."""
    keys = {i: model_key(setup, i, defense, params) for i in indices}
    entries: dict[int, dict | None] = {i: _load_entry(keys[i]) for i in indices}
    trained = 0
    while True:
        missing = [i for i in indices if entries[i] is None]
        if not missing:
            break
        if require_cached:
            raise ZooModelsMissing(_label(defense, params), missing, setup.n_models)
        claimed: dict[int, int] = {}
        try:
            for i in missing:
                fd = claims.try_claim(_lock_path(keys[i]))
                if fd is not None:
                    claimed[i] = fd
            for i in claimed:  # saved by another process between the first look and the claim
                entries[i] = _load_entry(keys[i])
            todo = [i for i in claimed if entries[i] is None]
            if todo:
                _train_missing(setup, defense, params, todo, keys, entries, group_size, progress,
                               batched_pruning)
                trained += len(todo)
        finally:
            for fd in claimed.values():
                claims.release(fd)
        held = [i for i in missing if i not in claimed]
        if held:
            if progress:
                notice(f"{describe_indices(held)} of the {_label(defense, params)} zoo are being "
                       "trained by another process: waiting for them")
            claims.wait_for(_lock_path(keys[held[0]]))
            for i in held:
                entries[i] = _load_entry(keys[i])
    found = {i: e for i, e in entries.items() if e is not None}
    assert len(found) == len(indices)
    return found, {"cached": len(indices) - trained, "trained": trained}


def _label(defense: str, params: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if v is not None)
    return f"{defense}({shown})" if shown else defense


def _train_missing(setup: ZooSetup, defense: str, params: dict[str, Any], missing: list[int],
                   keys: dict[int, str], entries: dict[int, dict | None], group_size: int,
                   progress: bool, batched_pruning: bool) -> None:
    if defense in ("none", DENSE_LONG):
        _train_grouped(setup, defense, missing, keys, entries, group_size, progress)
    elif defense == "prune" and batched_pruning and params.get("pruning") != STRUCTURED:
        _prune_grouped(setup, params, missing, keys, entries, group_size, progress)
    else:
        _train_one_by_one(setup, defense, params, missing, keys, entries, progress, group_size)


def dense_models(setup: ZooSetup, indices: Sequence[int], *, group_size: int = 16,
                 progress: bool = False) -> list[nn.Module]:
    """Dense zoo models ``indices`` as modules (only those trained first where missing)."""
    entries, _ = _ensure(setup, "none", {}, sorted({int(i) for i in indices}),
                         group_size=group_size, progress=progress)
    return [_model_from(setup, entries[int(i)]) for i in indices]


def zoo_models(setup: ZooSetup, zoo: Zoo, indices: Sequence[int]) -> list[nn.Module]:
    """Models ``indices`` of a trained ``zoo`` of ``setup`` as modules, loaded from the cache
    (a filter-pruned VGG16 in its narrow form), for what the logits alone cannot show: latency,
    file sizes, weights. One-line :class:`UserError` for an index outside the zoo or a model no
    longer in the cache."""
    models = []
    for i in indices:
        if not 0 <= int(i) < zoo.n_models:
            raise UserError(f"model {i} is not in the {zoo.label} zoo of {zoo.n_models} models: "
                            f"use an index from 0 to {zoo.n_models - 1}")
        entry = _load_entry(zoo.keys[int(i)])
        if entry is None:
            raise UserError(f"model {i} of the {zoo.label} zoo is no longer in the cache "
                            f"({cache_dir()}): train the zoo again with train_zoo")
        models.append(_model_from(setup, entry))
    return models


def _train_grouped(setup: ZooSetup, defense: str, missing: list[int], keys: dict[int, str],
                   entries: dict[int, dict | None], group_size: int, progress: bool) -> None:
    ctx = setup.ctx
    pool = setup.zoo_pool.pool
    for group in model_blocks(missing, group_size):
        index_sets = [pool[setup.membership[i]] for i in group]
        seeds = [model_seed(setup.spec.seed, i) for i in group]
        checkpoint = group_checkpoint([keys[i] for i in group])
        if defense == "none":
            models = train_new_models(_builder(setup), ctx.bundle, index_sets, ctx.train_config,
                                      seeds, ctx.device, checkpoint)
            if models is None:  # an architecture the grouped network does not run: fit each
                models = train_models_batched(_builder(setup), len(group), ctx.bundle, index_sets,
                                              ctx.train_config, seeds, device=ctx.device,
                                              progress=progress, max_group=len(group))
            extra: dict[str, Any] = {"epochs": ctx.train_config.epochs}
        else:
            models = dense_models(setup, group, group_size=group_size, progress=progress)
            config = replace(ctx.train_config, epochs=long_epochs(ctx.train_config))
            continue_training(models, ctx.bundle, index_sets, config, seeds, ctx.device, progress,
                              checkpoint)
            extra = {"epochs": ctx.train_config.epochs + config.epochs,
                     "continued_epochs": config.epochs}
        saved = _save_entries(setup, [keys[i] for i in group], models, seeds, extra)
        for i, blob in zip(group, saved):
            entries[i] = blob
        _drop_checkpoints(checkpoint)


def _prune_grouped(setup: ZooSetup, params: dict[str, Any], missing: list[int], keys: dict[int, str],
                   entries: dict[int, dict | None], group_size: int, progress: bool) -> None:
    """The ``prune`` zoo's missing models, pruned together from their dense parents on the grouped
    engine (:func:`~mcmia_helpers.zoo.grouped.prune_models_batched`) with the recipe of
    :func:`~mcmia_helpers.defences.pruning.train_pruned`; where the engine cannot, one at a time."""
    ctx = setup.ctx
    choice = params["pruning"]
    method, allocation = PRUNING_CHOICES[choice]
    probe = _builder(setup)()
    if params.get("sparsity_spec") is not None:
        sparsity: Any = resolve_sparsity(probe, params["sparsity_spec"])
    elif allocation == "profile":  # admm, magnitude-profile: ADMM's per-layer targets
        sparsity = default_sparsity_profile(probe, params["sparsity"])
    elif method == "magnitude":
        sparsity = params["sparsity"]  # one global threshold per model
    else:  # admm-global (targets from each dense model's own threshold), iterative
        _train_one_by_one(setup, "prune", params, missing, keys, entries, progress, group_size)
        return
    epochs = max(1, ctx.train_config.epochs // 2)
    pool = setup.zoo_pool.pool
    for group in model_blocks(missing, group_size):
        models = dense_models(setup, group, group_size=group_size, progress=progress)
        seeds = [model_seed(setup.spec.seed, i) for i in group]
        checkpoint = group_checkpoint([keys[i] for i in group])
        infos = prune_models_batched(models, ctx.bundle, [pool[setup.membership[i]] for i in group],
                                     ctx.train_config, seeds, method, sparsity, admm_epochs=epochs,
                                     retrain_epochs=epochs, settings=ADMMSettings(),
                                     device=ctx.device, checkpoint=checkpoint)
        if infos is None:
            _train_one_by_one(setup, "prune", params, group, keys, entries, progress, group_size)
            continue
        for i, model, seed, info in zip(group, models, seeds, infos):
            (entries[i],) = _save_entries(setup, [keys[i]], [model], [seed],
                                          {**info, "pruning": choice, "pruning_algorithm": method,
                                           "sparsity_allocation": allocation,
                                           "sparsity": params["sparsity"]})
        _drop_checkpoints(checkpoint)


def _train_one_by_one(setup: ZooSetup, defense: str, params: dict[str, Any], missing: list[int],
                      keys: dict[int, str], entries: dict[int, dict | None], progress: bool,
                      group_size: int = 16) -> None:
    if defense == "prune":  # the dense parents first, together in their blocks
        dense_models(setup, missing, group_size=group_size, progress=progress)
    for i in missing:
        ctx = model_context(setup, i, defense, params)
        ctx = replace(ctx, progress=progress)
        if defense == "prune":
            (parent,) = dense_models(setup, [i], progress=progress)
            model, extra = train_pruned(ctx, dense=lambda parent=parent: (parent, {"cached": True}))
        else:
            model, extra = DEFENSES[defense](ctx)
        extra = {k: v for k, v in extra.items() if k != "history"}
        (entries[i],) = _save_entries(setup, [keys[i]], [model], [ctx.train_config.seed], extra)
        if progress:
            notice(f"zoo model {i + 1} of {len(keys)} ({defense}) saved")
