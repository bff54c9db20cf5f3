"""Outputs before done markers: a task SIGKILLed at each write point, then re-run, ends like an uninterrupted run.

A real process runs the task (`python -m hpc.task STAGE --run DIR --shard N | --finalize`); the FYP_HOLD hook
(fyp.hold) parks it right after a chosen write and the test SIGKILLs it there. The re-run is the user's
command, `python -m hpc.submit STAGE --run DIR` (local cluster): it must see the work as not done (the
pairs stage used to mark itself done before its report, so the re-run said "nothing to do" and the report
was lost), finish it, and leave arrays, attributes and files equal to a run that was never killed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from fyp.hold import HOLD_ENV, HOLD_FILE
from fyp.store import RunStore

pytestmark = [pytest.mark.timeout(900), pytest.mark.filterwarnings("ignore::UserWarning")]


def _env(hold: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != HOLD_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if hold:
        env[HOLD_ENV] = hold
    return env


def task_killed_at(point: str, run_dir: Path, args: list[str]) -> None:
    """Run `python -m hpc.task ARGS` until it parks at `point`, then SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-m", "hpc.task", *args], env=_env(point), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    marker = run_dir / HOLD_FILE
    deadline = time.time() + 600
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"task ended (rc {proc.returncode}) before {point}: {proc.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, f"timed out waiting for {point}"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    marker.unlink()


def submit(run_dir: Path, stage: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "hpc.submit", stage, "--run", str(run_dir), *args],
                         capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def store_state(run_dir: Path, part=None) -> dict:
    """Every array's contents and every node's attributes (under a group: `part(store)`, a store accessor
    such as `lambda s: s.samples`; or the whole store)."""
    store = RunStore.open(run_dir, mode="r")
    root = zarr.open_group(store.path, mode="r", use_consolidated=False)
    group = root[str(part(store))] if part else root
    state = {"attrs:": dict(group.attrs)}
    for name, node in group.members(max_depth=None):
        state[f"attrs:{name}"] = dict(node.attrs)
        if isinstance(node, zarr.Array):
            state[name] = node[:]
    return state


def SAMPLES(store):
    return store.samples


def assert_same_state(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert got[key].dtype == value.dtype and np.array_equal(got[key], value, equal_nan=value.dtype.kind == "f"), key
        else:
            assert json.dumps(got[key], sort_keys=True, default=str) == json.dumps(value, sort_keys=True, default=str), key


def folder_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


# -------------------------------------------------------------------------------------------------- pairs
@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    """A run whose scores are complete (random, with ties, NaNs, an invalid sample: tests/test_pairs.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_pairs import make_run

    return make_run(tmp_path_factory.mktemp("scored")).dir


PAIRS_ARGS = ["--backend", "reference"]


@pytest.fixture(scope="module")
def pairs_reference(scored, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pairs-ref") / "run"
    shutil.copytree(scored, run)
    out = submit(run, "pairs", *PAIRS_ARGS)
    assert "pairs: finalised" in out or "done    pairs shard 0" in out, out
    return run


@pytest.mark.parametrize("point", ["pairs.arrays", "pairs.report", "pairs.complete"])
def test_pairs_killed_at_each_write_point(point, scored, pairs_reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(scored, run)
    task_killed_at(point, run, ["pairs", "--run", str(run), "--shard", "0", *PAIRS_ARGS])
    report = run / "pairs" / "ensemble"
    if point == "pairs.arrays":
        assert not (report / "summary.json").exists()  # killed before the report: the stage is not done
    out = submit(run, "pairs", *PAIRS_ARGS)
    assert "nothing to do" not in out, out
    names = RunStore.open(pairs_reference, mode="r").pair_names()
    assert names and RunStore.open(run, mode="r").pair_names() == names
    for name in names:
        group = lambda s: s.pairs(name)  # noqa: E731
        assert_same_state(store_state(run, group), store_state(pairs_reference, group))
    want = folder_files(pairs_reference / "pairs" / "ensemble")
    assert {"summary.json", "agreement.png", "agreement.csv", "skipped.csv"} <= set(want)
    assert folder_files(report) == want
    again = submit(run, "pairs", *PAIRS_ARGS)
    assert "pairs: nothing to do" in again


# ------------------------------------------------------------------------------------------------ prepare
PREPARE = ["--preset", "tiny", "--samples", "4", "--shards", "2", "--set", "data.resolution=32"]


@pytest.fixture(scope="module")
def prepare_reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("prepare-ref") / "run"
    out = submit(run, "prepare", *PREPARE)
    assert "prepare: finalised" in out, out
    return run


def created(tmp_path: Path) -> Path:
    """A run directory with config and an empty store (prepare's set-up, no shard run yet)."""
    from fyp.data.stage import create_run

    run = tmp_path / "run"
    create_run(run, "tiny", overrides={"data": {"resolution": 32}}, samples=4, shards=2)
    return run


@pytest.mark.parametrize("point", ["prepare.images", "prepare.done", "prepare.finalize"])
def test_prepare_killed_at_each_write_point(point, prepare_reference, tmp_path):
    run = created(tmp_path)
    if point == "prepare.finalize":
        for shard in (0, 1):
            done = subprocess.run([sys.executable, "-m", "hpc.task", "prepare", "--run", str(run), "--shard", str(shard)],
                                  capture_output=True, text=True, timeout=600, env=_env())
            assert done.returncode == 0, done.stderr
        task_killed_at(point, run, ["prepare", "--run", str(run), "--finalize"])
    else:
        task_killed_at(point, run, ["prepare", "--run", str(run), "--shard", "0"])
    out = submit(run, "prepare")
    assert "prepare: finalised" in out, out
    assert_same_state(store_state(run, SAMPLES), store_state(prepare_reference, SAMPLES))


# -------------------------------------------------------------------------------------- score finalisation
def test_score_finalize_killed_before_its_marker(scored, tmp_path):
    from fyp.run import Run

    reward = Run.open(scored).config.reward_names[0]
    reference = tmp_path / "reference"
    shutil.copytree(scored, reference)
    assert "nothing to do" not in submit(reference, "score", "--reward", reward)  # finalises only: shards are done

    run = tmp_path / "run"
    shutil.copytree(scored, run)
    task_killed_at("score.finalize", run, ["score", "--run", str(run), "--finalize", "--variant", reward])
    out = submit(run, "score", "--reward", reward)
    assert f"score/{reward}: finalised" in out or "finalised" in out, out
    scores = lambda s: s.scores(reward)  # noqa: E731
    assert_same_state(store_state(run, scores), store_state(reference, scores))
    assert store_state(run, scores)["attrs:"]["done"] > 0
