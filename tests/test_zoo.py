"""Model zoos (issue 16): membership, resume, leave-one-out bookkeeping, leakage, canaries, CLI.

One ci zoo (8 LeNet-5 models on a 1,000-example pool with 100 canaries) is trained once per
module, in a private cache, by a run that is killed while training its second group of models
and then resumed; every test reads that zoo (and a 4-model pruned zoo built on its first models).
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mcmia_helpers import cli, metrics
from mcmia_helpers.errors import UserError
from mcmia_helpers.zoo import (ZooSpec, attack_zoo, membership_matrix, prepare_zoo,
                               random_membership, run_zoo, train_zoo, zoo_metrics)
from mcmia_helpers.zoo import grouped as zoo_grouped
from mcmia_helpers.zoo import train as zoo_train
from mcmia_helpers.zoo.evaluate import example_exposure, paired_difference
from mcmia_helpers.zoo.grouped import continue_training, prune_models_batched

ATTACKS = "lira_online,lira_offline,loss"
PRUNE = {"pruning": "admm", "sparsity": 0.9}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """The ci dense zoo: a first run killed in epoch 6 of its second group of 4 models, then
    ``run_zoo`` (which resumes it), then the 4-model ADMM-pruned zoo on the same halves."""
    cache = tmp_path_factory.mktemp("zoo-cache")
    out = tmp_path_factory.mktemp("zoo-out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCMIA_CACHE", str(cache))
        spec = ZooSpec("lenet5", "fashion-mnist", scale="ci")
        setup = prepare_zoo(spec)
        epochs = setup.ctx.train_config.epochs
        real, saves = zoo_grouped.save_checkpoint, []

        def killed_in_second_group(path, state):
            real(path, state)
            saves.append(int(state["epoch"]))
            if len(saves) == epochs + 5:
                raise KeyboardInterrupt  # as a Ctrl-C in epoch 6 of the second group

        mp.setattr(zoo_grouped, "save_checkpoint", killed_in_second_group)
        with pytest.raises(KeyboardInterrupt):
            train_zoo(setup, "none", {}, group_size=4)
        after_kill = {p.name: p.stat().st_mtime_ns for p in (cache / "zoo").glob("*.pt")}
        resumed_saves = []
        mp.setattr(zoo_grouped, "save_checkpoint",
                   lambda path, state: (real(path, state), resumed_saves.append(int(state["epoch"]))))
        record = run_zoo(spec, ATTACKS + ",lira_online_aware", group_size=4, setup=setup,
                         save_scores=out / "dense.npz")
        mp.setattr(zoo_grouped, "save_checkpoint", real)
        dense = train_zoo(setup, "none", {})
        pruned_spec = ZooSpec("lenet5", "fashion-mnist", scale="ci", defense="prune",
                              params=dict(PRUNE), n_models=4)
        pruned_setup = prepare_zoo(pruned_spec)
        pruned_record = run_zoo(pruned_spec, "lira_online,lira_online_aware,loss",
                                setup=pruned_setup)
        pruned = train_zoo(pruned_setup, "prune", pruned_spec.normalised_params())
        yield SimpleNamespace(cache=cache, out=out, spec=spec, setup=setup, saves=saves,
                              resumed_saves=resumed_saves, epochs=epochs,
                              after_kill=after_kill, record=record, dense=dense,
                              pruned_setup=pruned_setup, pruned_record=pruned_record,
                              pruned=pruned, pruned_spec=pruned_spec)


# --------------------------------------------------------------------------- membership


def test_membership_matrix_halves_and_prefix() -> None:
    m = membership_matrix(8, 1000, seed=3)
    assert m.shape == (8, 1000) and m.dtype == torch.bool
    assert (m.sum(1) == 500).all() and (m.sum(0) == 4).all()
    assert (m[0::2] ^ m[1::2]).all()  # complementary pairs
    assert torch.equal(membership_matrix(4, 1000, seed=3), m[:4])  # a smaller zoo = first rows
    assert not torch.equal(membership_matrix(8, 1000, seed=4), m)


def test_pool_is_disjoint_and_canaries_are_mislabelled(zoo_run) -> None:
    zp, bundle = zoo_run.setup.zoo_pool, zoo_run.setup.ctx.bundle
    parts = [set(zp.pool.tolist()), set(zp.test.tolist()), set(zp.reference.tolist())]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 1000 + 500 + 250
    from mcmia_helpers.data import load_dataset

    true = load_dataset("fashion-mnist").labels[zp.pool]
    assert int(zp.canary.sum()) == 100
    assert (zp.labels[zp.canary] != true[zp.canary]).all()
    assert torch.equal(zp.labels[~zp.canary], true[~zp.canary])
    assert torch.equal(bundle.labels[zp.pool], zp.labels)  # the models train on the canary labels


def test_defended_zoo_reuses_the_dense_halves_and_seeds(zoo_run) -> None:
    pruned, dense = zoo_run.pruned, zoo_run.dense
    assert torch.equal(pruned.membership, dense.membership[:4])
    assert pruned.seeds == dense.seeds[:4]
    assert zoo_run.pruned_record["training"]["dense"] == {**zoo_run.pruned_record["training"]["dense"],
                                                          "cached": 4, "trained": 0}
    sparsity = [e["sparsity_achieved"] for e in pruned.extras]
    assert all(abs(s - 0.9) < 0.01 for s in sparsity)


def test_batched_pruning_and_continued_training_match_one_model_at_a_time(zoo_run) -> None:
    import copy

    from mcmia_helpers.defences.pruning import ADMMSettings, default_sparsity_profile, prune_model
    from mcmia_helpers.shadow import predict_logits_many
    from mcmia_helpers.training import fit

    setup = zoo_run.setup
    bundle, pool, test = setup.ctx.bundle, setup.zoo_pool.pool, setup.zoo_pool.test[:200]
    dense = zoo_train.dense_models(setup, [0, 1])
    index_sets = [pool[setup.membership[i]] for i in (0, 1)]
    seeds = setup.seeds(2)
    config = replace(setup.ctx.train_config, epochs=2)
    profile = default_sparsity_profile(dense[0], 0.9)
    for method, sparsity in (("admm", profile), ("magnitude", 0.9), ("magnitude", profile)):
        batched = [copy.deepcopy(m) for m in dense]
        infos = prune_models_batched(batched, bundle, index_sets, config, seeds, method, sparsity,
                                     admm_epochs=1, retrain_epochs=1, settings=ADMMSettings(),
                                     device=torch.device("cpu"))
        single = [copy.deepcopy(m) for m in dense]
        for model, idx, seed in zip(single, index_sets, seeds):
            prune_model(model, bundle, idx, replace(config, seed=seed), method, sparsity,
                        admm_epochs=1, retrain_epochs=1, admm=ADMMSettings())
        for a, b, info in zip(batched, single, infos):
            assert info["sparsity_achieved"] == pytest.approx(0.9, abs=0.005)
            weights_b = dict(b.named_parameters())
            for name, wa in a.named_parameters():
                assert torch.equal(wa == 0, weights_b[name] == 0), f"{method}: masks differ in {name}"
        logits_a, logits_b = predict_logits_many(batched, bundle, test), predict_logits_many(single, bundle, test)
        # Same masks, same batches: only float summation order differs (grouped vs plain
        # convolutions), which two epochs of training amplify to a few thousandths at most.
        assert float((logits_a - logits_b).abs().max()) < 1e-2, (method, sparsity)
        assert torch.equal(logits_a.argmax(-1), logits_b.argmax(-1)), (method, sparsity)
    longer = [copy.deepcopy(m) for m in dense]
    continue_training(longer, bundle, index_sets, config, seeds, torch.device("cpu"))
    for model, idx, seed in zip(dense, index_sets, seeds):
        fit(model, bundle, idx, replace(config, seed=seed), device=torch.device("cpu"))
    diff = (predict_logits_many(longer, bundle, test) - predict_logits_many(dense, bundle, test)).abs()
    assert float(diff.max()) < 1e-3


def test_magnitude_profile_zoo_is_pruned_together_to_admms_layer_targets(zoo_run) -> None:
    from mcmia_helpers.defences.pruning import default_sparsity_profile

    params = {"pruning": "magnitude-profile", "sparsity": 0.9}
    zoo = train_zoo(zoo_run.setup, "prune", params, n_models=2)
    profile = default_sparsity_profile(zoo_train._builder(zoo_run.setup)(), 0.9)
    assert zoo.info["trained"] == 2
    for extra in zoo.extras:
        assert extra["batched"] and extra["pruning"] == "magnitude-profile"
        assert (extra["pruning_algorithm"], extra["sparsity_allocation"]) == ("magnitude", "profile")
        assert extra["sparsity_per_layer"] == pytest.approx(profile, abs=0.01)
    admm = train_zoo(zoo_run.setup, "prune", PRUNE, n_models=2)  # the same layer allocation
    for pruned_admm, pruned_magnitude in zip(admm.extras, zoo.extras):
        assert pruned_admm["sparsity_per_layer"] == pytest.approx(
            pruned_magnitude["sparsity_per_layer"], abs=0.01)


def test_dense_long_continues_the_dense_models(zoo_run) -> None:
    from mcmia_helpers.shadow import predict_logits_many
    from mcmia_helpers.training import fit

    setup = zoo_run.setup
    longer = train_zoo(setup, "dense-long", {}, n_models=2)
    assert longer.info["trained"] == 2 and longer.seeds == zoo_run.dense.seeds[:2]
    assert torch.equal(longer.membership, zoo_run.dense.membership[:2])
    extra_epochs = zoo_train.long_epochs(setup.ctx.train_config)
    assert [e["continued_epochs"] for e in longer.extras] == [extra_epochs] * 2
    (parent,) = zoo_train.dense_models(setup, [1])  # the reference: fit on from dense model 1
    fit(parent, setup.ctx.bundle, setup.zoo_pool.pool[setup.membership[1]],
        replace(setup.ctx.train_config, epochs=extra_epochs, seed=setup.seeds(2)[1]),
        device=torch.device("cpu"))
    expected = predict_logits_many([parent], setup.ctx.bundle, setup.zoo_pool.pool)[0]
    # The grouped engine and ``fit`` sum in another order (grouped against plain convolutions),
    # and the extra epochs amplify that float noise: measured at OMP_NUM_THREADS=1, logits up
    # to ~0.8 apart. So: the same predictions, and far closer to the reference than the dense
    # model it started from (a zoo that restarted or did not continue fails both).
    agree = (longer.logits[1].argmax(1) == expected.argmax(1)).float().mean().item()
    to_reference = (longer.logits[1] - expected).abs().mean().item()
    dense_to_reference = (zoo_run.dense.logits[1] - expected).abs().mean().item()
    print(f"dense-long vs fit: argmax agreement {agree:.4f}, mean |diff| {to_reference:.4f}, "
          f"dense vs fit {dense_to_reference:.4f}")
    assert agree >= 0.97, agree
    assert to_reference < 0.25 * dense_to_reference, (to_reference, dense_to_reference)
    assert not torch.allclose(longer.logits[1], zoo_run.dense.logits[1], atol=1e-2)


# --------------------------------------------------------------------------- resume


def test_killed_zoo_resumes_training_only_the_missing_models(zoo_run) -> None:
    epochs = zoo_run.epochs
    assert zoo_run.saves == list(range(epochs)) + list(range(5))  # group 1 done, group 2 killed
    models = [n for n in zoo_run.after_kill if not n.startswith("group-")]
    checkpoints = [n for n in zoo_run.after_kill if n.startswith("group-")]
    assert len(models) == 4 and len(checkpoints) == 1
    # The rerun trained only the 4 missing models, from the epoch after the last one saved.
    assert zoo_run.record["training"]["zoo"] | {"seconds": 0} == {"cached": 4, "trained": 4, "seconds": 0}
    assert zoo_run.resumed_saves == list(range(5, epochs))
    now = {p.name: p.stat().st_mtime_ns for p in (zoo_run.cache / "zoo").glob("*.pt")}
    assert all(now[name] == zoo_run.after_kill[name] for name in models)  # never rewritten
    assert not [n for n in now if n.startswith("group-")]  # checkpoints dropped once saved
    assert {f"{k}.pt" for k in zoo_run.dense.keys + zoo_run.pruned.keys} <= set(now)
    # The resumed models are the ones an uninterrupted run trains.
    setup = zoo_run.setup
    group = [4, 5, 6, 7]
    fresh = zoo_grouped.train_new_models(zoo_train._builder(setup), setup.ctx.bundle,
                                         [setup.zoo_pool.pool[setup.membership[i]] for i in group],
                                         setup.ctx.train_config, setup.seeds(8)[4:],
                                         torch.device("cpu"))
    from mcmia_helpers.shadow import predict_logits_many

    logits = predict_logits_many(fresh, setup.ctx.bundle, setup.zoo_pool.pool)
    assert torch.allclose(logits, zoo_run.dense.logits[4:], atol=1e-5)


def test_a_cached_zoo_is_not_trained_again(zoo_run) -> None:
    again = train_zoo(zoo_run.setup, "none", {})
    assert again.info["trained"] == 0 and again.info["cached"] == 8
    assert torch.equal(again.logits, zoo_run.dense.logits)


# --------------------------------------------------------------------------- leave-one-out


def test_leave_one_out_never_uses_model_i_of_any_zoo(zoo_run) -> None:
    dense, pruned = zoo_run.dense, zoo_run.pruned
    cases = [attack_zoo("lira_online", pruned, dense), attack_zoo("lira_online_aware", pruned, pruned),
             attack_zoo("loss", dense, dense)]
    for zs in cases:
        assert len(zs.shadows) == len(zs.scores)
        for i, used in enumerate(zs.shadows):
            assert used, "a target without shadow models"
            assert all(j != i for _, j in used), f"{zs.attack}: target {i} used model {i}"
            assert all(j != i ^ 1 for _, j in used), f"{zs.attack}: target {i} used its partner"
    for name, entry in zoo_run.pruned_record["attacks"].items():
        for i, used in enumerate(entry["shadow_models"]):
            assert i not in used and i ^ 1 not in used and len(used) == 2, name
    assert zoo_run.pruned_record["attacks"]["lira_online"]["shadow_zoo"] == "none"
    assert zoo_run.pruned_record["attacks"]["lira_online_aware"]["shadow_zoo"].startswith("prune(")


# --------------------------------------------------------------------------- leakage


def test_overfit_zoo_leaks_and_random_membership_does_not(zoo_run) -> None:
    pooled = zoo_run.record["attacks"]["lira_online"]["all"]["pooled"]
    assert pooled["auc"] > 0.58 and pooled["ci95"]["auc"][0] > 0.55
    dense = zoo_run.dense
    fake = replace(dense, membership=random_membership(dense.membership, seed=1))
    assert (fake.membership.sum(0) == 4).all() and not torch.equal(fake.membership, dense.membership)
    control = zoo_metrics(attack_zoo("lira_online", fake, fake), "all", n_bootstrap=200)
    low, high = control["pooled"]["ci95"]["auc"]
    assert low < 0.5 < high and abs(control["pooled"]["auc"] - 0.5) < 0.03


def test_canaries_leak_more_than_ordinary_examples(zoo_run) -> None:
    lira = zoo_run.record["attacks"]["lira_online"]
    canaries, ordinary = lira["canaries"]["pooled"], lira["ordinary"]["pooled"]
    assert canaries["ci95"]["tpr_at_1pct_fpr"][0] > ordinary["tpr_at_1pct_fpr"]
    assert canaries["auc"] > ordinary["auc"]
    assert lira["canaries"]["n_pooled_nonmembers"] == 8 * 100 // 2
    assert lira["ordinary"]["n_pooled_nonmembers"] == 8 * 900 // 2


def test_pooled_and_per_target_metrics_match_the_saved_scores(zoo_run) -> None:
    saved = np.load(zoo_run.out / "dense.npz")
    m = saved["membership"]
    assert m.shape == (8, 1000) and (m.sum(1) == 500).all()
    for name in ("lira_online", "loss"):
        s = saved[f"score_{name}"]
        entry = zoo_run.record["attacks"][name]["all"]
        assert entry["pooled"]["auc"] == pytest.approx(metrics.auc(m.ravel(), s.ravel()), abs=1e-12)
        assert entry["per_target"]["auc"] == pytest.approx([metrics.auc(m[i], s[i]) for i in range(8)],
                                                           abs=1e-12)
        tpr = metrics.tpr_at_fpr(m.ravel(), s.ravel(), 0.01)
        assert entry["pooled"]["tpr_at_1pct_fpr"] == pytest.approx(tpr, abs=1e-12)
        mean = entry["mean_over_targets"]["auc"]
        assert mean["low"] <= mean["mean"] <= mean["high"]
        assert mean["mean"] == pytest.approx(np.mean(entry["per_target"]["auc"]))
    assert np.array_equal(saved["pool_indices"], zoo_run.setup.zoo_pool.pool.numpy())
    exposure = example_exposure(attack_zoo("lira_online", zoo_run.dense, zoo_run.dense))
    assert np.allclose(exposure["auc"], saved["exposure_auc_lira_online"])
    canary = saved["canary"]
    assert exposure["auc"][canary].mean() > exposure["auc"][~canary].mean()


def test_paired_difference_is_the_difference_of_the_pooled_metrics(zoo_run) -> None:
    dense, pruned = zoo_run.dense, zoo_run.pruned
    dense4 = replace(dense, logits=dense.logits[:4], membership=dense.membership[:4])
    a = attack_zoo("lira_online", pruned, dense4)  # as the 4-model pruned run did
    b = attack_zoo("lira_online", dense4, dense4)
    diff = paired_difference(a, b, "all", n_bootstrap=100)
    pa, pb = zoo_metrics(a, "all", n_bootstrap=0), zoo_metrics(b, "all", n_bootstrap=0)
    assert diff["auc"]["pooled"] == pytest.approx(pa["pooled"]["auc"] - pb["pooled"]["auc"], abs=1e-12)
    low, high = diff["auc"]["pooled_ci95"]
    assert low <= diff["auc"]["pooled"] <= high
    recorded = zoo_run.pruned_record["paired_vs_dense"]["lira_online"]["all"]["auc"]["pooled"]
    assert recorded == pytest.approx(diff["auc"]["pooled"], abs=1e-12)


# --------------------------------------------------------------------------- command line


def test_cli_loads_the_cached_zoo_and_writes_record_and_scores(zoo_run, tmp_path, monkeypatch,
                                                               capsys) -> None:
    monkeypatch.setenv("MCMIA_CACHE", str(zoo_run.cache))
    out, npz = tmp_path / "z.json", tmp_path / "z.npz"
    rc = cli.main(["zoo", "--arch", "lenet5", "--dataset", "fashion-mnist", "--scale", "ci",
                   "--attacks", "lira_offline,entropy", "--out", str(out), "--save-scores", str(npz)])
    assert rc == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["training"]["zoo"]["trained"] == 0
    assert (record["models"], record["pool"], record["canaries"], record["members_per_model"]) == (8, 1000, 100, 500)
    assert record["pooled_nonmembers"] == 4000 and record["dataset_used"] == "fashion-mnist"
    assert len(record["utility"]["test_acc"]) == 8 and record["utility"]["test_acc_mean"] > 0.5
    saved = np.load(npz)
    auc = metrics.auc(saved["membership"].ravel(), saved["score_lira_offline"].ravel())
    assert record["attacks"]["lira_offline"]["all"]["pooled"]["auc"] == pytest.approx(auc, abs=1e-12)


@pytest.mark.parametrize("args, words", [
    (["--models", "2"], "--models 2"),
    (["--models", "7"], "--models 7"),
    (["--pool", "999"], "--pool 999"),
    (["--pool", "100000"], "use --pool"),
    (["--attacks", "lira_online,bogus"], "bogus"),
    (["--defense", "bogus"], "bogus"),
    (["--defense", "dense-long", "--sparsity", "0.5"], "--sparsity"),
    (["--defense", "prune", "--sparsity", "1.5"], "sparsity"),
])
def test_cli_bad_input_is_one_line_and_exit_2_before_training(args, words, tmp_path, monkeypatch,
                                                              capsys) -> None:
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["zoo", "--arch", "lenet5", "--dataset", "fashion-mnist", "--scale", "ci", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "cache" / "zoo").exists()  # nothing trained


def test_zoo_spec_rejects_bad_sizes_without_data() -> None:
    with pytest.raises(UserError, match="even number >= 4"):
        ZooSpec("lenet5", "fashion-mnist", n_models=5).validate()
    with pytest.raises(UserError, match="canaries"):
        ZooSpec("lenet5", "fashion-mnist", pool=100, canaries=100).validate()


def test_zoo_models_are_the_zoos_own_models(zoo_run) -> None:
    """``zoo_models`` loads what the zoo's logits came from: the pruned zoo's model 1 is sparse
    and reproduces its stored pool logits; an index outside the zoo is a one-line error."""
    from mcmia_helpers.errors import UserError
    from mcmia_helpers.shadow import predict_logits_many
    from mcmia_helpers.zoo import zoo_models

    setup, pruned = zoo_run.setup, zoo_run.pruned
    (model,) = zoo_models(setup, pruned, [1])
    weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros > 0.8
    logits = predict_logits_many([model], setup.ctx.bundle, setup.zoo_pool.pool,
                                 device=torch.device("cpu"))[0]
    assert torch.allclose(logits, pruned.logits[1], atol=1e-4)
    with pytest.raises(UserError, match="is not in the"):
        zoo_models(setup, pruned, [pruned.n_models])
