"""Who trains on what in a model zoo: the candidate pool, its canaries and the N x P membership matrix.

A zoo (Carlini et al. 2022, "Membership Inference Attacks From First Principles", section
IV: the shadow models of LiRA are themselves targets; ML Privacy Meter's "reference models")
trains ``N`` models of one recipe, each on a random half of one candidate pool of ``P``
examples. Models come in complementary pairs (model ``2k`` trains on a random half, model
``2k + 1`` on the other half; :func:`~mcmia_helpers.attacks.lira.lira_in_out_sets`), so every
example is a member of exactly ``N / 2`` models and every model has exactly ``P / 2`` members.
The pairs are drawn one after another from one seeded generator, so the first rows of a
larger zoo's matrix are a smaller zoo's matrix: a zoo with more models reuses the first ones,
and a defence's zoo (often smaller) uses exactly the dense zoo's halves.

The pool is disjoint from a held-out test set (utility) and from the Min-Max defender's
reference set. *Canaries* (Aerni, Zhang and Tramèr, "Evaluations of Machine Learning Privacy
Defenses are Misleading", CCS 2024) are pool examples given a wrong label on purpose: the
most vulnerable examples a defence must protect, members of half the models like any other
example. Their metrics are reported apart from the ordinary examples'.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from mcmia_helpers.attacks.lira import lira_in_out_sets
from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.errors import UserError


def digest(tensor: torch.Tensor) -> str:
    """A short SHA-256 of a tensor's values (cache keys, record identities)."""
    data = torch.as_tensor(tensor).detach().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class ZooPool:
    """The examples of one zoo: dataset indices of the pool, the test and the reference sets.

    ``canary`` marks (per pool position) the mislabelled examples; ``labels`` are the pool's
    labels as trained and as the attacker knows them (canaries carry their wrong label);
    ``seed`` drew all of it.
    """

    pool: torch.Tensor
    test: torch.Tensor
    reference: torch.Tensor
    canary: torch.Tensor
    labels: torch.Tensor
    seed: int

    @property
    def size(self) -> int:
        return int(self.pool.numel())

    def identity(self) -> dict[str, str | int]:
        """What identifies the pool in cache keys and records."""
        return {"pool_sha256": digest(self.pool), "test_sha256": digest(self.test),
                "reference_sha256": digest(self.reference), "labels_sha256": digest(self.labels),
                "canaries": int(self.canary.sum()), "pool_seed": int(self.seed)}


def check_zoo_sizes(n_models: int, pool: int, canaries: int, n_available: int,
                    test: int, reference: int, dataset: str) -> None:
    """One-line :class:`UserError` unless the sizes make a zoo: an even ``n_models >= 4`` (pairs,
    and at least 2 shadow models per target besides its pair), an even pool of at least 4 examples, canaries
    fewer than the pool, and pool + test + reference within the dataset."""
    if isinstance(n_models, bool) or not isinstance(n_models, int) or n_models < 4 or n_models % 2:
        raise UserError(f"--models {n_models} is not an even number >= 4: a zoo trains models in "
                        "complementary pairs and each target needs a pair of shadow models besides its own pair; use e.g. --models 8")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 4 or pool % 2:
        raise UserError(f"--pool {pool} is not an even number >= 4: every model trains on half the "
                        "pool; use e.g. --pool 1000")
    if isinstance(canaries, bool) or not isinstance(canaries, int) or not 0 <= canaries < pool:
        raise UserError(f"--canaries {canaries} is not in [0, pool): use e.g. --canaries 0")
    need = pool + test + reference
    if need > n_available:
        raise UserError(f"a pool of {pool} plus {test} test and {reference} reference examples needs "
                        f"{need} examples but {dataset} has {n_available}: use --pool "
                        f"{max(4, (n_available - test - reference) // 2 * 2)} or less")


def draw_pool(bundle: DatasetBundle, pool: int, test: int, reference: int, canaries: int,
              seed: int) -> ZooPool:
    """Draw the pool, test and reference sets (disjoint) and the canaries from ``bundle``.

    One seeded permutation of the dataset gives the three parts; ``canaries`` pool positions,
    drawn with the same generator, get a wrong label (the true label plus a random non-zero
    offset, modulo the number of classes).
    """
    check_zoo_sizes(4, pool, canaries, len(bundle), test, reference, bundle.name_used)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
    perm = torch.randperm(len(bundle), generator=gen)
    pool_idx = perm[:pool].sort().values
    test_idx = perm[pool:pool + test].sort().values
    ref_idx = perm[pool + test:pool + test + reference].sort().values
    canary = torch.zeros(pool, dtype=torch.bool)
    canary[torch.randperm(pool, generator=gen)[:canaries]] = True
    labels = bundle.labels[pool_idx].clone()
    k = bundle.num_classes
    offsets = torch.randint(1, k, (int(canary.sum()),), generator=gen)
    labels[canary] = (labels[canary] + offsets) % k
    return ZooPool(pool_idx, test_idx, ref_idx, canary, labels, int(seed))


def labelled_bundle(bundle: DatasetBundle, zoo_pool: ZooPool) -> DatasetBundle:
    """``bundle`` with the canaries' wrong labels in place (a copy of the labels; images shared)."""
    if not bool(zoo_pool.canary.any()):
        return bundle
    labels = bundle.labels.clone()
    labels[zoo_pool.pool] = zoo_pool.labels
    return replace(bundle, labels=labels, notes=[*bundle.notes,
                   f"{int(zoo_pool.canary.sum())} canaries of the zoo's pool relabelled"])


def membership_matrix(n_models: int, pool: int, seed: int) -> torch.Tensor:
    """The ``(n_models, pool)`` boolean membership matrix of complementary pairs.

    Row ``i`` says which pool examples model ``i`` trains on. Every row has ``pool / 2``
    members, every column ``n_models / 2``; the first rows do not depend on ``n_models``.
    """
    check_zoo_sizes(n_models, pool, 0, pool, 0, 0, "the pool")
    return lira_in_out_sets(pool, n_models, int(seed) * 1_000_003 + 29)


def model_seed(zoo_seed: int, i: int) -> int:
    """Model ``i``'s own seed (initialisation and data order); the same in every zoo of a seed."""
    return int(zoo_seed) * 100_000 + 50_000 + int(i)


def partner(i: int) -> int:
    """The model that trains on the complement of model ``i``'s half (its pair: ``i XOR 1``)."""
    return int(i) ^ 1


def random_membership(membership: torch.Tensor, seed: int) -> torch.Tensor:
    """A control: a membership matrix of the same shape and pair structure, drawn independently
    of ``membership``. Evaluated against it, a zoo's attack must score at chance."""
    n, p = membership.shape
    return lira_in_out_sets(p, n, int(seed) * 7 + 123_457)


def membership_summary(membership: torch.Tensor) -> dict[str, int]:
    """Counts for the record: members per model, models per example, pooled pairs."""
    m = np.asarray(membership, dtype=bool)
    return {"members_per_model": int(m.sum(1).min()), "models_per_example": int(m.sum(0).min()),
            "pooled_members": int(m.sum()), "pooled_nonmembers": int((~m).sum())}
