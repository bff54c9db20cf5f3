"""On the REAL local Slurm cluster: the rough edges a cluster user hits, each seen failing before its fix.

Most use the cluster's `parked` partition (State=DOWN: it accepts jobs and never starts them), so what
is queued can be inspected and cancelled without running anything.
"""
import re
import subprocess
import time
from pathlib import Path

import pytest

from slurm_cli import submit_cli
from hpc import ledger, local_slurm, slurm

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900), pytest.mark.flaky(reruns=1, reruns_delay=5)]

ROOT = Path(__file__).resolve().parents[2]
LOCAL = (ROOT / "cluster_configs" / "slurm-local.yaml").read_text()
TINY = ["--preset", "tiny", "--set", "data.resolution=32", "--set", "sampling.candidates=2"]




def cli(*args, ok=True, timeout=600, env=None):
    return submit_cli(*args, ok=ok, timeout=timeout, env=env)


def config(tmp: Path, name: str, text: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def parked(tmp: Path, stages: str = "") -> Path:
    """slurm-local.yaml on the parked partition, with its `stages:` replaced."""
    text = LOCAL.replace("partition: debug", f"partition: {local_slurm.PARKED}").split("stages:")[0]
    return config(tmp, "parked", text + "stages:\n" + (stages or "  train: {gpus_per_node: 1}\n"))


def jobs_of(run: Path, stage: str, kind: str = "tasks") -> list[str]:
    return [str(e["job_id"]) for e in ledger.read(run) if e["stage"] == stage and e["kind"] == kind]


def cancel_all(run: Path) -> None:
    ids = [str(e["job_id"]) for e in ledger.read(run) if e["kind"] in ("tasks", "finalize")]
    if ids:
        subprocess.run(["scancel", *ids], check=False)
        slurm.wait(ids, poll_seconds=1, timeout=120)


def scontrol_job(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=True).stdout


def test_squeue_fallback_sees_ended_jobs(cluster):
    """Without accounting `--wait` asks squeue: a job that ended must still be listed (it vanished before
    `--states=all`, and --wait never returned)."""
    job = slurm.sbatch(["sbatch", "--parsable", "-p", local_slurm.PARTITION, "--wrap", "true", "-o", "/dev/null"])
    slurm.wait([job], poll_seconds=0.5, timeout=120)
    assert slurm.squeue([job])[job].state == "COMPLETED"


def test_wait_backs_off_and_stops_asking_about_finished_jobs(cluster, monkeypatch):
    quick = slurm.sbatch(["sbatch", "--parsable", "--wrap", "true", "-o", "/dev/null"])
    slow = slurm.sbatch(["sbatch", "--parsable", "--wrap", "sleep 25", "-o", "/dev/null"])
    asked = []
    real = slurm._call

    def recording(cmd, timeout=120):
        if cmd[0] == "sacct":
            asked.append((time.time(), cmd[cmd.index("-j") + 1].split(",")))
        return real(cmd, timeout)

    monkeypatch.setattr(slurm, "_call", recording)
    final = slurm.wait([quick, slow], poll_seconds=0.5, max_poll_seconds=4)
    assert final[quick].state == final[slow].state == "COMPLETED"
    quick_done = next(i for i, (_, ids) in enumerate(asked) if quick not in ids)
    assert all(quick not in ids for _, ids in asked[quick_done:]), asked  # never asked about again
    assert asked[-1][1] == [slow]
    gaps = [b[0] - a[0] for a, b in zip(asked, asked[1:])]
    assert max(gaps) > 2.0 and len(asked) < 25, gaps  # at a fixed 0.5 s: ~50 calls


@pytest.fixture(scope="module")
def held(cluster, tmp_path_factory):
    """A tiny run of 64 shards whose sample stage is queued on the parked partition with %3."""
    tmp = tmp_path_factory.mktemp("edges")
    run = tmp / "held"
    cli("prepare", "--run", run, *TINY, "--samples", "64", "--shards", "64", "--create-only")
    cfg = parked(tmp)
    first = cli("sample", "--run", run, "--cluster", cfg, "--array", "0-63%3")
    yield run, cfg, first.stdout
    cancel_all(run)


def test_duplicate_submission_is_refused_without_calling_shards_done(held):
    run, cfg, _ = held
    again = cli("sample", "--run", run, "--cluster", cfg)
    assert "already queued or running" in again.stdout and "every shard is done" not in again.stdout, again.stdout
    assert len(jobs_of(run, "sample")) == 1


def test_finalize_has_a_small_cpu_shape_and_names_its_variant(held, tmp_path):
    run, _, _ = held
    cfg = parked(tmp_path, "  score: {gpus_per_node: 2, mem: 5G, cpus_per_task: 2}\n")
    cli("score", "--run", run, "--cluster", cfg)
    variants = [e["variant"] for e in ledger.read(run) if e["stage"] == "score" and e["kind"] == "finalize"]
    assert variants and all(variants)
    for entry in [e for e in ledger.read(run) if e["stage"] == "score"]:
        info = scontrol_job(str(entry["job_id"]))
        if entry["kind"] == "finalize":
            assert f"JobName=fyp-score-finalize-{entry['variant']} " in info, info
            assert "gres/gpu" not in info and "mem=4G" in info and "NumCPUs=1 " in info, info
        else:
            assert "gres/gpu=2" in info and "mem=5G" in info, info


def test_status_summarises_many_cancelled_tasks_and_retry_keeps_the_throttle(held):
    run, cfg, _ = held
    job = jobs_of(run, "sample")[0]
    subprocess.run(["scancel", job], check=True)
    slurm.wait([job], poll_seconds=1, timeout=120)
    report = cli("status", "--run", run, "--stage", "sample").stdout
    assert f"sample shards 0-63 CANCELLED (64 tasks of job {job})" in report, report
    assert len(report.splitlines()) < 8 and "log:" not in report, report
    details = cli("status", "--run", run, "--stage", "sample", "--details").stdout
    lines = [line for line in details.splitlines() if line.startswith("  sample shard ")]
    assert len(lines) == 64 and f"sample shard 63 CANCELLED (job {job}_63)" in details
    assert details.count("no log: the task never started") == 64  # no made-up log paths

    cli("sample", "--run", run, "--cluster", cfg, "--retry-failed")
    retried = [e for e in ledger.read(run) if e["stage"] == "sample" and e["kind"] == "tasks"][-1]
    assert retried["array"] == "0-63%3", retried  # the original throttle, not none


def test_status_judges_by_submitted_options_and_shows_submitted_variants(held):
    run, cfg, _ = held
    cli("train", "--run", run, "--cluster", cfg, "--steps", "37")
    cli("eval", "--run", run, "--cluster", cfg, "--trained", "mypairs")
    cancel_all(run)
    report = cli("status", "--run", run, "--stage", "train", "--stage", "eval").stdout
    train = next(line for line in report.splitlines() if line.startswith("train"))
    assert train.split()[1] == "0/37", report
    assert re.search(r"^eval/\S*mypairs\s", report, re.M), report


def test_task_shape_is_checked_against_the_node_before_sbatch(held, tmp_path):
    """4 CPUs a node: train on 2 GPUs with cpus_per_task 4 needs 8. Refused by hpc with what to set, before
    sbatch (which would say only 'Requested node configuration is not available')."""
    run, _, _ = held
    cfg = parked(tmp_path, "  train: {gpus_per_node: 2, cpus_per_task: 4}\n")
    before = len(ledger.read(run))
    out = cli("train", "--run", run, "--cluster", cfg, ok=False)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "cpus_per_node 4" in out.stderr and "at most 2" in out.stderr, out.stderr
    assert len(ledger.read(run)) == before
