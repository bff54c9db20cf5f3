"""Bad input and a hostile environment through the real CLI (`python -m hpc.submit` in a subprocess): one line
on stderr, exit code 2, no traceback, and nothing left half-done (issue 12, item 5).

The read-only and full-disk cases mount a small tmpfs (as root; elsewhere the read-only case uses file modes and
the full-disk case is skipped: a full disk cannot be made without a filesystem of its own).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from fyp.run import Run

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hpc.submit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def created(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    done = cli("prepare", "--run", run, "--preset", "tiny", "--samples", "6", "--shards", "3", "--create-only")
    assert done.returncode == 0, done.stderr
    return run


def test_huge_array_is_refused_at_once_in_one_line(created):
    line = one_line_error(cli("prepare", "--run", created, "--array=0-99999999999"))
    assert line == "error: prepare: --array index 3-99999999999 is outside this run's shards 0-2"
    assert not Run.open(created).task_records("prepare")  # nothing ran


@pytest.mark.parametrize("args, expected", [
    (("prepare", "--array="), "--array is empty"),
    (("score", "--reward", ""), "score: --reward '' is empty"),
    (("score", "--reward", " , "), "score: --reward ' , ' is empty"),
])
def test_empty_values_are_refused_not_taken_as_all(created, args, expected):
    line = one_line_error(cli(args[0], "--run", created, *args[1:], "--dry-run"))
    assert expected in line and "leave" in line  # says what to do instead
    assert not Run.open(created).task_records(args[0])


@pytest.mark.parametrize("dry", [True, False])
def test_unknown_reward_is_refused_at_prepare_with_the_known_ones(tmp_path, dry):
    run = tmp_path / "run"
    line = one_line_error(cli("prepare", "--run", run, "--preset", "tiny", "--set",
                              "rewards=[{name: clipscore}, {name: clipscor}]", *(["--dry-run"] if dry else [])))
    assert line.startswith("error: rewards[1].name must be one of clipscore,") and "got 'clipscor'" in line
    assert "brightness" in line and not run.exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


@contextmanager
def read_only_copy(run: Path, where: Path):
    """A copy of the run on a read-only filesystem (root: a tmpfs remounted ro), else with no write permission."""
    if _mount_tmpfs(where, "32m"):
        try:
            shutil.copytree(run, where / "run")
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
            yield where / "run"
        finally:
            _umount(where)
        return
    shutil.copytree(run, where / "run")
    for path in [where, *where.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        yield where / "run"
    finally:
        for path in [where, *where.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_read_only_run_directory_is_named_in_one_line(created, tmp_path):
    with read_only_copy(created, tmp_path / "ro") as run:
        line = one_line_error(cli("prepare", "--run", run))
        assert f"cannot write {run}/" in line and ("read-only" in line or "permission denied" in line)
        line = one_line_error(cli("prepare", "--run", run.parent / "new", "--preset", "tiny", "--samples", "4",
                                  "--shards", "2"))
        assert f"cannot write {run.parent}/new" in line and not (run.parent / "new").exists()


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """A toy run up to its pairs (what train reads), built in this process."""
    from fyp.data.stage import create_run
    from fyp.stages import execute_shard
    from hpc.task import finalize

    run = create_run(tmp_path_factory.mktemp("full") / "run", "toy", {
        "shards": 1, "data": {"samples": 4}, "sampling": {"steps": 2},
        "train": {"steps": 4, "warmup_steps": 0, "checkpoint_every": 2}})
    for stage, variant in (("prepare", None), ("sample", None), ("score", "brightness"), ("pairs", None)):
        execute_shard(stage, run.dir, 0, variant)
        finalize(stage, run.dir, variant, {})
    return run.dir


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.timeout(900)
def test_full_disk_during_train_ends_failed_with_the_reason_and_no_leftovers(paired, tmp_path):
    disk = tmp_path / "disk"
    # room for the run and a little more: the training caches or the first checkpoint (~0.7 MB) fill it
    if not _mount_tmpfs(disk, f"{(_bytes(paired) + 300_000) // 1024}k"):
        pytest.skip("a full disk needs a filesystem of its own: mounting a tmpfs needs root")
    try:
        shutil.copytree(paired, disk / "run")
        run = disk / "run"
        done = cli("train", "--run", run, timeout=800)
        line = one_line_error(done)
        # names the run directory (or the file it could not write), and what to do
        assert line.startswith(f"error: train: a task failed: cannot write {run}"), line
        assert line.endswith("no space left on the device (free some, or move the run); then run again"), line
        record = Run.open(run).task_records("train")[0]
        assert record["state"] == "failed" and record["errno"] == 28, record  # not a stale "running"
        assert "no space left" in record["error"].lower() and "\n" not in record["error"]
        leftovers = [p for p in run.rglob("*") if p.name.startswith(".") or p.name.endswith(".save_tmp")]
        assert leftovers == []  # atomic-write temp files and submitit's half-written result are gone
        checkpoints = run / "train" / "brightness" / "checkpoints"
        latest = (checkpoints / "latest").read_text().strip() if (checkpoints / "latest").exists() else ""
        if checkpoints.exists():  # only the checkpoint `latest` names survives, never a save cut short
            assert [p.name for p in checkpoints.iterdir() if p.is_dir()] in ([], [latest])
        status = cli("status", "--run", run)
        assert status.returncode == 0 and "no space left" in status.stdout.lower()
    finally:
        _umount(disk)
