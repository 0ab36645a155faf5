"""The suite is hermetic: no network (in this process or its children), CPU only, deterministic."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest
import torch

from conftest import BLACKHOLE_PROXY, BLOCKED, NetworkAccessInTests
from mcmia_helpers.data import load_dataset
from mcmia_helpers.errors import UserError
from mcmia_helpers.training import get_device


def test_urlopen_fails_loudly() -> None:
    """Refused in this process by the guard (its own exception), not by a timeout or DNS."""
    before = len(BLOCKED)
    with pytest.raises(NetworkAccessInTests, match="must not use the network"):
        urllib.request.urlopen("https://ossci-datasets.s3.amazonaws.com/mnist/", timeout=30)
    assert len(BLOCKED) == before + 1


@pytest.mark.parametrize("address", [("93.184.215.14", 80), ("2606:4700::6810:85e5", 443)])
def test_raw_connections_off_this_machine_are_refused(address) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkAccessInTests):
            sock.connect(address)
    with pytest.raises(NetworkAccessInTests):
        socket.getaddrinfo("example.com", 443)


def test_loopback_stays_open() -> None:
    """The notebook kernels talk to pytest over loopback: that must keep working."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_a_download_in_the_test_process_is_blocked(tmp_path) -> None:
    before = len(BLOCKED)
    with pytest.raises(UserError, match="'mnist' is not available"):
        load_dataset("mnist", root=tmp_path, download=True)
    assert len(BLOCKED) > before  # it did try, and the guard refused (not merely offline)
    assert not list(tmp_path.rglob("*-ubyte*"))


def test_child_processes_cannot_reach_the_internet_either() -> None:
    """A child process (the CLI tests' subprocesses, the notebook kernels) sends every HTTP(S)
    request to the black-hole proxy, which refuses it at once: online or offline alike."""
    code = ("import urllib.request\n"
            "print(urllib.request.getproxies().get('https'))\n"
            "try:\n"
            "    urllib.request.urlopen('https://example.com/', timeout=20)\n"
            "except OSError as exc:\n"
            "    print('refused', type(getattr(exc, 'reason', exc)).__name__)\n"
            "else:\n"
            "    print('fetched')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    proxy, outcome = out.stdout.strip().splitlines()
    assert proxy == BLACKHOLE_PROXY, out.stdout + out.stderr
    assert outcome == "refused ConnectionRefusedError", outcome  # by the proxy, not by DNS


def test_cpu_only_and_deterministic() -> None:
    assert os.environ["MCMIA_DEVICE"] == "cpu"
    assert get_device() == torch.device("cpu")  # even where CUDA is available
    assert torch.are_deterministic_algorithms_enabled()
