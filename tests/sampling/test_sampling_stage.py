"""The sample stage end to end on real stores: prepare + sample through fyp.stages.execute_shard."""
from __future__ import annotations

import time

from types import SimpleNamespace

import numpy as np
import pytest

from fyp.data.stage import create_run
from fyp.models import latent_shape
from fyp.run import Run
from fyp.sampling import candidate_seeds
from fyp.stages import execute_shard, get_stage
from fyp.store import StoreError

SAMPLES = 8


def prepared(path, shards, samples=SAMPLES, **overrides) -> Run:
    run = create_run(path, "tiny", overrides=overrides, samples=samples, shards=shards)
    for shard in range(shards):
        execute_shard("prepare", path, shard)
    return Run.open(path)


def sampled(path, shards, samples=SAMPLES, **overrides) -> Run:
    run = prepared(path, shards, samples, **overrides)
    for shard in range(shards):
        execute_shard("sample", path, shard)
    get_stage("sample").finalize(run, None, {})
    return run


class _Loaded:
    """A part of the store whose arrays read whole: `arrays(run).candidates.image` is a numpy array."""

    def __init__(self, part):
        self.part = part

    def __getattr__(self, name):
        return getattr(self.part, name)[:]


def arrays(run: Run) -> SimpleNamespace:
    store = run.store(mode="r")
    return SimpleNamespace(samples=_Loaded(store.samples), candidates=_Loaded(store.candidates))


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    return sampled(tmp_path_factory.mktemp("one") / "run", shards=1)


def test_three_shards_and_one_shard_give_identical_candidates(one_shard, tmp_path):
    three = sampled(tmp_path / "three", shards=3)
    a = arrays(one_shard)
    b = arrays(three)
    assert a.candidates.done.all() and b.candidates.done.all()
    assert np.array_equal(a.candidates.image, b.candidates.image)
    assert np.array_equal(a.candidates.seed, b.candidates.seed)
    # Seeds are the documented function of (run seed, sample id, k).
    ids = one_shard.store(mode="r").samples.id[:]
    for n, sample_id in enumerate(ids):
        assert list(a.candidates.seed[n]) == candidate_seeds(0, str(sample_id), 4)
    # Candidates differ between seeds (within a sample) and are real images, not the fill value.
    images = a.candidates.image
    for n in range(SAMPLES):
        for k in range(1, 4):
            assert (images[n, 0] != images[n, k]).mean() > 0.5
    assert images.std() > 10
    stage = get_stage("sample")
    assert stage.progress(three, None, {}) == (SAMPLES, SAMPLES)
    assert stage.pending_shards(three, None, {}) == []


def test_a_rerun_with_nothing_to_do_says_so_quickly(one_shard, caplog):
    store = one_shard.store(mode="r")
    before = {name: a[:] for name, a in store.arrays().items()}
    start = time.time()
    with caplog.at_level("INFO", logger="fyp.sampling"):
        counts = execute_shard("sample", one_shard.dir, 0)
    assert time.time() - start < 5
    assert counts["done"] == 0 and counts["skipped"] == SAMPLES
    assert "nothing to do" in caplog.text
    after = {name: a[:] for name, a in one_shard.store(mode="r").arrays().items()}
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k], equal_nan=before[k].dtype.kind == "f") for k in before)


def test_batch_size_does_not_change_candidates(one_shard, tmp_path):
    reference = arrays(one_shard).candidates.image[:3]
    for batch in (1, 3):  # 3: batches of 3 + 1 of the K = 4 candidates
        run = sampled(tmp_path / f"batch{batch}", shards=1, samples=3, sampling={"batch_size": batch})
        assert np.array_equal(arrays(run).candidates.image, reference), batch


def test_candidates_differ_between_run_seeds(one_shard, tmp_path):
    other = sampled(tmp_path / "seed1", shards=1, samples=2, seed=1)
    a = arrays(one_shard)
    b = arrays(other)
    assert not np.array_equal(a.candidates.seed[:2], b.candidates.seed)
    assert (a.candidates.image[:2] != b.candidates.image).mean() > 0.5


def test_invalid_samples_are_skipped_and_counted(tmp_path, caplog):
    run = prepared(tmp_path / "bad", shards=2, samples=6)
    store = run.store()
    # Samples 1 and 4 (one in each shard) fail validation, as a reader marks a corrupt image.
    valid = store.samples.valid[:]
    valid[[1, 4]] = False
    store.samples.valid[:] = valid
    stage = get_stage("sample")
    assert stage.progress(run, None, {}) == (0, 4)
    with caplog.at_level("INFO", logger="fyp.sampling"):
        counts = [execute_shard("sample", run.dir, shard) for shard in range(2)]
    assert [(c["done"], c["invalid"], c["candidates"]) for c in counts] == [(2, 1, 8), (2, 1, 8)]
    assert "1 invalid" in caplog.text
    got = arrays(run)
    assert list(got.candidates.done) == [True, False, True, True, False, True]
    assert (got.candidates.seed[[1, 4]] == -1).all() and not got.candidates.image[[1, 4]].any()
    assert got.candidates.image[[0, 2, 3, 5]].std() > 10
    assert stage.progress(run, None, {}) == (4, 4)
    assert stage.pending_shards(run, None, {}) == []  # invalid samples leave no work behind


def test_sampling_an_unprepared_shard_is_a_clear_error(tmp_path):
    create_run(tmp_path / "raw", "tiny", samples=4, shards=2)
    execute_shard("prepare", tmp_path / "raw", 0)
    execute_shard("sample", tmp_path / "raw", 0)
    with pytest.raises(StoreError, match="prepare has not finished shard 1"):
        execute_shard("sample", tmp_path / "raw", 1)
    record = Run.open(tmp_path / "raw").task_records("sample")[1]
    assert record["state"] == "failed" and "prepare has not finished" in record["error"]


def test_latents_are_saved_when_asked(tmp_path):
    run = sampled(tmp_path / "latents", shards=1, samples=2, sampling={"save_latents": True})
    latents = run.store(mode="r").candidates.latent[:]
    assert latents.shape == (2, 4, *latent_shape(run.config.model, 64)) and latents.dtype == np.float16
    assert np.isfinite(latents).all() and latents.std() > 0.1
    assert not np.array_equal(latents[0, 0], latents[0, 1])


def test_bad_input_from_a_real_reader_is_skipped_and_counted(tmp_path):
    """BrushData records with a corrupt image and a missing caption: prepared invalid, never sampled."""
    from fixtures_data import brushdata_record, image_array, write_tar

    res = 32
    good = [brushdata_record(f"good{i}", image_array(res, res, i), caption=f"a red circle {i}") for i in range(3)]
    corrupt = brushdata_record("corrupt", image_array(res, res, 7), caption="a blue square")
    corrupt["corrupt.png"] = b"\x89PNG\r\n\x1a\n this is not a png"
    no_prompt = brushdata_record("noprompt", image_array(res, res, 8), caption="   ")
    tar = write_tar(tmp_path / "data.tar", [good[0], corrupt, good[1], no_prompt, good[2]])
    run_dir = tmp_path / "run"
    create_run(run_dir, "tiny", overrides={"data": {"kind": "brushdata", "path": str(tar), "resolution": res}},
               samples=0, shards=2)
    for shard in range(2):
        execute_shard("prepare", run_dir, shard)
    run = Run.open(run_dir)
    counts = [execute_shard("sample", run_dir, shard) for shard in range(2)]
    assert [c["invalid"] for c in counts] == [1, 1] and [c["done"] for c in counts] == [2, 1]
    got = arrays(run)
    assert list(got.samples.valid) == [True, False, True, False, True]
    assert list(got.candidates.done) == list(got.samples.valid)
    assert not got.candidates.image[[1, 3]].any() and got.candidates.image[[0, 2, 4]].std() > 10
    assert [r["invalid"] for r in run.task_records("sample")] == [1, 1]
