"""On the REAL local Slurm cluster (python -m hpc.local_slurm start; root): arrays with a throttle,
faults (scancel, SIGKILL, the pre-timeout signal), retries, dependencies, the chained pipeline.

Every run uses the same small tiny-preset sampling problem, so stores can be compared with the
reference run's, bit for bit.
"""
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fyp.store import RunStore
from slurm_cli import submit_cli, wait_until
from hpc import ledger, local_slurm, slurm

# One rerun for the cluster tests: they race a real scheduler and slurmdbd on a 2-core machine, and a
# rerun that passes is reported by pytest as "rerun" (visible in CI's summary), never hidden.
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1200), pytest.mark.flaky(reruns=1, reruns_delay=5)]

SMALL = ["--preset", "tiny", "--samples", "6", "--set", "data.resolution=32", "--set", "sampling.candidates=2",
         "--set", "sampling.batch_size=2"]
COMPARED = (("candidates", "image"), ("candidates", "seed"), ("candidates", "done"), ("samples", "image"),
            ("samples", "mask"))




def cli(*args, ok=True, timeout=900, env=None):
    return submit_cli(*args, ok=ok, timeout=timeout, env=env)


def prepared(tmp: Path, name: str, shards: int) -> Path:
    run = tmp / name
    cli("prepare", "--run", run, *SMALL, "--shards", shards, "--cluster", "slurm-local", "--wait")
    return run


def arrays(run: Path) -> dict:
    store = RunStore.open(run, mode="r")
    return {f"{part}.{name}": getattr(getattr(store, part), name)[:] for part, name in COMPARED}


def assert_same_store(run: Path, reference: Path) -> None:
    got, want = arrays(run), arrays(reference)
    for name in got:
        assert np.array_equal(got[name], want[name]), f"{name} differs from the uninterrupted run"
    assert got["candidates.done"].all()


def task_logs(run: Path, stage: str) -> list[Path]:
    return sorted((run / "logs" / stage).glob("shard-*.job-*.attempt-*.log"))


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """Uninterrupted: tiny sampling as one array job with a throttle of 2 (3 shards)."""
    run = prepared(tmp_path_factory.mktemp("slurm"), "reference", 3)
    out = cli("sample", "--run", run, "--cluster", "slurm-local", "--array", "0-2%2", "--wait")
    return run, out.stdout


def test_array_with_throttle_finishes(reference):
    run, stdout = reference
    entries = [e for e in ledger.read(run) if e["stage"] == "sample" and e["kind"] == "tasks"]
    assert len(entries) == 1 and entries[0]["array"] == "0-2%2"
    assert arrays(run)["candidates.done"].all()
    # one log per task and attempt, named by shard, array job id, task id and restart count
    logs = task_logs(run, "sample")
    job = entries[0]["job_id"]
    assert [p.name for p in logs] == [f"shard-{s:05d}.job-{job}_{s}.attempt-0.log" for s in range(3)]
    # the throttle held: never more than 2 tasks at once (start from the log's first line, end = last write)
    spans = []
    for path in logs:
        # the start is a readable UTC time (it was a raw epoch): 2026-12-03T12:40:01.123Z
        stamp = re.search(r"start (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z", path.read_text()).group(1)
        start = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp()
        spans.append((start, path.stat().st_mtime))
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2
    assert "prepare" in cli("status", "--run", run).stdout


def test_faults_then_retry_failed_equal_uninterrupted(reference, tmp_path):
    """Mid-run: scancel shard 0, SIGKILL inside shard 1, USR2 (the pre-timeout signal) to shard 2.
    Shard 2 requeues itself and finishes; --retry-failed runs exactly shards 0 and 1 again; the store
    equals the uninterrupted run's."""
    ref_run, _ = reference
    run = prepared(tmp_path, "faults", 3)
    # FYP_SAMPLE_HOLD (the sample stage's test hook): a task stops right after writing its 2nd sample's
    # images, before its seeds and done flag: a genuinely half-written shard, every time. Only this
    # first submission carries it (sbatch exports the submitting environment); the requeued attempt
    # has one sample left, so it never reaches a 2nd and runs through.
    cli("sample", "--run", run, "--cluster", "slurm-local", env=dict(os.environ, FYP_SAMPLE_HOLD="images:2"))
    job = next(e["job_id"] for e in ledger.read(run) if e["stage"] == "sample" and e["kind"] == "tasks")
    group = lambda: RunStore.open(run, mode="r")

    log1 = lambda: next((p for p in task_logs(run, "sample") if p.name.startswith("shard-00001")), None)
    actions = {
        0: lambda: subprocess.run(["scancel", f"{job}_0"], check=True),
        1: lambda: os.kill(int(re.search(r"pid (\d+)", log1().read_text()).group(1)), signal.SIGKILL),
        2: lambda: subprocess.run(["scancel", "--signal=USR2", "--batch", f"{job}_2"], check=True),
    }
    deadline = time.time() + 600
    while actions and time.time() < deadline:
        store = group()
        for shard in list(actions):
            second = 2 * shard + 1
            if store.candidates.image[second].any():  # held: images written, done not yet
                assert store.candidates.done[2 * shard] and not store.candidates.done[second]
                actions.pop(shard)()
        time.sleep(0.2)
    assert not actions, "timed out waiting for the shards to reach their hold point"

    final = slurm.wait([job], poll_seconds=1, timeout=600)
    assert final[f"{job}_0"].state == "CANCELLED"
    assert final[f"{job}_1"].state == "FAILED"
    assert final[f"{job}_2"].state == "COMPLETED"
    shard2 = [p.name for p in task_logs(run, "sample") if p.name.startswith("shard-00002")]
    assert shard2 == [f"shard-00002.job-{job}_2.attempt-0.log", f"shard-00002.job-{job}_2.attempt-1.log"], \
        "\n".join(p.read_text()[-1500:] for p in task_logs(run, "sample") if p.name.startswith("shard-00002"))
    assert "requeued" in (run / "logs/sample" / shard2[0]).read_text().lower()

    report = cli("status", "--run", run, "--stage", "sample").stdout
    row = next(line for line in report.splitlines() if line.startswith("sample "))
    assert row.split()[2:9] == ["0", "0", "0", "1", "1", "1", "0"], report  # pending queued running done failed cancelled unknown
    assert f"sample shard 0 CANCELLED (job {job}_0)" in report
    assert f"sample shard 1 FAILED (job {job}_1): Slurm FAILED" in report
    assert f"log: {run}/logs/sample/shard-00001.job-{job}_1.attempt-0.log" in report

    retry = cli("sample", "--run", run, "--cluster", "slurm-local", "--retry-failed", "--wait")
    retried = [e for e in ledger.read(run) if e["stage"] == "sample" and e["kind"] == "tasks"][-1]
    assert retried["indices"] == [0, 1], retry.stdout
    assert_same_store(run, ref_run)
    report = cli("status", "--run", run, "--stage", "sample").stdout
    row = next(line for line in report.splitlines() if line.startswith("sample "))
    assert row.split()[1:9] == ["6/6", "0", "0", "0", "3", "0", "0", "0"] and row.split()[9] == "done", report


def test_child_of_failed_parent_is_cancelled_and_status_says_why(cluster, tmp_path):
    run = tmp_path / "broken"
    cli("prepare", "--run", run, "--preset", "toy", "--samples", "4", "--shards", "2", "--create-only")
    # break the store behind the run's back: every prepare task fails writing samples/image
    import shutil
    store = RunStore.open(run)
    shutil.rmtree(store.block_file(store.samples.image, 0).parent)
    out = cli("pipeline", "--run", run, "--cluster", "slurm-local", "--wait", ok=False)
    assert out.returncode == 1, out.stdout + out.stderr
    # status never calls a shard done without evidence: its sample shards (empty store) are cancelled or,
    # while sacct has no row for the task yet, unknown
    early = cli("status", "--run", run).stdout
    sample = next(line for line in early.splitlines() if line.startswith("sample "))
    assert sample.split()[5] == "0" and int(sample.split()[7]) + int(sample.split()[8]) == 2, early
    # Bounded wait, on the accounting itself: slurmdbd records a never-started, cancelled array task a
    # moment after --wait returns, and "CANCELLED" and its reason can only come from sacct.
    jobs = [str(e["job_id"]) for e in ledger.read(run) if e["stage"] == "sample" and e["kind"] == "tasks"]
    wait_until(lambda: f"{jobs[-1]}_1" in slurm.query(jobs), 30, "slurmdbd to record the cancelled sample task")
    report = cli("status", "--run", run, "--details").stdout
    assert re.search(r"prepare shard 0 FAILED \(job \d+_0\): \w+", report), report
    assert "prepare finalize CANCELLED: cancelled by Slurm: a job it depends on (afterok:" in report
    assert re.search(r"sample shard 1 CANCELLED \(job \d+_1\): cancelled by Slurm: a job it depends on "
                     r"\(afterok:\d+\) failed or was cancelled; root: prepare shard \d FAILED \(job \d+_\d\)", report), report
    # every stage down the chain names the same root: the prepare task that failed
    assert re.search(r"score/\S+ finalize CANCELLED: .*; root: prepare shard \d FAILED", report), report
    # without --details: shards that ended the same way are one line
    summary = cli("status", "--run", run).stdout
    assert re.search(r"sample shards 0-1 CANCELLED \(2 tasks of job \d+\): cancelled by Slurm: .*; root: prepare "
                     r"shard \d FAILED", summary), summary


@pytest.fixture(scope="module")
def pipeline_run(cluster, tmp_path_factory):
    run = tmp_path_factory.mktemp("slurm") / "pipeline"
    out = cli("pipeline", "--run", run, "--preset", "toy", "--samples", "4", "--shards", "2",
              "--set", "pairs.method=ensemble", "--set", "train.pairs=ensemble",
              "--set", "train.steps=2", "--set", "train.checkpoint_every=1", "--set", "eval.samples=2",
              "--cluster", "slurm-local", "--wait", timeout=1100)
    return run, out.stdout


def test_pipeline_runs_through_available_stages(pipeline_run):
    from hpc.submit import pipeline_stages

    run, stdout = pipeline_run
    assert "submitted jobs:" in stdout
    report = cli("status", "--run", run).stdout
    rows = {line.split()[0]: line.split() for line in report.splitlines()[2:] if line and not line.startswith(" ")}
    # every (stage, variant) the chain submitted ran and was finalised, the eval of the model its train
    # stage exported included (submitted before the export existed: --trained <train.pairs>)
    submitted = {e["stage"] + ("/" + e["variant"] if e["variant"] else "") for e in ledger.read(run)}
    assert {"eval/synthetic/baseline", "eval/synthetic/ensemble"} <= submitted, submitted
    for stage in pipeline_stages():
        labelled = [row for label, row in rows.items()
                    if (label == stage or label.startswith(stage + "/")) and label in submitted]
        assert labelled, (stage, report)
        for row in labelled:
            # label samples pending queued running done failed cancelled unknown finalize
            assert row[2:5] == ["0", "0", "0"] and row[6:9] == ["0", "0", "0"] and row[9] == "done", report
    assert RunStore.open(run, mode="r").candidates.done[:].all()
    assert (run / "eval" / "synthetic" / "ensemble" / "summary.csv").exists()


def _preempt_training(run, job):
    """USR2 (Slurm's pre-timeout signal) to a running training task; it must requeue once and complete.
    Returns the text of the two attempts' logs."""
    subprocess.run(["scancel", "--signal=USR2", "--batch", f"{job}_0"], check=True)
    final = slurm.wait([job], poll_seconds=1, timeout=900)
    assert final[f"{job}_0"].state == "COMPLETED"
    logs = sorted((run / "logs/train").glob(f"shard-00000.job-{job}_0.attempt-*.log"))
    assert [p.name.rsplit(".", 2)[1] for p in logs] == ["attempt-0", "attempt-1"]
    return logs[0].read_text(), logs[1].read_text()


def test_training_requeued_mid_run_resumes_from_checkpoint(pipeline_run, tmp_path):
    """USR2 (the pre-timeout signal) to a training task: it checkpoints after its step, requeues itself,
    and the next attempt resumes from that checkpoint and finishes. On a copy of the pipeline's run, so
    a rerun of this test starts from the same state."""
    run = tmp_path / "pipeline"
    shutil.copytree(pipeline_run[0], run)
    metrics = run / "train" / "ensemble" / "metrics.csv"
    assert metrics.exists(), "the pipeline did not train (is the pairs stage available?)"
    steps_total = 300  # ~0.1 s a step here: long enough that the signal always lands mid-run
    cli("train", "--run", run, "--steps", str(steps_total), "--cluster", "slurm-local")
    job = [e for e in ledger.read(run) if e["stage"] == "train" and e["kind"] == "tasks"][-1]["job_id"]
    # The pipeline's own 4-step run left rows for steps 0-3: wait for a step only the new job can log,
    # or the signal may reach it before it trains (or before it even starts).
    last_step = lambda: max([int(line.split(",")[0]) for line in metrics.read_text().splitlines()[1:]] or [-1])
    wait_until(lambda: last_step() >= 5, 600, "training to pass step 5")
    first, second = _preempt_training(run, job)
    assert "TrainingPreempted" in first or "checkpointed at step" in first
    resumed = re.search(r"resumed \S+ at step (\d+)", second)
    assert resumed and int(resumed.group(1)) >= 4, second[-2000:]
    steps = [int(line.split(",")[0]) for line in metrics.read_text().splitlines()[1:]]
    assert steps == list(range(steps[0], steps_total))  # each step once up to the last, none lost


def test_local_cluster_start_is_idempotent(cluster):
    before = local_slurm.running()
    start = time.time()
    local_slurm.start(verbose=False)
    assert time.time() - start < 15
    assert local_slurm.running() == before and all(before.values())
    out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, check=True).stdout
    assert "gpu:4" in out
    assert subprocess.run([sys.executable, "-m", "hpc.local_slurm", "status"], capture_output=True).returncode == 0


def test_chain_sh_submits_afterok_chain(cluster, tmp_path):
    """jobs/chain.sh with plain sbatch: every available stage queued, each waiting (afterok) on the one
    before. Held with --begin so nothing runs; cancelled after."""
    from hpc.jobs import JOBS_DIR
    run = tmp_path / "chain"
    env = dict(os.environ, SBATCH_ARGS="--begin=now+1hour", PYTHON=sys.executable)
    out = subprocess.run(["bash", str(JOBS_DIR / "chain.sh"), str(run), "toy", "4", "2"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if ": tasks " in line]
    ids = {}
    for line in lines:
        label, rest = line.split(": tasks ")
        tasks, final = rest.split(", finalize ")
        ids[label] = (tasks, final)
    try:
        from hpc.jobs import plan

        expected = []
        for line in plan(str(run)):
            stage, _, variants = line.split()
            expected += [stage + ("/" + v if v != "-" else "") for v in variants.split(",")]
        assert list(ids) == expected and [e.split("/")[0] for e in expected][:3] == ["prepare", "sample", "score"]
        queue = subprocess.run(["squeue", "-h", "-r", "-o", "%F|%E", "-j", ",".join(j for pair in ids.values() for j in pair)],
                               capture_output=True, text=True, check=True).stdout
        deps = {}
        for row in queue.splitlines():
            job, dep = row.split("|")
            deps.setdefault(job, dep)
        labels = list(ids)
        for before, after in zip(labels, labels[1:]):
            tasks, final = ids[after]
            assert f"afterok:{ids[before][1]}" in deps[tasks], (after, deps[tasks])
            assert f"afterok:{tasks}" in deps[final], (after, deps[final])
        assert (run / "config.yaml").exists() and (run / "logs/sample").is_dir()
    finally:
        subprocess.run(["scancel", *[j for pair in ids.values() for j in pair]], check=False)


def test_training_on_two_nodes_srun_requeue_resume(cluster, tmp_path):
    """train on 2 nodes x 1 (fake) GPU: one task per GPU under srun, one on each node (network namespaces:
    gloo over the bridge), rendezvous from the Slurm environment; USR2 to the batch step reaches both
    processes (the one on the other node too), they checkpoint, the job requeues and both resume from that
    checkpoint and finish, every step once."""
    run = tmp_path / "two"
    config = tmp_path / "slurm-2node.yaml"
    local = (Path(__file__).resolve().parents[2] / "cluster_configs" / "slurm-local.yaml").read_text()
    config.write_text(local.replace("train: {gpus_per_node: 1}", "train: {nodes: 2, gpus_per_node: 1}"))
    assert "nodes: 2, gpus_per_node: 1" in config.read_text()
    cli("prepare", "--run", run, "--preset", "toy", "--samples", "4", "--shards", "2", "--set", "pairs.method=ensemble",
        "--set", "train.pairs=ensemble", "--set", "train.checkpoint_every=0", "--set", "train.steps=60")
    for stage in ("sample", "score", "pairs"):
        cli(stage, "--run", run)  # on this machine: only train goes to the cluster
    metrics = run / "train" / "ensemble" / "metrics.csv"
    cli("train", "--run", run, "--cluster", config)
    script = (run / "logs/train/train.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    job = [e for e in ledger.read(run) if e["stage"] == "train" and e["kind"] == "tasks"][-1]["job_id"]
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) - 1 >= 5, 600, "step 5")
    first, second = _preempt_training(run, job)
    assert "train: 2 processes: srun --kill-on-bad-exit=1" in first and "passing it on" in first
    assert re.search(r"job \d+ on node1, attempt 0", first), first[:500]  # the batch step on node1, rank 1 on node2
    assert "Exited with exit code 75" in first and "requeued Slurm job" in first, first[-3000:]
    assert first.count("preempted: checkpointed at step") == 2, first[-3000:]  # both ranks stopped at one step
    resumed = re.findall(r"resumed \S+ at step (\d+)", second)
    assert len(resumed) == 2 and len(set(resumed)) == 1 and int(resumed[0]) >= 5, second[-3000:]  # both ranks
    assert second.count("trained ensemble for 60 steps") == 2
    steps = [int(line.split(",")[0]) for line in metrics.read_text().splitlines()[1:]]
    assert steps == list(range(60))  # each step once (rank 0 writes), none lost
    # the stage's finalise job runs after the task (afterok): wait for it before asking status
    finalize = [e for e in ledger.read(run) if e["stage"] == "train" and e["kind"] == "finalize"][-1]["job_id"]
    assert slurm.wait([finalize], poll_seconds=1, timeout=300)[str(finalize)].state == "COMPLETED"
    out = cli("status", "--run", run, "--stage", "train").stdout
    assert re.search(r"^train\s+60/60\s+0\s+0\s+0\s+1\s+0\s+0\s+0\s+done", out, re.M), out
