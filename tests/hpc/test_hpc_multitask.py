"""Train on several GPUs under Slurm: the rendered script (one task per GPU, srun) and the batch step that
srun's the trainer, passes the pre-timeout signal on and requeues — with stand-in srun/scontrol on PATH."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpc import jobs, multitask
from hpc.clusters import from_dict
from hpc.render import task_script
from hpc.submit import main

MULTI = from_dict({"executor": "slurm", "partition": "gpu", "time": "02:00:00", "cpus_per_task": 12,
                   "stages": {"train": {"gpus_per_node": 4, "nodes": 2}, "sample": {"nodes": 2}}})
LAUNCH = ('exec "$PYTHON" -m hpc.task "$STAGE" --run "$RUN" --shard "$SHARD" --srun ${VARIANT:+--variant "$VARIANT"} '
          '"$@"')


def test_train_on_several_gpus_renders_one_task_per_gpu_and_srun():
    text = task_script("train", None, MULTI.resources("train"), Path("/scratch/r")).text
    lines = text.splitlines()
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --ntasks-per-node=4" in lines
    assert "#SBATCH --gpus-per-node=4" in lines and "#SBATCH --signal=B:USR2@120" in lines
    assert lines[-1] == LAUNCH and "srun --kill-on-bad-exit=1" in text and "-m fyp.dpo.train --run-dir" in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_one_gpu_and_other_stages_stay_single_process():
    one = from_dict({"executor": "slurm", "stages": {"train": {"gpus_per_node": 1}}})
    for stage, cluster in (("train", one), ("sample", MULTI)):
        text = task_script(stage, None, cluster.resources(stage), Path("/r")).text
        assert "#SBATCH --ntasks-per-node=1" in text.splitlines() and "--srun" not in text and "srun " not in text
    # jobs/ follows the slurm-local cluster (1 GPU for train): the single-process script
    assert "--srun" not in jobs.rendered()["train.sbatch"]


def test_srun_command_passes_the_stage_options_through():
    cmd = multitask.command("train", "/r", {"pairs": "ensemble", "steps": 3, "set": ["train.lr=1e-4"]},
                            python="/py", environ={"SLURM_CPUS_PER_TASK": "12"})
    assert cmd == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=12", "/py", "-m", "fyp.dpo.train", "--run-dir",
                   "/r", "--pairs", "ensemble", "--steps", "3", "--set", "train.lr=1e-4"]


FAKE_SRUN = """#!/bin/bash
echo "$@" > "$FAKE_DIR/srun.argv"
trap 'echo usr2 > "$FAKE_DIR/srun.signal"; exit 75' USR2
touch "$FAKE_DIR/srun.started"
for i in $(seq 600); do sleep 0.1; done
exit 3
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$@" > "$FAKE_DIR/scontrol.argv"
"""


def _batch_step(tmp_path, extra_env):
    run = tmp_path / "run"
    assert main(["prepare", "--run", str(run), "--preset", "tiny", "--samples", "2", "--shards", "1",
                 "--create-only"]) == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path), **extra_env)
    proc = subprocess.Popen([sys.executable, "-m", "hpc.task", "train", "--run", str(run), "--shard", "0", "--srun",
                             "--steps", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "srun.started").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "slow"
        time.sleep(0.1)
    record = json.loads((run / "tasks/train/shard-00000.json").read_text())
    assert record["state"] == "running"
    proc.send_signal(signal.SIGUSR2)  # what Slurm sends the batch step before the time limit
    out = proc.communicate(timeout=60)[0]
    argv = (tmp_path / "srun.argv").read_text().split()
    assert argv[:2] == ["--kill-on-bad-exit=1", "--cpus-per-task=2"] and argv[3:] == [
        "-m", "fyp.dpo.train", "--run-dir", str(run.resolve()), "--steps", "3"]
    assert (tmp_path / "srun.signal").read_text().strip() == "usr2", out  # passed on to srun
    return proc.returncode, json.loads((run / "tasks/train/shard-00000.json").read_text()), out


def test_batch_step_passes_the_signal_to_srun_and_requeues(tmp_path):
    code, record, out = _batch_step(tmp_path, {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "76",
                                               "SLURM_ARRAY_TASK_ID": "0", "SLURM_CPUS_PER_TASK": "2",
                                               "SLURM_NTASKS": "2", "SLURM_RESTART_COUNT": "0"})
    assert code == 0, out
    assert (tmp_path / "scontrol.argv").read_text().split() == ["requeue", "76_0"]
    assert record["state"] == "requeued" and record["attempt"] == 0


def test_batch_step_out_of_requeues_records_failure(tmp_path):
    code, record, out = _batch_step(tmp_path, {"SLURM_JOB_ID": "77", "SLURM_CPUS_PER_TASK": "2",
                                               "SLURM_RESTART_COUNT": "3", "HPC_MAX_REQUEUES": "3"})
    assert code == 1, out
    assert not (tmp_path / "scontrol.argv").exists()
    assert record["state"] == "failed" and "after 3 requeues" in record["error"]


def test_a_signal_before_the_processes_start_is_passed_on_when_they_do(tmp_path):
    """The forwarder is installed before srun starts: SIGUSR2 then (whose default action would kill the
    task) is remembered and passed on to the child as soon as it exists."""
    from hpc import requeue

    previous = signal.getsignal(signal.SIGUSR2)
    try:
        forwarder = requeue.Forwarder()
        os.kill(os.getpid(), signal.SIGUSR2)  # delivered to the handler before os.kill returns
        assert requeue.signalled()
        ready, got = tmp_path / "ready", tmp_path / "got"
        child = subprocess.Popen([sys.executable, "-c", (
            "import pathlib, signal, time\n"
            f"signal.signal(signal.SIGUSR2, lambda *a: pathlib.Path({str(got)!r}).write_text('usr2'))\n"
            f"pathlib.Path({str(ready)!r}).touch()\n"
            "time.sleep(30)\n")])
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:  # the child's handler is in place
            time.sleep(0.05)
        forwarder.attach(child)
        while not got.exists() and time.time() < deadline:
            time.sleep(0.05)
        child.kill()
        child.wait()
        assert got.read_text() == "usr2"
    finally:
        signal.signal(signal.SIGUSR2, previous)
        requeue._SIGNALLED.clear()
