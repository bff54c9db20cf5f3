"""Kill-and-resume: a sample task SIGKILLed at any point, then re-run, leaves a bit-identical store.

A real subprocess runs the shard; the FYP_SAMPLE_HOLD hook parks it right after a chosen write
(images written but not the seed, seed but not done, the first sample done) and the test SIGKILLs it
there; one more run is killed at whatever moment the first sample's done flag is seen from outside.
The shard is then re-run and every array is compared with an uninterrupted run's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fyp.data.stage import create_run
from fyp.run import Run
from fyp.sampling.stage import HOLD_ENV, HOLD_FILE, SampleStage
from fyp.stages import execute_shard

SAMPLES, SHARDS, SHARD = 4, 2, 1  # shard 1 holds samples 2 and 3

pytestmark = pytest.mark.timeout(600)


def prepared(path: Path) -> Run:
    create_run(path, "tiny", samples=SAMPLES, shards=SHARDS)
    for shard in range(SHARDS):
        execute_shard("prepare", path, shard)
    return Run.open(path)


def all_arrays(run: Run) -> dict:
    """Every array of the store (samples, candidates, scores), by path."""
    return {name: node[:] for name, node in run.store(mode="r").arrays().items()}


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical contents (NaN, the fill of unscored scores, equals NaN)."""
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def start_task(run_dir: Path, hold: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop(HOLD_ENV, None)
    if hold:
        env[HOLD_ENV] = hold
    code = f"from fyp.stages import execute_shard; execute_shard('sample', {str(run_dir)!r}, {SHARD})"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def wait_for(condition, proc: subprocess.Popen, what: str, limit: float = 240) -> None:
    deadline = time.time() + limit
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"task ended (rc {proc.returncode}) before {what}: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = prepared(tmp_path_factory.mktemp("reference") / "run")
    execute_shard("sample", run.dir, SHARD)
    SampleStage().finalize(run, None, {})
    return all_arrays(run)


# (hold point, what the store must show at the moment of the kill: done flags of samples 2, 3)
HOLDS = [("images:1", [False, False]), ("seed:2", [True, False]), ("done:1", [True, False])]


@pytest.mark.parametrize("hold,done_at_kill", HOLDS, ids=[h for h, _ in HOLDS])
def test_kill_at_a_hold_point_then_resume_is_bit_identical(reference, tmp_path, hold, done_at_kill):
    run = prepared(tmp_path / "run")
    proc = start_task(run.dir, hold)
    wait_for(lambda: (run.dir / HOLD_FILE).exists(), proc, f"hold point {hold}")
    kill(proc)
    store = run.store(mode="r")
    assert list(store.candidates.done[2:4]) == done_at_kill
    if hold == "images:1":  # images of sample 2 written, its seeds and done flag not
        assert store.candidates.image[2].any() and (store.candidates.seed[2] == -1).all()
    assert SampleStage().pending_shards(run, None, {}) == [0, SHARD]  # shard 0 is never sampled here
    counts = execute_shard("sample", run.dir, SHARD)
    assert counts["done"] == 2 - sum(done_at_kill) and counts["skipped"] == sum(done_at_kill)
    SampleStage().finalize(run, None, {})
    got = all_arrays(run)
    assert got.keys() == reference.keys()
    for name in reference:
        assert same(got[name], reference[name]), name
    assert not list(run.store(mode="r").path.rglob("*.partial"))


def test_kill_at_an_arbitrary_moment_then_resume_is_bit_identical(reference, tmp_path):
    run = prepared(tmp_path / "run")
    proc = start_task(run.dir, None)
    done = run.store(mode="r").candidates.done
    wait_for(lambda: done[2], proc, "the first sample of the shard to be done")
    kill(proc)  # somewhere inside the second sample: generating it or writing it
    execute_shard("sample", run.dir, SHARD)
    SampleStage().finalize(run, None, {})
    got = all_arrays(run)
    for name in reference:
        assert same(got[name], reference[name]), name


# Blocks of 2 samples: 8 samples in 2 shards -> shard 1 holds samples 4-7 in blocks 4-5 and 6-7.
BLOCKED_SAMPLES = 8


@pytest.fixture(scope="module")
def blocked_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("blocked") / "run"
    create_run(path, "tiny", samples=BLOCKED_SAMPLES, shards=SHARDS)
    for shard in range(SHARDS):
        execute_shard("prepare", path, shard)
    run = Run.open(path)
    execute_shard("sample", run.dir, SHARD)
    SampleStage().finalize(run, None, {})
    return all_arrays(run)


# (hold point, done flags of samples 4-7 at the kill, samples the re-run generates)
BLOCK_HOLDS = [("images:1", [False] * 4, 4), ("done:1", [True, True, False, False], 2),
               ("images:2", [True, True, False, False], 2)]


@pytest.mark.parametrize("hold,done_at_kill,redone", BLOCK_HOLDS, ids=[h for h, _, _ in BLOCK_HOLDS])
def test_a_kill_inside_a_block_loses_that_block_only_and_resume_is_bit_identical(blocked_reference, tmp_path, hold,
                                                                                   done_at_kill, redone):
    path = tmp_path / "run"
    create_run(path, "tiny", samples=BLOCKED_SAMPLES, shards=SHARDS)
    for shard in range(SHARDS):
        execute_shard("prepare", path, shard)
    run = Run.open(path)
    assert run.store(mode="r").shape.block == 2
    proc = start_task(run.dir, hold)
    wait_for(lambda: (run.dir / HOLD_FILE).exists(), proc, f"hold point {hold}")
    kill(proc)
    store = run.store(mode="r")
    assert list(store.candidates.done[4:8]) == done_at_kill
    if hold == "images:1":  # the whole first block's images are written at once, its seeds and done flags not
        assert store.candidates.image[4].any() and store.candidates.image[5].any()
        assert (store.candidates.seed[4:6] == -1).all() and not store.candidates.image[6:8].any()
    counts = execute_shard("sample", run.dir, SHARD)
    assert counts["done"] == redone and counts["skipped"] == 4 - redone
    SampleStage().finalize(run, None, {})
    got = all_arrays(run)
    assert got.keys() == blocked_reference.keys()
    for name in blocked_reference:
        assert same(got[name], blocked_reference[name]), name
