"""The pairs stage on a small real run store filled with random scores (ties, NaNs, infs, bad samples)."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

import fyp.ensemble as ens
from fyp.config import load_preset
from fyp.pairs.plan import PairsOptionError
from fyp.pairs.stage import PairsInputError, PairsStage
from fyp.run import Run
from fyp.stages import execute_shard, get_stage
from fyp.store import RunStore, Shape

N, K, SHARDS = 20, 6, 3
INVALID, NO_MODEL, ONE_NAN, ONE_INF, ALL_TIED = 5, 7, 8, 9, 10


def make_run(tmp_path, overrides=None) -> Run:
    cfg = load_preset("tiny", dict({"shards": SHARDS, "sampling": {"candidates": K}}, **(overrides or {})))
    run = Run.create(tmp_path / "run", cfg)
    store = RunStore.create(run.dir, Shape(N, K, 16, 16, SHARDS), cfg.reward_names)
    valid = np.ones(N, bool)
    valid[INVALID] = False
    store.samples.valid[:] = valid
    store.samples.reason[:] = np.array(["" if v else "mask is empty" for v in valid])
    store.samples.id[:] = np.array([f"s{i:03d}" for i in range(N)])
    store.samples.done[:] = True
    store.candidates.done[:] = True
    rng = np.random.default_rng(0)
    for j, reward in enumerate(cfg.reward_names):
        values = rng.integers(0, 5, size=(N, K)).astype(np.float32) + rng.random((N, 1)).astype(np.float32)
        values[INVALID] = np.nan  # what the score stage writes for an invalid sample
        values[NO_MODEL, j % K] = np.nan
        values[ALL_TIED] = 1.0
        if reward == "hpsv2":
            values[ONE_NAN, 2] = np.nan
        if reward == "pickscore":
            values[ONE_INF, 0] = np.inf
        store.scores(reward).value[:] = values
        store.scores(reward).done[:] = True
    return run


def opts(**kw) -> dict:
    out = {o.dest: None for o in PairsStage.options}
    out.update(kw)
    return out


def read_scores(run, rewards):
    store = run.store(mode="r")
    return np.stack([store.scores(r).value[:] for r in rewards], axis=1)


@pytest.fixture()
def run(tmp_path):
    return make_run(tmp_path)


def test_ensemble_pairs_arrays_attrs_and_report(run, capsys):
    stage = get_stage("pairs")
    assert isinstance(stage, PairsStage) and not stage.sharded and stage.num_shards(run, opts()) == 1
    assert stage.pending_shards(run, None, opts(backend="reference")) == [0]
    counts = execute_shard("pairs", run.dir, 0, None, opts(backend="reference"))
    stage.finalize(run, None, opts(backend="reference"))
    assert counts["done"] == N and counts["pairs"] + counts["skipped"] == N and counts["nonfinite"] > 0

    store = RunStore.open(run.dir, mode="r")
    winner, loser = store.pairs("ensemble").winner[:], store.pairs("ensemble").loser[:]
    valid, margin = store.pairs("ensemble").valid[:], store.pairs("ensemble").margin[:]
    assert winner.dtype == np.int32 and valid.dtype == bool and margin.dtype == np.float32
    rewards = run.config.reward_names
    want = ens.select_pairs(read_scores(run, rewards), rewards, "ensemble")
    sample_ok = np.ones(N, bool)
    sample_ok[INVALID] = False
    np.testing.assert_array_equal(valid, want.valid & sample_ok)
    np.testing.assert_array_equal(winner, np.where(valid, want.winner, -1))
    np.testing.assert_array_equal(loser, np.where(valid, want.loser, -1))
    assert not valid[[INVALID, NO_MODEL, ALL_TIED]].any() and valid[[ONE_NAN, ONE_INF]].all()
    assert (winner[valid] != loser[valid]).all() and np.isnan(margin).all()

    attrs = dict(store.pairs("ensemble").attrs)
    assert attrs["complete"] and attrs["method"] == "ensemble" and attrs["rewards"] == rewards
    assert attrs["weights"] == [1.0] * 9 and attrs["ties"] == "average" and attrs["seed"] == 0
    assert attrs["candidates"] == K and attrs["counts"]["pairs"] == int(valid.sum())
    assert attrs["left_out"]["hpsv2"] == 2 and attrs["left_out"]["pickscore"] == 2  # NO_MODEL + own
    assert dict(store.pairs("ensemble").valid.attrs)["method"] == "ensemble"
    assert stage.pending_shards(run, None, opts(backend="reference")) == []
    assert stage.progress(run, None, opts()) == (N, N)

    folder = run.dir / "pairs" / "ensemble"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["counts"] == {"samples": N, "pairs": int(valid.sum()), "no usable reward model": 1,
                                 "all candidates tied": 1, "invalid sample": 1}
    assert summary["nan_values"]["hpsv2"] == 1 + 1 and summary["inf_values"]["pickscore"] == 1
    skipped = list(csv.DictReader((folder / "skipped.csv").open()))
    reasons = {int(r["index"]): r["reason"] for r in skipped}
    assert set(reasons) == {INVALID, NO_MODEL, ALL_TIED}
    assert reasons[INVALID] == "invalid sample (mask is empty)"
    assert reasons[NO_MODEL].startswith("no usable reward model (missing or non-finite scores: clipscore")
    assert reasons[ALL_TIED] == "all candidates tied"
    assert skipped[0]["id"] == f"s{INVALID:03d}"
    assert (folder / "agreement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"{store.pairs('ensemble')}: method ensemble" in printed and "reward agreement: mean pairwise Kendall tau" in printed


def test_agreement_csv_is_the_kendall_matrix_over_valid_samples(run):
    PairsStage().run_shard(run, 0, None, opts(backend="reference"))
    rewards = run.config.reward_names
    rows = list(csv.reader((run.dir / "pairs" / "ensemble" / "agreement.csv").open()))
    assert rows[0] == ["reward", *rewards]
    table = np.array([[float(x) if x else np.nan for x in row[1:]] for row in rows[1:]])
    scores = read_scores(run, rewards)
    keep = np.ones(N, bool)
    keep[INVALID] = False
    tau, count = ens.kendall_tau_matrix(scores[keep])
    np.testing.assert_allclose(table, tau, atol=1e-6)
    assert np.allclose(np.diag(table), 1.0) and (np.abs(table) <= 1 + 1e-9).all()


def test_caen_with_candidate_scaling(run):
    counts = PairsStage().run_shard(run, 0, None, opts(method="caen", candidates=4, backend="reference"))
    store = RunStore.open(run.dir, mode="r")
    assert "winner" in store.pairs("caen-k4") and counts["pairs"] > 0
    winner, loser = store.pairs("caen-k4").winner[:], store.pairs("caen-k4").loser[:]
    valid, margin = store.pairs("caen-k4").valid[:], store.pairs("caen-k4").margin[:]
    assert (winner[valid] < 4).all() and (loser[valid] < 4).all()
    assert (margin[valid] > 0).all() and (margin[valid] <= 1).all() and np.isnan(margin[~valid]).all()
    attrs = dict(store.pairs("caen-k4").attrs)
    assert attrs["candidates"] == 4 and attrs["method"] == "caen"
    w = dict(zip(attrs["rewards"], attrs["weights"]))
    assert w["clipscore"] == 2.0 and w["perception"] == 2.0 and w["hpsv3"] == pytest.approx(5 / 7)
    rewards = run.config.reward_names
    want = ens.select_pairs(read_scores(run, rewards)[:, :, :4], rewards, "caen")
    rows = valid.nonzero()[0]
    np.testing.assert_allclose(margin[rows], want.margin[rows])


def test_options_override_config_and_name_defaults(tmp_path):
    run = make_run(tmp_path, {"pairs": {"method": "softmax", "temperature": 0.5, "seed": 3,
                                        "weights": {r: 80.0 + i for i, r in enumerate(
                                            ["clipscore", "aesthetic", "imagereward", "pickscore", "hpsv2",
                                             "vqascore", "unifiedreward", "perception", "hpsv3"])}}})
    stage = PairsStage()
    plan = stage.plan(run, opts())
    assert plan.method == "softmax" and plan.name == "softmax" and plan.seed == 3
    g = np.arange(9) / 0.5
    np.testing.assert_allclose(plan.weights, np.exp(g - g.max()) / np.exp(g - g.max()).sum())
    assert stage.plan(run, opts(method="ensemble", seed=9)).weights == (1.0,) * 9  # config weights ignored
    assert stage.plan(run, opts(method="ensemble", seed=9)).seed == 9
    single = stage.plan(run, opts(method="single", reward="pickscore", candidates=2))
    assert single.name == "pickscore-k2" and single.rewards == ("pickscore",)
    assert stage.plan(run, opts(method="filtered")).rewards == tuple(r for r in run.config.reward_names
                                                                     if r != "vqascore")
    assert stage.plan(run, opts(method="linear", weights="clipscore=1,perception=3",
                                rewards="clipscore,perception")).weights == (1.0, 3.0)
    assert stage.plan(run, opts(name="mine")).name == "mine"
    for bad, match in [(dict(method="best"), "unknown pairs method"), (dict(candidates=7), "2..6"),
                       (dict(candidates=1), "2..6"), (dict(ties="max"), "unknown tie method"),
                       (dict(method="single"), "needs a reward"), (dict(method="single", reward="nope"), "not scored"),
                       (dict(weights="clipscore:2"), "reward=value"), (dict(name="../x"), "letters"),
                       (dict(method="ensemble", weights="clipscore=2"), "takes no weights")]:
        with pytest.raises(PairsOptionError, match=match):
            stage.plan(run, opts(**bad))


def test_single_and_random(run):
    stage = PairsStage()
    stage.run_shard(run, 0, None, opts(method="single", reward="hpsv2", backend="reference"))
    stage.run_shard(run, 0, None, opts(method="random", seed=4, backend="reference"))
    store = RunStore.open(run.dir, mode="r")
    hp = store.scores("hpsv2").value[:]
    valid = store.pairs("hpsv2").valid[:]
    winner, loser = store.pairs("hpsv2").winner[:], store.pairs("hpsv2").loser[:]
    rows = valid.nonzero()[0]
    np.testing.assert_array_equal(hp[rows, winner[rows]], hp[rows].max(1))
    np.testing.assert_array_equal(hp[rows, loser[rows]], hp[rows].min(1))
    assert not valid[ONE_NAN]  # hpsv2's only model is missing there
    rvalid = store.pairs("random").valid[:]
    assert rvalid.sum() == N - 1 and not rvalid[INVALID]
    rw, rl = store.pairs("random").winner[:], store.pairs("random").loser[:]
    assert (rw[rvalid] != rl[rvalid]).all()


def test_incomplete_or_missing_scores_stop_with_the_reward_and_shards(run):
    store = run.store()
    done = store.scores("hpsv2").done[:]
    done[store.shard_slice(1)] = False
    done[store.shard_slice(2).start] = False
    store.scores("hpsv2").done[:] = done
    stage = PairsStage()
    with pytest.raises(PairsInputError, match=re.escape(f"{store.scores('hpsv2')} is incomplete: shard(s) 1, 2 of 3 not done")):
        stage.run_shard(run, 0, None, opts(backend="reference"))
    # a method that does not use hpsv2 still runs, and the agreement leaves hpsv2 out
    stage.run_shard(run, 0, None, opts(method="single", reward="pickscore", backend="reference"))
    summary = json.loads((run.dir / "pairs" / "pickscore" / "summary.json").read_text())
    assert "hpsv2" not in summary["agreement_rewards"] and len(summary["agreement_rewards"]) == 8
    cand = store.candidates.done[:]
    cand[0] = False
    store.candidates.done[:] = cand
    with pytest.raises(PairsInputError, match=r"candidates is incomplete: shard\(s\) 0 of 3"):
        stage.run_shard(run, 0, None, opts(method="random", backend="reference"))


def test_reward_without_score_arrays(tmp_path):
    run = make_run(tmp_path)
    run.config.pairs.rewards = []
    store = run.store()
    store.rewards.remove("hpsv3")  # as if the run never scored it
    store.update_attrs(rewards=store.rewards)
    with pytest.raises(PairsOptionError, match="not scored in this run"):
        PairsStage().plan(run, opts(method="single", reward="hpsv3"))


def test_rerun_replaces_the_group(run):
    stage = PairsStage()
    stage.run_shard(run, 0, None, opts(backend="reference", seed=1))
    assert stage.pending_shards(run, None, opts(seed=2)) == [0]
    stage.run_shard(run, 0, None, opts(backend="reference", seed=2))
    store = RunStore.open(run.dir, mode="r")
    assert store.pairs("ensemble").attrs["seed"] == 2
    assert stage.pending_shards(run, None, opts(seed=2)) == []


def test_cpp_backend_writes_the_same_pairs(run):
    stage = PairsStage()
    stage.run_shard(run, 0, None, opts(method="capo", backend="reference", name="ref"))
    stage.run_shard(run, 0, None, opts(method="capo", backend="cpp", name="cpp"))
    store = RunStore.open(run.dir, mode="r")
    for field in ("winner", "loser", "valid"):
        np.testing.assert_array_equal(store.pairs("cpp")[field][:], store.pairs("ref")[field][:])
    np.testing.assert_allclose(store.pairs("cpp").margin[:], store.pairs("ref").margin[:], atol=1e-6)
    assert json.loads((run.dir / "pairs" / "cpp" / "summary.json").read_text())["backend"] == "cpp"


def test_agreement_over_a_seeded_subset_when_the_run_is_larger(run, monkeypatch):
    """Above AGREEMENT_SAMPLES valid samples the report's tau is the mean over a seeded subset (recorded)."""
    import fyp.pairs.stage as pairs_stage

    monkeypatch.setattr(pairs_stage, "AGREEMENT_SAMPLES", 8)
    PairsStage().run_shard(run, 0, None, opts(backend="reference", seed=3))
    folder = run.dir / "pairs" / "ensemble"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["agreement_samples"] == {"used": 8, "of": N - 1, "limit": 8, "seed": 3}
    keep = np.flatnonzero(np.arange(N) != INVALID)
    rows = ens.agreement_subset(keep, 8, 3)
    assert rows.size == 8 and len(set(rows)) == 8 and set(rows) <= set(keep)
    assert np.array_equal(rows, ens.agreement_subset(keep, 8, 3))  # seeded: the same subset again
    assert not np.array_equal(rows, ens.agreement_subset(keep, 8, 4))
    tau, _ = ens.kendall_tau_matrix(read_scores(run, run.config.reward_names)[rows])
    table = np.array([[float(x) if x else np.nan for x in row[1:]]
                      for row in list(csv.reader((folder / "agreement.csv").open()))[1:]])
    np.testing.assert_allclose(table, tau, atol=1e-6)
