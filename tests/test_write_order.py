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
    """A run whose scores are complete (random, with ties, NaNs, an invalid sample: tests/pairs/test_pairs.py)."""
    sys.path.insert(0, str(Path(__file__).parent / "pairs"))
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


# ---------------------------------------------------------------------------------------------------- eval
# The toy preset's baseline on 2 synthetic items, one task: the shard writes its items and metrics part, the
# finalisation the store's eval group, then the variant's files and the run's tables, then its marker.
EVAL_VARIANT = "synthetic/baseline"
EVAL_ARGS = ["--model", "baseline", "--eval-shards", "1"]


def EVAL(store):
    return store.eval(*EVAL_VARIANT.split("/"))


def eval_outputs(run_dir: Path) -> dict:
    """The eval group in the store, the variant's files and the run's tables."""
    return dict(store=store_state(run_dir, EVAL), files=folder_files(run_dir / "eval" / EVAL_VARIANT),
                tables=folder_files(run_dir / "eval"))


def assert_same_eval(run: Path, reference: Path) -> None:
    got, want = eval_outputs(run), eval_outputs(reference)
    assert_same_state(got["store"], want["store"])
    assert {"items.csv", "summary.csv", "failures.json"} <= set(want["files"])
    assert got["files"] == want["files"]
    assert "summary.csv" in want["tables"] and got["tables"] == want["tables"]


@pytest.fixture(scope="module")
def eval_created(tmp_path_factory) -> Path:
    from fyp.data.stage import create_run

    run = tmp_path_factory.mktemp("eval-created") / "run"
    from fyp.stages import get_stage

    created = create_run(run, "toy", {"eval": {"samples": 2}, "data": {"samples": 4}})
    # the submitting side creates the eval task arrays; these tests run the tasks directly (python -m hpc.task)
    get_stage("eval").prepare_variant(created, EVAL_VARIANT, {"model": "baseline", "eval_shards": 1})
    return run


@pytest.fixture(scope="module")
def eval_generated(eval_created, tmp_path_factory) -> Path:
    """Its one shard done (items and metrics part written), the finalisation not run."""
    run = tmp_path_factory.mktemp("eval-generated") / "run"
    shutil.copytree(eval_created, run)
    done = subprocess.run([sys.executable, "-m", "hpc.task", "eval", "--run", str(run), "--shard", "0", "--variant",
                           EVAL_VARIANT, *EVAL_ARGS], capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def eval_reference(eval_generated, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("eval-ref") / "run"
    shutil.copytree(eval_generated, run)
    out = submit(run, "eval", *EVAL_ARGS)
    assert f"{EVAL_VARIANT}: finalised" in out, out
    return run


def test_eval_killed_after_its_metrics_rows(eval_created, eval_reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(eval_created, run)
    task_killed_at("eval.metrics", run, ["eval", "--run", str(run), "--shard", "0", "--variant", EVAL_VARIANT,
                                         *EVAL_ARGS])
    store = RunStore.open(run, mode="r")
    assert store.eval_tasks(*EVAL_VARIANT.split("/")).done[:].all()  # the shard's rows, done mask last
    assert "id" not in EVAL(store) and not (run / "eval" / EVAL_VARIANT / "summary.csv").exists()
    out = submit(run, "eval", *EVAL_ARGS)
    assert "nothing to do" not in out and f"{EVAL_VARIANT}: finalised" in out, out
    assert_same_eval(run, eval_reference)


@pytest.mark.parametrize("point", ["eval.store", "eval.files"])
def test_eval_finalize_killed_at_each_write_point(point, eval_generated, eval_reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(eval_generated, run)
    task_killed_at(point, run, ["eval", "--run", str(run), "--finalize", "--variant", EVAL_VARIANT, *EVAL_ARGS])
    out = submit(run, "eval", *EVAL_ARGS)
    assert "nothing to do" not in out and f"{EVAL_VARIANT}: finalised" in out, out
    assert_same_eval(run, eval_reference)
    assert "nothing to do" in submit(run, "eval", *EVAL_ARGS)


# -------------------------------------------------------------------------------------------------- report
def report_page(run_dir: Path) -> str:
    """report.html less what differs between two builds of the same results: the run's path and the time."""
    import re

    from fyp.evaluation.report import REPORT_NAME

    page = (run_dir / REPORT_NAME).read_text().replace(str(run_dir), "RUN")
    return re.sub(r" - written \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "", page)


@pytest.fixture(scope="module")
def report_reference(eval_reference, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report-ref") / "run"
    shutil.copytree(eval_reference, run)
    submit(run, "report")
    return run


def test_report_killed_before_its_page(eval_reference, report_reference, tmp_path):
    from fyp.evaluation.report import REPORT_NAME

    run = tmp_path / "run"
    shutil.copytree(eval_reference, run)
    task_killed_at("report.page", run, ["report", "--run", str(run), "--shard", "0"])
    assert not (run / REPORT_NAME).exists()
    out = submit(run, "report")
    assert "nothing to do" not in out, out
    page = report_page(run)
    assert "Follow-Your-Preference run report" in page and page == report_page(report_reference)
    for folder in (Path("eval"), Path("eval") / "bias"):  # the run's tables, the bias plots
        assert folder_files(run / folder) == folder_files(report_reference / folder), folder


# --------------------------------------------------------------------------------------------------- train
# Two optimizer steps of full fine-tuning under ZeRO-3 on the toy run (tests/dpo/test_train_run.py), exported.
TRAIN_PAIRS = "brightness"
TRAIN_ARGS = ["--pairs", TRAIN_PAIRS, "--steps", "2", "--set", "train.zero_stage=3", "--set", "train.lr=1e-3",
              "--set", "train.warmup_steps=0", "--set", "train.checkpoint_every=0", "--set", "train.batch_size=2"]


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> Path:
    from fyp.dpo.toy import make_toy_run

    run = tmp_path_factory.mktemp("paired") / "run"
    make_toy_run(run, {"data": {"samples": 8}}, pairs=TRAIN_PAIRS)
    return run


@pytest.fixture(scope="module")
def train_reference(paired, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train-ref") / "run"
    shutil.copytree(paired, run)
    assert "nothing to do" not in submit(run, "train", *TRAIN_ARGS)
    return run


def train_outputs(run_dir: Path) -> tuple[dict, dict]:
    """done.json less its timing and the run's path, and the exported weights."""
    from safetensors.numpy import load_file

    from fyp.dpo.train import export_dir, output_dir

    done = json.loads((output_dir(run_dir, TRAIN_PAIRS) / "done.json").read_text())
    done.pop("seconds")
    done["last"] = {k: v for k, v in done["last"].items() if k not in ("pairs_per_s", "step_seconds")}  # timings
    assert done.pop("export") == str(export_dir(run_dir, TRAIN_PAIRS))
    weights = {}
    for path in sorted(export_dir(run_dir, TRAIN_PAIRS).glob("*.safetensors")):
        weights.update(load_file(path))
    return done, weights


def test_train_killed_after_its_export(paired, train_reference, tmp_path):
    from fyp.dpo.train import export_dir, output_dir

    run = tmp_path / "run"
    shutil.copytree(paired, run)
    task_killed_at("train.export", run, ["train", "--run", str(run), "--shard", "0", *TRAIN_ARGS])
    assert any(export_dir(run, TRAIN_PAIRS).glob("*.safetensors"))
    assert not (output_dir(run, TRAIN_PAIRS) / "done.json").exists()
    out = submit(run, "train", *TRAIN_ARGS)
    assert "nothing to do" not in out, out
    (done, weights), (want_done, want_weights) = train_outputs(run), train_outputs(train_reference)
    assert done["steps"] == 2 and "loss" in want_done["last"]
    assert {"loss", "reward_margin", "grad_norm"} <= set(want_done["last"])
    assert done == want_done  # the loss fields of the last step, bit for bit (JSON floats round-trip)
    assert weights and sorted(weights) == sorted(want_weights)
    for name, value in want_weights.items():
        assert weights[name].dtype == value.dtype and np.array_equal(weights[name], value), name
    assert "nothing to do" in submit(run, "train", *TRAIN_ARGS)
