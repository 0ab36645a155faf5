"""``lira_scores(..., global_variance=False)`` uses each example's own spread (issue 22: a
silent fall-back to the global variance passed every test).

Each example's OUT observations lie symmetrically around its centre, so mean and median agree;
widening one example's observations tenfold around that centre divides its offline z-score by
exactly ten when its variance is its own, and barely moves it when one variance serves all."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcmia_helpers.attacks.lira import lira_in_out_sets, lira_scores

E, MODELS = 50, 8


def _world(widen: float = 1.0):
    in_mask = lira_in_out_sets(E, MODELS, 2)
    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(E, generator=gen, dtype=torch.float64) * 2
    spread = torch.rand(E, generator=gen, dtype=torch.float64) + 0.2
    signs = torch.tensor([1.0, -1.0, 2.0, -2.0] * 2, dtype=torch.float64)  # symmetric, per column
    stats = torch.empty(MODELS, E, dtype=torch.float64)
    for e in range(E):
        for inside in (True, False):
            rows = torch.nonzero(in_mask[:, e] == inside).flatten()
            base = centre[e] + (1.5 if inside else 0.0)
            stats[rows, e] = base + spread[e] * signs[:len(rows)] * (widen if e == 0 else 1.0)
    target = centre + 1.0
    return target, stats, in_mask


@pytest.mark.parametrize("global_variance, ratio", [(False, 0.1), (True, None)])
def test_offline_scores_use_each_examples_own_spread(global_variance, ratio) -> None:
    narrow = lira_scores(*_world(), online=False, global_variance=global_variance)
    wide = lira_scores(*_world(widen=10.0), online=False, global_variance=global_variance)
    if ratio is not None:
        assert wide[0] / narrow[0] == pytest.approx(ratio, rel=1e-9)
        np.testing.assert_allclose(wide[1:], narrow[1:], rtol=1e-12)  # the others keep theirs
    else:  # one variance for all: example 0's score shrinks far less than tenfold
        assert wide[0] / narrow[0] > 0.3
        assert not np.allclose(wide[1:], narrow[1:])


def test_online_scores_differ_between_own_and_global_variances() -> None:
    own = lira_scores(*_world(), online=True, global_variance=False)
    shared = lira_scores(*_world(), online=True, global_variance=True)
    assert np.isfinite(own).all() and not np.allclose(own, shared)
