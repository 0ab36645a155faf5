"""Shared fixtures: a hermetic session (CPU only, deterministic, no network), a private model
cache per test session, and small datasets."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
import torch

# Tests are CPU-only, deterministic and offline, and must not depend on a previous run's cached
# models. The environment variables are set at import, before any test runs, so that the CLI
# subprocesses and the notebook kernels (nbval) inherit them too.
os.environ["MCMIA_DEVICE"] = "cpu"  # on a GPU machine get_device() would pick CUDA and bf16 autocast
os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what deterministic cuBLAS would need, if used
#: Where every outgoing HTTP(S) request of a child process goes: a closed port on this machine,
#: so torchvision's downloads fail at once (urllib honours these variables) instead of fetching.
BLACKHOLE_PROXY = "http://127.0.0.1:9"
for _name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
    os.environ[_name] = BLACKHOLE_PROXY
for _name in ("no_proxy", "NO_PROXY"):
    os.environ.pop(_name, None)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


class NetworkAccessInTests(RuntimeError):
    """Raised by any attempt of the test process to open a connection off this machine."""


#: Every refused attempt, in order (a library that swallows the exception still leaves a trace).
BLOCKED: list[str] = []


def _refuse(what: str):
    BLOCKED.append(what)
    return NetworkAccessInTests(f"tests must not use the network ({what})")


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    if len(address) >= 2 and address[1] == 9 and address[0] in ("127.0.0.1", "localhost"):
        return False  # the black-hole proxy: a request for the internet, refused here loudly
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolving it would already be network access
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self, address):
    if not _is_local(address):
        raise _refuse(f"connect to {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise _refuse(f"connect to {address!r}")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _is_local((host,)):
        raise _refuse(f"look up {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _no_network() -> None:
    """Any network fetch in the test process fails loudly (connections to this machine stay
    allowed: the notebook kernels talk to pytest over loopback)."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
    socket.getaddrinfo = _real_getaddrinfo


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
