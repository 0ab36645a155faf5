"""Property-based test of the command line: argument vectors and environments drawn from valid
and invalid values end with status 0 or 2, at most one line on stderr for status 2, and never a
traceback. ``run``, ``zoo`` and ``grid`` are drawn with ``--dry-run`` (every input is checked,
nothing is trained), so the whole test takes seconds. The inputs include files of every kind a
file flag accepts (binary, empty, huge, deeply nested, an alias bomb, wrong YAML types),
outputs that collide, absurd zoo sizes and junk ``MCMIA_SMOKE`` values."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcmia_helpers.cli import main
from mcmia_helpers.data import DATASETS
from mcmia_helpers.models import ARCHITECTURES

WORK = Path(tempfile.mkdtemp(prefix="mcmia-fuzz-"))
(WORK / "a_file").write_text("x")
(WORK / "a_dir").mkdir(exist_ok=True)
if not (WORK / "fifo").exists():
    os.mkfifo(WORK / "fifo")

junk = st.text(min_size=0, max_size=12)

#: Files of every kind a file flag accepts (``--sparsity-spec``, a grid's ``sparsity_spec:`` and
#: ``--config``): valid, binary, empty, huge, deeply nested, an alias bomb, wrong YAML types.
BOMB = ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
        + "cells: [*i]\n")
SPEC_FILES = {
    "valid.json": b'{"default": 0.5}', "valid.yaml": b"default: 0.5\n",
    "unknown-layer.yaml": b"nope.0: 0.5\n", "binary.json": bytes(range(256)),
    "binary.yaml": b"\xff\xfe\x00d\x00", "empty.yaml": b"", "huge.json": b"{" + b" " * (1 << 20) + b"}",
    "deep.json": b"[" * 50_000 + b"]" * 50_000, "deep.yaml": b"[" * 50_000 + b"]" * 50_000,
    "bomb.yaml": BOMB.encode(), "list.yaml": b"- 0.5\n", "words.yaml": b"default: lots\n",
    "range.json": b'{"default": 7}', "tagged.yaml": b"!!python/object:os.system {}\n",
}
for _name, _data in SPEC_FILES.items():
    (WORK / _name).write_bytes(_data)
spec_files = st.sampled_from([str(WORK / name) for name in SPEC_FILES] + [str(WORK / "a_dir"), str(WORK / "missing.json")])
smoke = st.sampled_from([None, None, None, "2", "²", "x", "0", "-1", "1001"])


def _mostly(valid, invalid):
    """``valid`` three times in four: enough valid vectors get past the checks to exit 0."""
    return st.integers(0, 3).flatmap(lambda i: invalid if i == 3 else valid)


def _pick(values, extra=junk):
    return _mostly(st.sampled_from(list(values)), extra)


numbers = _mostly(st.sampled_from(["0", "0.5", "0.9", "1", "3", "4", "1e-5", "2"]),
                  st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                            st.integers(-10**20, 10**20).map(str),
                            st.sampled_from(["1e300", "-0", "0x10", "nan", "-inf"]), junk))
paths = _mostly(st.sampled_from([str(WORK / "out.json"), str(WORK / "new" / "deeper" / "r.json")]),
                st.sampled_from([str(WORK / "a_dir"), str(WORK / "a_dir") + "/", str(WORK / "fifo"),
                                 str(WORK / "a_file" / "x.json"), "/dev/full", "/proc/x/y.json", "nodir/", ""]))
folders = _mostly(st.sampled_from([None, str(WORK / "cache")]),
                  st.sampled_from([str(WORK / "a_file"), str(WORK / "a_file" / "sub"), "/proc/mcmia", ""]))
devices = _mostly(st.sampled_from([None, "cpu"]), st.sampled_from(["cuda", "cuda:7", "mps", "bogus", "", "cpu:0"]))


@st.composite
def run_args(draw) -> list[str]:
    args = ["run", "--arch", draw(_pick(ARCHITECTURES)), "--dataset", draw(_pick(DATASETS))]
    optional = {
        "--defense": _pick(["none", "prune", "minmax", "prune+minmax", "dp"]),
        "--seed": _mostly(st.integers(0, 2**31 - 1).map(str), st.one_of(st.integers(-5, 2**64).map(str), junk)),
        "--scale": _pick(["ci", "book", "paper"]),
        "--standin": _pick(DATASETS),
        "--sparsity": numbers, "--lam": numbers, "--k-steps": numbers, "--epsilon": numbers,
        "--delta": numbers, "--max-grad-norm": numbers, "--pruning": _pick(["admm", "magnitude"]),
        "--attacks": _pick(["loss", "loss,confidence", "", ",", "shadow_top3,nope"]),
        "--out": paths, "--save-scores": paths, "--sparsity-spec": spec_files,
        "--calibration": _pick(["target", "undefended"]),
        "--imagenet-size": numbers, "--imagenet-classes": numbers,
    }
    for flag in draw(st.lists(st.sampled_from(sorted(optional)), max_size=5, unique=True)):
        args += [flag, draw(optional[flag])]
    if "--out" in args and draw(st.integers(0, 3)) == 3:  # outputs that collide
        out = args[args.index("--out") + 1]
        args += ["--save-scores", draw(st.sampled_from([out, out.rsplit(".", 1)[0] + ".split.json"]))]
    return args + ["--dry-run"]


@st.composite
def zoo_args(draw) -> list[str]:
    args = ["zoo", "--arch", draw(_pick(ARCHITECTURES)), "--dataset", draw(_pick(DATASETS))]
    optional = {
        "--defense": _pick(["none", "prune", "dense-long", "dp"]),
        "--models": _mostly(st.sampled_from(["4", "8"]), st.sampled_from(["1000000000", "5000", "3", "-4", "x"])),
        "--pool": _mostly(st.sampled_from(["256", "1000"]), st.sampled_from(["10000000000", "3", "x"])),
        "--sparsity-spec": spec_files, "--out": paths, "--save-scores": paths,
        "--attacks": _pick(["loss", "lira_online,lira_offline", "nope"]),
    }
    for flag in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        args += [flag, draw(optional[flag])]
    return args + ["--dry-run"]


GRID_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40),
                                     st.floats(allow_nan=True), junk),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(junk, inner, max_size=3)), max_leaves=6)


@st.composite
def grid_args(draw) -> list[str]:
    import yaml

    cell = {"arch": draw(_pick(ARCHITECTURES)), "dataset": draw(_pick(DATASETS)),
            "defenses": draw(st.lists(st.fixed_dictionaries(
                {"defense": _pick(["none", "prune", "dp", "minmax"])},
                optional={"sparsity": _mostly(st.sampled_from([0.5, [0.5, 0.9]]), GRID_VALUES),
                          "sparsity_spec": st.one_of(spec_files, GRID_VALUES),
                          "epsilon": _mostly(st.sampled_from([4, 8.0]), GRID_VALUES),
                          "lam": _mostly(st.sampled_from([3, [1, 3]]), GRID_VALUES)}), min_size=1, max_size=2))}
    grid = draw(st.fixed_dictionaries({"cells": st.just([cell])}, optional={
        "seeds": _mostly(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
                         st.one_of(st.lists(st.integers(-2, 2**32), max_size=3), GRID_VALUES)),
        "scale": _pick(["ci", "book"]), "attacks": st.one_of(st.just(["loss"]), GRID_VALUES),
        "seed": GRID_VALUES}))
    grid.pop("seed", None) if draw(st.integers(0, 3)) else None  # mostly no misspelt key
    if draw(st.integers(0, 4)) == 4:
        grid = draw(GRID_VALUES)  # anything at all
    config = WORK / "grid.yaml"
    data = yaml.safe_dump(grid).encode()
    if draw(st.integers(0, 4)) == 4:
        data += draw(st.binary(max_size=6))
    if draw(st.integers(0, 9)) == 9:
        data = draw(st.sampled_from(sorted(SPEC_FILES.values())))  # a junk file as the grid
    config.write_bytes(data)
    args = ["grid", "--config", draw(st.sampled_from([str(config), "ci", "nope"])), "--out", draw(paths)]
    if draw(st.booleans()):
        args += ["--only", draw(_pick(["lenet5", "seed=0", "zzz"]))]
    return args + ["--dry-run"]


@st.composite
def data_args(draw) -> list[str]:
    args = ["data", "fetch", draw(_pick(DATASETS))]
    if draw(st.booleans()):
        args += ["--root", draw(st.sampled_from([str(WORK / "data"), str(WORK / "a_file"), "/proc/x"]))]
    if args[2] != "digits" or draw(st.booleans()):
        args.append("--dry-run")  # a real fetch only for the dataset bundled with scikit-learn
    return args


@contextlib.contextmanager
def _environment(values: dict[str, str | None]):
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@settings(max_examples=160, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(args=st.one_of(run_args(), grid_args(), zoo_args(), data_args()),
       device=devices, cache=folders, data=folders, smoke_cap=smoke)
def test_command_line_never_tracebacks(args, device, cache, data, smoke_cap) -> None:
    err = io.StringIO()
    with _environment({"MCMIA_DEVICE": device, "MCMIA_CACHE": cache, "MCMIA_SMOKE": smoke_cap,
                       "MCMIA_DATA": data if data is not None else os.environ.get("MCMIA_DATA")}), \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(args)
        except SystemExit as stop:  # argparse (--help is never drawn)
            status = stop.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert status in (0, 2), (args, err.getvalue())
    assert "Traceback" not in err.getvalue()
    if status == 2:
        assert len(lines) == 1, (args, lines)
    assert stat_is_device("/dev/full")


def stat_is_device(path: str) -> bool:
    """``/dev/full`` is still a character device (a rename over it would have replaced it)."""
    import stat

    return not os.path.exists(path) or stat.S_ISCHR(os.stat(path).st_mode)
