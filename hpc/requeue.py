"""Checkpoint and requeue on the scheduler's pre-timeout signal (USR2).

Slurm: the job script asks for `--signal=B:USR2@<signal_seconds>` and `exec`s python, so the task
process itself gets USR2 before the time limit. For a stage that can stop gracefully (its
`Stage.request_stop` returns True: train) the handler asks it to; the stage checkpoints after its current step
and ends its task (TrainingPreempted). Any other stage is interrupted at once: the handler raises
`Preempted` in the task's main thread (its stores keep every finished sample). Either way `hpc.task`
then requeues the job with `scontrol requeue`, up to `max_requeues` times, and the requeued attempt
runs the same shard again: stores skip what their done masks mark, training resumes from its
checkpoint.

Local executor: submitit's own machinery (USR2 before `timeout_min`, exit code 144, the controller
starts the task again) with `ShardCall`, a `submitit.helpers.Checkpointable` around `execute_shard`.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

import submitit

from fyp.stages import execute_shard, get_stage

log = logging.getLogger("hpc")


class Preempted(BaseException):
    """The scheduler asked this task to stop (time limit near). BaseException: `except Exception` in a
    stage does not swallow it."""


_SIGNALLED = threading.Event()


def signalled() -> bool:
    """Whether this task got the pre-timeout signal (so its ending, whatever it is, means: requeue)."""
    return _SIGNALLED.is_set()


def install_handler(stage: str) -> None:
    impl = get_stage(stage)

    def handler(signum, frame):
        _SIGNALLED.set()
        name = signal.Signals(signum).name
        # a stage that can stop cleanly checkpoints at its next step boundary and ends its task itself
        if impl.request_stop():
            log.warning("signal %s: the time limit is near; asked %s to checkpoint and stop", name, stage)
            return
        raise Preempted(f"signal {name}: the time limit is near; stopping to requeue")

    signal.signal(signal.SIGUSR2, handler)


class Forwarder:
    """The pre-timeout signal for a task whose work runs in a child process (srun of several processes):
    passed on to the child, which checkpoints and ends; the task then requeues (`requeue_task`).

    Made before the child starts: between `Popen` and a handler installed after it, SIGUSR2's default
    action would kill this process. A signal that comes before `attach` is passed on there."""

    def __init__(self) -> None:
        self.proc = None
        signal.signal(signal.SIGUSR2, self._handler)

    def _handler(self, signum, frame) -> None:
        _SIGNALLED.set()
        proc = self.proc
        if proc is None:
            log.warning("signal %s: the time limit is near; passing it on once the processes start",
                        signal.Signals(signum).name)
            return
        log.warning("signal %s: the time limit is near; passing it on to pid %d", signal.Signals(signum).name, proc.pid)
        proc.send_signal(signum)

    def attach(self, proc) -> None:
        self.proc = proc
        if _SIGNALLED.is_set():  # came before the child existed (a second delivery is harmless: a stop request)
            proc.send_signal(signal.SIGUSR2)


def requeue_task(run, stage: str, shard: int, variant: str | None) -> int:
    """Record the task `requeued` and requeue its Slurm job; exit code 0, or 1 (recorded failed) when it
    ran out of requeues or is not under Slurm."""
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    # the record first: Slurm ends this process soon after `scontrol requeue`
    run.write_task_record(stage, shard, "requeued", variant, attempt=attempt,
                          error=f"requeued after attempt {attempt} (time limit near)")
    if requeue_slurm_job(int(os.environ.get("HPC_MAX_REQUEUES", "3"))):
        return 0
    run.write_task_record(stage, shard, "failed", variant, attempt=attempt,
                          error=f"stopped at the time limit after {attempt} requeues (max_requeues)")
    return 1


def slurm_job_to_requeue() -> str | None:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job(max_requeues: int) -> bool:
    """Requeue this Slurm job unless it ran out of requeues; True if requeued."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    job = slurm_job_to_requeue()
    if job is None:
        log.warning("not requeued: not running under Slurm")
        return False
    if restarts >= max_requeues:
        log.warning("not requeued: this task was already requeued %d times (max_requeues=%d)", restarts, max_requeues)
        return False
    # Logged before the call: Slurm may end this process as soon as `scontrol requeue` takes effect.
    log.info("requeued Slurm job %s (attempt %d ends here)", job, restarts)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    out = subprocess.run(["scontrol", "requeue", job], timeout=60, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"scontrol requeue {job} failed: {(out.stderr or out.stdout).strip()}")
    return True


class ShardCall(submitit.helpers.Checkpointable):
    """execute_shard for submitit's local executor: on USR2 submitit calls `checkpoint`, which (as
    Checkpointable's default) resubmits the same call; the stage resumes from its store or checkpoint."""

    def __call__(self, stage: str, run_dir: str, shard: int, variant: str | None, opts: dict) -> dict:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        print(f"[hpc] {stage}{'/' + variant if variant else ''} shard {shard}: local task, pid {os.getpid()}", flush=True)
        return execute_shard(stage, run_dir, shard, variant, opts)
