"""A zoo fanned out over a cluster, simulated on this machine (issue 27).

``zoo --print-commands`` prints one ``--train-only --model-range A:B`` command per task; three
of them run at once as separate processes on one shared cache folder (as the tasks of a SLURM
array would), exactly as printed, through a shell. Then the attack run (``--require-cached``)
trains nothing and writes the same record, bit for bit, as one process that trains and attacks
the same zoo in another cache. The zoo is tiny (6 LeNet-5 models on 100 members each, ci
epochs): the whole zoo trains in about 2.5 CPU-seconds, and each task process costs about 8,
most of it importing torch and the package (measured at load 6 on the 2 shared cores: the three
tasks 49 s wall, 23.5 CPU-s together).

The tasks train aligned blocks of ``--group-size 2`` and the single process trains the whole zoo
in one group of 6: on this CPU oneDNN computes each model's part of a grouped convolution alike
in groups of 2 and of 6 (measured: identical weights after 20 epochs; a group of 1 runs a plain
convolution and a group of 3 another first-layer kernel, see
:func:`mcmia_helpers.zoo.train.model_blocks`), so the records agree bit for bit. Were they to
differ on another machine, the failure says whether one process training in the tasks' aligned
groups of 2 agrees with them.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcmia_helpers import cli
from mcmia_helpers.zoo import claims

ZOO = ["--arch", "lenet5", "--dataset", "fashion-mnist", "--scale", "ci", "--models", "6",
       "--pool", "200", "--canaries", "20", "--seed", "3"]
ROOT = Path(__file__).resolve().parents[1]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, MCMIA_CACHE=str(cache), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # `python`
    return env


@pytest.fixture()
def one_thread():
    """Torch on one thread, as in the task processes (``OMP_NUM_THREADS=1``), so that the runs
    in this process do the same float operations as the tasks and record the same thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _main(line: str, cache: Path, monkeypatch) -> int:
    """A printed ``python -m mcmia_helpers ...`` line, run in this process (its arguments, as
    the shell would split them) with ``cache`` as the model cache."""
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-m", "mcmia_helpers"], line
    monkeypatch.setenv("MCMIA_CACHE", str(cache))
    return cli.main(argv[3:])


def _comparable(record: dict) -> dict:
    """The record without what says how and when it ran (training counts, seconds)."""
    return {k: v for k, v in record.items() if k not in ("training", "wall_time_s")}


def test_three_tasks_on_one_cache_then_an_attack_that_trains_nothing(tmp_path, monkeypatch, capsys,
                                                                     one_thread) -> None:
    """Three printed tasks run at once, as printed, in three processes on one cache; the attack
    run trains nothing and its record is the one-process record, bit for bit."""
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCMIA_CACHE", str(shared))
    assert cli.main(["zoo", *ZOO, "--print-commands", "--per-task", "2", "--group-size", "2",
                     "--out", "cluster.json"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert [line.split("--model-range ")[1] for line in lines] == ["0:2", "2:4", "4:6"]
    attack = printed.err.strip().split("attack with: ")[1]
    assert "--require-cached" in attack and not (shared / "zoo").exists()  # printing trains nothing

    started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    tasks = [subprocess.Popen(["bash", "-c", line], env=_env(shared), cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for line in lines]
    results = [(t.wait(timeout=600), *t.communicate()) for t in tasks]
    cluster_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cluster_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    for rc, out, err in results:
        assert rc == 0 and out == "", err
        assert ": none zoo: 2 trained, 0 found in the cache" in err, err
    entries = sorted(p.name for p in (shared / "zoo").iterdir() if not p.name.startswith("."))
    assert len(entries) == 6 and all(n.endswith(".pt") for n in entries), entries  # no leftovers

    assert _main(attack, shared, monkeypatch) == 0, capsys.readouterr().err
    cluster = json.loads((tmp_path / "cluster.json").read_text())
    assert cluster["training"]["zoo"]["trained"] == 0 and cluster["training"]["zoo"]["cached"] == 6

    started, cpu = time.perf_counter(), time.process_time()  # the same zoo in one process
    assert _main(f"python -m mcmia_helpers zoo {shlex.join(ZOO)} --out single.json", alone,
                 monkeypatch) == 0
    single_s, single_cpu = time.perf_counter() - started, time.process_time() - cpu
    reference = json.loads((tmp_path / "single.json").read_text())
    assert reference["training"]["zoo"]["trained"] == 6
    if _comparable(cluster) != _comparable(reference):
        assert _main(f"python -m mcmia_helpers zoo {shlex.join(ZOO)} --group-size 2 --out a.json",
                     tmp_path / "aligned", monkeypatch) == 0
        same = _comparable(json.loads((tmp_path / "a.json").read_text())) == _comparable(cluster)
        pytest.fail("the cluster's record differs from one process training the zoo in one group "
                    f"of 6 (with aligned groups of 2 they {'agree' if same else 'differ too'})")
    with capsys.disabled():
        print(f"\n3 task processes at once: {cluster_s:.1f} s wall, {cluster_cpu:.1f} CPU-s; "
              f"one process (in this one, imports done): {single_s:.1f} s wall, {single_cpu:.1f} CPU-s; "
              f"load {os.getloadavg()[0]:.1f}")


def test_a_missing_model_at_attack_time_is_one_line_with_the_command(tmp_path, monkeypatch,
                                                                     capsys, one_thread) -> None:
    """Under ``--require-cached`` the attack run names the missing models and the command that
    trains them, and that command fills exactly the gap; then nothing is left to print."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MCMIA_CACHE", str(cache))
    assert cli.main(["zoo", *ZOO, "--train-only", "--model-range", "0:4", "--group-size", "2"]) == 0
    assert "models 0-3: none zoo: 4 trained, 0 found in the cache" in capsys.readouterr().err
    assert cli.main(["zoo", *ZOO, "--require-cached", "--group-size", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "models 4-5 of the zoo are not in" in err, err
    command = err.split("train them with `")[1].split("`")[0]
    assert command.endswith("--train-only --model-range 4:6")
    assert _main(command, cache, monkeypatch) == 0
    assert "models 4-5: none zoo: 2 trained, 0 found" in capsys.readouterr().err
    assert cli.main(["zoo", *ZOO, "--print-commands", "--group-size", "2"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "0 of 6 models to train" in out.err
    assert cli.main(["zoo", *ZOO, "--train-only", "--model-range", "2:6", "--group-size", "2"]) == 0
    assert "0 trained, 4 found in the cache" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--model-range", "0:2"], "--model-range needs --train-only"),
    (["--per-task", "2"], "--per-task needs --print-commands"),
    (["--train-only", "--print-commands"], "drop --train-only"),
    (["--train-only", "--out", "x.json"], "drop --out"),
    (["--train-only", "--require-cached"], "drop --require-cached"),
    (["--train-only", "--model-range", "4:8"], "use A:B with 0 <= A < B <= 6"),
    (["--train-only", "--model-range", "3"], "is not a range A:B"),
    (["--train-only", "--model-range", "2:2"], "is not a range A:B"),
])
def test_cluster_flags_misused_are_one_line_and_exit_2(args, words, tmp_path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    try:
        rc = cli.main(["zoo", *ZOO, *args])
    except SystemExit as exc:  # argparse's own error (one line, exit 2)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "cache" / "zoo").exists()  # nothing trained


def test_a_model_claimed_elsewhere_is_waited_for_not_trained_twice(tmp_path, monkeypatch) -> None:
    """A model whose lock another process holds is not trained here: this process waits until
    the holder lets go, then (the holder having died without saving it) claims and trains it."""
    import threading

    from mcmia_helpers.zoo import ZooSpec, prepare_zoo
    from mcmia_helpers.zoo import train as zoo_train

    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    setup = prepare_zoo(ZooSpec("lenet5", "fashion-mnist", scale="ci", n_models=6, pool=200,
                                canaries=20, seed=3))
    key = zoo_train.model_key(setup, 1, "none", {})
    (tmp_path / "cache" / "zoo").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.readline()",
                               str(zoo_train._lock_path(key))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert claims.try_claim(zoo_train._lock_path(key)) is None  # held elsewhere
    trained: list[list[int]] = []
    real = zoo_train._train_missing

    def spy(setup, defense, params, missing, *args):
        trained.append(list(missing))
        return real(setup, defense, params, missing, *args)

    monkeypatch.setattr(zoo_train, "_train_missing", spy)
    done = {}
    worker = threading.Thread(target=lambda: done.update(
        zoo_train.train_zoo_models(setup, "none", {}, [0, 1], group_size=2)))
    worker.start()
    first = zoo_train._path(zoo_train.model_key(setup, 0, "none", {}))
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert first.exists() and worker.is_alive() and trained == [[0]]  # model 1: waited for
    assert not zoo_train._path(key).exists()
    holder.communicate("\n", timeout=30)  # the holder ends without having saved model 1
    worker.join(timeout=120)
    assert not worker.is_alive() and trained == [[0], [1]]
    assert done["trained"] == 2 and done["cached"] == 0


def test_a_defended_task_trains_its_range_of_both_zoos_and_nothing_else(tmp_path, monkeypatch,
                                                                        capsys, one_thread) -> None:
    """``--defense dense-long --train-only --model-range 2:4`` trains dense models 2 and 3 (the
    parents, which the attack's dense zoo needs too) and their continuations, not models 0-1;
    ``--print-commands`` of the defended zoo then lists the tasks with anything missing in either."""
    from mcmia_helpers.zoo import ZooSpec, prepare_zoo
    from mcmia_helpers.zoo.train import missing_models

    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    defended = [*ZOO, "--defense", "dense-long", "--group-size", "2"]
    assert cli.main(["zoo", *defended, "--train-only", "--model-range", "2:4"]) == 0
    err = capsys.readouterr().err
    assert "models 2-3: dense zoo: 2 trained, 0 found in the cache; dense-long zoo: 2 trained" in err
    setup = prepare_zoo(ZooSpec("lenet5", "fashion-mnist", scale="ci", n_models=6, pool=200,
                                canaries=20, seed=3, defense="dense-long"))
    assert missing_models(setup, "none", {}) == [0, 1, 4, 5]
    assert missing_models(setup, "dense-long", {}) == [0, 1, 4, 5]
    assert cli.main(["zoo", *defended, "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("--model-range ")[1] for line in lines] == ["0:2", "4:6"]
    assert all("--defense dense-long" in line for line in lines)
