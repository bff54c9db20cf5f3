"""create_run + the prepare stage end to end on the synthetic reader (3 shards), re-runs, and errors."""
import sys

import numpy as np
import pytest
import yaml

from fyp import stages
from fyp.config import ConfigError
from fyp.data import build_reader
from fyp.data.stage import create_run
from fyp.run import Run
from fyp.store import RunStore


def test_prepare_three_shards_matches_the_reader(tmp_path):
    run_dir = tmp_path / "run"
    run = create_run(run_dir, "tiny", samples=10, shards=3)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["data"]["samples"] == 10 and cfg["shards"] == 3 and cfg["data"]["kind"] == "synthetic"
    store = RunStore.open(run_dir)
    res, k = run.config.data.resolution, run.config.sampling.candidates
    assert (store.shape.n, store.shape.k, store.shape.height, store.shape.shards) == (10, k, res, 3)
    assert store.samples.image.shape == (10, res, res, 3) and store.candidates.image.shape == (10, k, res, res, 3)
    assert all("value" in store.scores(r) for r in run.config.reward_names)
    stage = stages.get_stage("prepare")
    assert stage.pending_shards(run, None, {}) == [0, 1, 2] and stage.progress(run, None, {}) == (0, 10)

    counts = [stages.execute_shard("prepare", run_dir, s) for s in (2, 0)]  # any order
    assert counts == [dict(done=2, invalid=0, skipped=0), dict(done=4, invalid=0, skipped=0)]
    assert stage.pending_shards(run, None, {}) == [1] and stage.progress(run, None, {}) == (6, 10)
    assert stages.execute_shard("prepare", run_dir, 1) == dict(done=4, invalid=0, skipped=0)
    assert stage.pending_shards(run, None, {}) == [] and stage.progress(run, None, {}) == (10, 10)

    reader = build_reader(run.config.data, run.config.seed)
    store = RunStore.open(run_dir)
    for i in range(10):
        sample = reader[i]
        np.testing.assert_array_equal(store.samples.image[i], sample.image)
        np.testing.assert_array_equal(store.samples.mask[i], sample.mask)
    assert list(store.samples.id[:]) == [f"train-{i:06d}" for i in range(10)]
    assert list(store.samples.prompt[:]) == [reader[i].prompt for i in range(10)]
    assert store.samples.valid[:].all() and list(store.samples.reason[:]) == [""] * 10
    assert set(np.unique(store.samples.mask[:])) == {0, 1}

    # A re-run skips every shard and leaves the data untouched.
    before = store.samples.image[:]
    assert [stages.execute_shard("prepare", run_dir, s) for s in range(3)] == [dict(done=0, invalid=0, skipped=n)
                                                                              for n in (4, 4, 2)]
    np.testing.assert_array_equal(RunStore.open(run_dir).samples.image[:], before)
    stage.finalize(run, None, {})
    reopened = Run.open(run_dir).store(mode="r")
    assert reopened.samples.attrs["valid"] == 10


def test_prepare_is_independent_of_the_shard_count(tmp_path):
    one = create_run(tmp_path / "one", "tiny", samples=7, shards=1)
    three = create_run(tmp_path / "three", "tiny", samples=7, shards=3)
    stages.execute_shard("prepare", one.dir, 0)
    for s in range(3):
        stages.execute_shard("prepare", three.dir, s)
    a, b = one.store(mode="r"), three.store(mode="r")
    for name in ("image", "mask", "prompt", "id", "valid"):
        np.testing.assert_array_equal(a.samples[name][:], b.samples[name][:])


def test_a_half_written_shard_is_redone(tmp_path):
    run = create_run(tmp_path / "run", "tiny", samples=4, shards=2)
    store = run.store()
    store.samples.image[0:2] = 7  # as if a task died after writing images but before done
    assert stages.get_stage("prepare").pending_shards(run, None, {}) == [0, 1]
    assert stages.execute_shard("prepare", run.dir, 0)["done"] == 2
    reader = build_reader(run.config.data, run.config.seed)
    np.testing.assert_array_equal(run.store(mode="r").samples.image[0], reader[0].image)


def test_create_run_errors(tmp_path):
    with pytest.raises(ConfigError, match="shards \\(5\\) is more than the 4 samples"):
        create_run(tmp_path / "a", "tiny", samples=4, shards=5)
    assert not (tmp_path / "a" / "config.yaml").exists()  # nothing written on error
    create_run(tmp_path / "b", "tiny", samples=2, shards=1)
    with pytest.raises(FileExistsError, match="already a prepared run"):
        create_run(tmp_path / "b", "tiny", samples=2, shards=1)
    with pytest.raises(ConfigError, match="data.kind must be one of synthetic, brushdata, .*, got 'nope'"):
        create_run(tmp_path / "c", "tiny", overrides={"data": {"kind": "nope"}})
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        create_run(tmp_path / "d", "huge")
    with pytest.raises(ConfigError, match="data.samples must be an integer >= 0, got -1"):
        create_run(tmp_path / "e", "tiny", samples=-1)
    # samples=0 takes everything the reader has (the synthetic heldout split has 1000).
    run = create_run(tmp_path / "f", "tiny", overrides={"data": {"split": "heldout"}}, samples=0, shards=4)
    assert run.store(mode="r").shape.n == 1000


def test_save_latents(tmp_path, monkeypatch):
    from fyp.models.flux_fill import latent_shape

    run = create_run(tmp_path / "lat", "tiny", overrides={"sampling": {"save_latents": True}}, samples=3, shards=1)
    expected = latent_shape(run.config.model, run.config.data.resolution)
    assert run.store(mode="r").candidates.latent.shape == (3, run.config.sampling.candidates, *expected)
    # Without the model package the request is refused with a clear message, before anything is written.
    monkeypatch.setitem(sys.modules, "fyp.models.flux_fill", None)
    with pytest.raises(ConfigError, match="save_latents needs fyp.models.flux_fill.latent_shape"):
        create_run(tmp_path / "nolat", "tiny", overrides={"sampling": {"save_latents": True}}, samples=3, shards=1)
    assert not (tmp_path / "nolat" / "config.yaml").exists()
