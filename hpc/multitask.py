"""A task that is several processes, one per GPU (train on more than one GPU): `srun` them from the job.

The job script still `exec`s `python -m hpc.task train ... --srun`: that process (the batch step) keeps
the task record and the requeue logic, and runs

    srun --kill-on-bad-exit=1 [--cpus-per-task=$SLURM_CPUS_PER_TASK] $PYTHON -m <stage program> --run-dir RUN [...]

(the stage's `program`, fyp.stages.Program) one process per task of the allocation (`--ntasks-per-node=<gpus_per_node>`); each finds its rank and
the rendezvous in its Slurm environment (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / the node list,
for train: `fyp.dpo.launch`). The pre-timeout signal reaches only the batch step; it is passed on to srun, which
passes it to every process: each asks the trainer to stop, all checkpoint after the same step and exit
with the program's `requeue_exit_code`. Then the job is requeued as a single-process task would be.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from fyp.run import Run
from fyp.stages import get_stage

from . import requeue
from .options import to_argv

log = logging.getLogger("hpc")

def supported(stage: str) -> bool:
    """Whether the stage has a program of its own to run as one process per GPU."""
    return get_stage(stage).program is not None


def command(stage: str, run_dir, opts: dict, python: str | None = None, environ: dict | None = None) -> list[str]:
    """The srun command line of a multi-process task (the stage's options are the program's flags)."""
    impl = get_stage(stage)
    if impl.program is None:
        raise ValueError(f"{stage}: no multi-process launch (the stage declares no program)")
    env = os.environ if environ is None else environ
    cmd = ["srun", "--kill-on-bad-exit=1"]
    if env.get("SLURM_CPUS_PER_TASK"):  # srun of Slurm 22.05-23.02 does not inherit sbatch's --cpus-per-task
        cmd.append(f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}")
    program = impl.program
    return cmd + [python or sys.executable, "-m", program.module, program.run_flag, str(run_dir), *to_argv(impl, opts)]


def run_task(stage: str, run_dir, shard: int, variant: str | None, opts: dict) -> int:
    """Run the stage's processes with srun and record the task; returns the exit code of hpc.task."""
    run = Run.open(run_dir)
    processes = os.environ.get("SLURM_NTASKS", "?")
    cmd = command(stage, run.dir, opts)
    log.info("%s: %s processes: %s", stage, processes, " ".join(cmd))
    run.write_task_record(stage, shard, "running", variant, processes=processes)
    start = time.time()
    forwarder = requeue.Forwarder()
    proc = subprocess.Popen(cmd)
    forwarder.attach(proc)
    code = proc.wait()
    seconds = time.time() - start
    if code == 0:
        done, total = get_stage(stage).progress(run, variant, opts)
        run.write_task_record(stage, shard, "done", variant, seconds=seconds, done=done, steps=total,
                              processes=processes)
        log.info("%s shard %d finished in %.1fs on %s processes", stage, shard, seconds, processes)
        return 0
    if requeue.signalled() or code == get_stage(stage).program.requeue_exit_code:
        log.warning("%s: srun ended with %d after the stop request: requeue", stage, code)
        return requeue.requeue_task(run, stage, shard, variant)
    run.write_task_record(stage, shard, "failed", variant, seconds=seconds, processes=processes,
                          error=f"srun {' '.join(cmd[-4:])} exited with {code} (see this task's log)")
    return 1
