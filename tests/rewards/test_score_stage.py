"""The score stage on a small real run store: fills scores/<reward>, skips done work, resumes a killed task with
identical scores, counts non-finite scores, and runs a reward in another interpreter through the worker."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fyp import config as config_mod
from fyp.config import ConfigError
from fyp.rewards import build
from fyp.rewards import stage as stage_mod
from fyp.rewards.stage import ScoreStage
from fyp.run import Run
from fyp.stages import execute_shard, get_stage
from fyp.store import RunStore, Shape

N, K, H, W, SHARDS = 5, 3, 32, 32, 2  # shard 0: samples 0-2, shard 1: samples 3-4
REWARDS = ["clipscore", "hpsv2", "brightness"]


def make_run(root, rewards=REWARDS, invalid=(), not_sampled=(), python=None) -> Run:
    specs = [dict(name=r, tiny=True, device="cpu", batch_size=4, **({"python": python} if python else {}))
             for r in rewards]
    cfg = config_mod.from_dict(dict(preset="test", shards=SHARDS, rewards=specs,
                                    data=dict(resolution=32, samples=N), sampling=dict(candidates=K)))
    run = Run.create(root, cfg)
    store = RunStore.create(root, Shape(N, K, H, W, SHARDS), rewards)
    rng = np.random.default_rng(0)
    store.samples.prompt[:] = np.array(["a red car", "a photo of a cat", "a house", "a dog", "trees"], dtype=object)
    store.samples.valid[:] = np.array([i not in invalid for i in range(N)])
    store.samples.done[:] = True
    masks = np.zeros((N, H, W), np.uint8)
    masks[:, 8:24, 8:24] = 1
    store.samples.mask[:] = masks
    store.candidates.image[:] = rng.integers(0, 256, (N, K, H, W, 3), dtype=np.uint8)
    store.candidates.done[:] = np.array([i not in not_sampled for i in range(N)])
    return run


def direct_scores(run: Run, reward: str) -> np.ndarray:
    store = run.store("r")
    images = torch.from_numpy(np.asarray(store.candidates.image[:]).reshape(N * K, H, W, 3))
    prompts = [str(p) for p in np.repeat(np.asarray(store.samples.prompt[:]), K)]
    extra = {}
    model = build(reward, tiny=True, device="cpu")
    if getattr(model, "accepts_masks", False):
        extra["masks"] = torch.from_numpy(np.repeat(np.asarray(store.samples.mask[:]), K, axis=0))
    return model.score(images, prompts, **extra).numpy().reshape(N, K)


def test_variants_from_the_reward_option(tmp_path):
    run = make_run(tmp_path / "run")
    stage = get_stage("score")
    assert isinstance(stage, ScoreStage) and [o.dest for o in stage.options] == ["reward"]
    assert stage.variants(run, {"reward": "all"}) == REWARDS
    assert stage.variants(run, {}) == REWARDS
    assert stage.variants(run, {"reward": "hpsv2"}) == ["hpsv2"]
    assert stage.variants(run, {"reward": "hpsv2,clipscore"}) == ["hpsv2", "clipscore"]
    with pytest.raises(ConfigError, match="reward 'pickscore' is not in this run"):
        stage.variants(run, {"reward": "pickscore"})
    with pytest.raises(ValueError, match="--reward"):
        stage.pending_shards(run, None, {})


def test_score_all_fills_every_reward_and_rerun_skips(tmp_path):
    run = make_run(tmp_path / "run")
    stage = get_stage("score")
    for reward in stage.variants(run, {"reward": "all"}):
        assert stage.pending_shards(run, reward, {}) == [0, 1]
        assert stage.progress(run, reward, {}) == (0, N)
        first = [execute_shard("score", run.dir, shard, reward) for shard in range(SHARDS)]
        assert [c["done"] for c in first] == [3, 2] and sum(c["images"] for c in first) == N * K
        assert all(c["nonfinite"] == 0 and c["skipped"] == 0 for c in first)
        stage.finalize(run, reward, {})
        store = run.store("r")
        np.testing.assert_allclose(store.scores(reward).value[:], direct_scores(run, reward), rtol=1e-5,
                                   atol=1e-5)
        assert store.scores(reward).done[:].all()
        assert stage.pending_shards(run, reward, {}) == [] and stage.progress(run, reward, {}) == (N, N)
        again = execute_shard("score", run.dir, 1, reward)
        assert again["done"] == 0 and again["skipped"] == 2
        attrs = dict(RunStore.open(run.dir, "r").scores(reward).attrs)
        assert attrs == dict(done=N, total=N, nonfinite=0)
        assert run.task_records("score", reward)[1]["state"] == "done"
    # brightness got the hole masks: its score is the hole's mean luminance, not the whole image's
    store = run.store("r")
    img = np.asarray(store.candidates.image[0, 0]).astype(np.float64)
    luma = (img * np.array([0.2126, 0.7152, 0.0722])).sum(-1) / 255
    assert store.scores("brightness").value[0, 0] == pytest.approx(luma[8:24, 8:24].mean(), abs=1e-5)


class Killed(RuntimeError):
    pass


def test_killed_task_rerun_gives_identical_scores(tmp_path, monkeypatch):
    reference = make_run(tmp_path / "reference", rewards=["hpsv2"])
    execute_shard("score", reference.dir, 0, "hpsv2")
    run = make_run(tmp_path / "run", rewards=["hpsv2"])
    real_build = stage_mod.build_reward

    def build_dying_after_one_call(*args, **kwargs):
        model = real_build(*args, **kwargs)
        real_score, calls = model.score, []

        def score(*a, **k):
            if calls:
                raise Killed("task killed")
            calls.append(1)
            return real_score(*a, **k)

        model.score = score
        return model

    monkeypatch.setattr(stage_mod, "build_reward", build_dying_after_one_call)
    with pytest.raises(Killed):
        execute_shard("score", run.dir, 0, "hpsv2")  # batch_size 4 // K 3 = 1 sample per call
    assert run.task_records("score", "hpsv2")[0]["state"] == "failed"
    done = run.store("r").scores("hpsv2").done[:3]
    assert done.tolist() == [True, False, False]
    monkeypatch.setattr(stage_mod, "build_reward", real_build)
    counts = execute_shard("score", run.dir, 0, "hpsv2")
    assert counts["done"] == 2 and counts["skipped"] == 1
    np.testing.assert_array_equal(run.store("r").scores("hpsv2").value[:3],
                                  reference.store("r").scores("hpsv2").value[:3])


def test_invalid_waiting_and_nonfinite_are_counted(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", rewards=["clipscore"], invalid=(1,), not_sampled=(2,))
    real_build = stage_mod.build_reward

    def build_with_nan(*args, **kwargs):
        model = real_build(*args, **kwargs)
        real_score = model.score

        def score(images, prompts, **k):  # fails on every other image, as unparseable VLM answers would
            out = real_score(images, prompts, **k)
            return torch.where(torch.arange(len(out)) % 2 == 0, torch.nan, out)

        model.score = score
        return model

    monkeypatch.setattr(stage_mod, "build_reward", build_with_nan)
    counts = execute_shard("score", run.dir, 0, "clipscore")
    expected_nan = 2  # candidates 0 and 2 of the one scored sample
    assert counts["done"] == 1 and counts["invalid"] == 1 and counts["waiting"] == 1
    assert counts["nonfinite"] == expected_nan
    store = run.store("r")
    assert store.scores("clipscore").done[:3].tolist() == [True, True, False]
    assert np.isnan(store.scores("clipscore").value[1]).all()  # invalid: done, no scores
    assert run.task_records("score", "clipscore")[0]["nonfinite"] == expected_nan
    assert ScoreStage().pending_shards(run, "clipscore", {}) == [0, 1]
    ScoreStage().finalize(run, "clipscore", {})
    assert dict(RunStore.open(run.dir, "r").scores("clipscore").attrs)["nonfinite"] == expected_nan


def test_reward_in_its_own_interpreter_goes_through_the_worker(tmp_path):
    # brightness: the reward that imports least, so the second interpreter starts fast
    run = make_run(tmp_path / "run", rewards=["brightness"], python=sys.executable)
    counts = execute_shard("score", run.dir, 1, "brightness")
    assert counts["done"] == 2 and counts["images"] == 2 * K
    (record,) = run.task_records("score", "brightness")
    assert record["shard"] == 1 and record["images"] == 2 * K and record["state"] == "done"
    np.testing.assert_allclose(run.store("r").scores("brightness").value[3:], direct_scores(run, "brightness")[3:],
                               rtol=1e-6, atol=1e-6)
    assert not run.store("r").scores("brightness").done[:3].any()  # the worker touched its own shard only
    bad = make_run(tmp_path / "bad", rewards=["brightness"], python=f"{sys.executable} -c 'raise SystemExit(3)'")
    with pytest.raises(RuntimeError, match="exited with 3"):
        execute_shard("score", bad.dir, 0, "brightness")


def test_the_stage_hands_the_spec_batch_size_to_the_model(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", rewards=["hpsv2"])
    built = []
    real_build = stage_mod.build_reward

    def recording_build(*args, **kwargs):
        built.append(kwargs)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(stage_mod, "build_reward", recording_build)
    execute_shard("score", run.dir, 1, "hpsv2")
    assert built[0]["batch_size"] == 4 and built[0]["tiny"] is True and built[0]["device"] == "cpu"
