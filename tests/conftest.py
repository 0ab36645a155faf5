"""Shared fixtures: a private data and model cache per test session, and small datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests are CPU-only and must not depend on a previous run's cached models.
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A fresh model cache per test run (data stays shared: it is read-only input).

    ``make test`` creates one empty cache for the whole run and sets ``MCMIA_TEST_RUN_CACHE=1``,
    so that both pytest-xdist workers and the notebook kernels share the models they train
    (written atomically, so two writers of one model are safe). Run alone, each session gets its own.
    """
    if os.environ.get("MCMIA_TEST_RUN_CACHE") != "1" or not os.environ.get("MCMIA_CACHE"):
        os.environ["MCMIA_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def fashion():
    """Fashion-MNIST in memory (Debian's package or torchvision's download)."""
    from mcmia_helpers.data import load_dataset

    return load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def digits():
    from mcmia_helpers.data import load_dataset

    return load_dataset("digits")


@pytest.fixture()
def tmp_out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture()
def interrupt_at():
    """A training callback factory that raises KeyboardInterrupt at the end of a given epoch
    (a Ctrl-C mid-run), for the resume tests."""
    from mcmia_helpers.training import TrainingCallback

    class InterruptAt(TrainingCallback):
        def __init__(self, at_epoch: int) -> None:
            self.at_epoch = at_epoch

        def epoch_end(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
            if epoch == self.at_epoch:
                raise KeyboardInterrupt
            return {}

    return InterruptAt
