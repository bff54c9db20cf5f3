"""Kill-and-resume of the sample stage on tiny-brushnet: a SIGKILLed task, re-run, leaves the store
bit-identical to an uninterrupted run's (the machinery of tests/sampling/test_sampling_resume.py, another model)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fyp.data.stage import create_run
from fyp.run import Run
from fyp.sampling.stage import HOLD_FILE, SampleStage
from fyp.stages import execute_shard
from test_sampling_resume import SAMPLES, SHARD, SHARDS, all_arrays, kill, same, start_task, wait_for

pytestmark = pytest.mark.timeout(600)


def prepared(path: Path) -> Run:
    create_run(path, "tiny-brushnet", samples=SAMPLES, shards=SHARDS)
    for shard in range(SHARDS):
        execute_shard("prepare", path, shard)
    return Run.open(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = prepared(tmp_path_factory.mktemp("reference") / "run")
    assert run.config.model.kind == "brushnet"
    execute_shard("sample", run.dir, SHARD)
    SampleStage().finalize(run, None, {})
    return all_arrays(run)


@pytest.mark.parametrize("hold", ["images:1"])
def test_brushnet_kill_at_a_hold_point_then_resume_is_bit_identical(reference, tmp_path, hold):
    run = prepared(tmp_path / "run")
    proc = start_task(run.dir, hold)
    wait_for(lambda: (run.dir / HOLD_FILE).exists(), proc, f"hold point {hold}")
    kill(proc)
    execute_shard("sample", run.dir, SHARD)
    SampleStage().finalize(run, None, {})
    got = all_arrays(run)
    assert got.keys() == reference.keys()
    assert run.store(mode="r").candidates.image[2:4].any()
    for name in reference:
        assert same(got[name], reference[name]), name


def test_brushnet_kill_at_an_arbitrary_moment_then_resume_is_bit_identical(reference, tmp_path):
    run = prepared(tmp_path / "run")
    proc = start_task(run.dir, None)
    done = run.store(mode="r").candidates.done
    wait_for(lambda: done[2], proc, "the first sample of the shard to be done")
    kill(proc)
    execute_shard("sample", run.dir, SHARD)
    SampleStage().finalize(run, None, {})
    got = all_arrays(run)
    for name in reference:
        assert same(got[name], reference[name]), name
