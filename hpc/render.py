"""Render the sbatch scripts that run a stage's tasks (and its finalisation) on Slurm.

One script per (stage, variant); every array chunk of it is one `sbatch` call that differs only in
command-line options (`--array`, `--dependency`, the shard offset in `--export`) and the stage's own
options, passed as the script's arguments. The same renderer writes `jobs/` (with the run directory,
variant and interpreter left to the environment), so the plain sbatch scripts users read are the ones
hpc submits.

Quoting: every value that lands in the script or on the sbatch command line goes through
`shlex.quote`; values that could not survive a `#SBATCH` line (newlines, NUL) are refused. `setup`
lines are shell by definition (module loads, venv activation) and are written verbatim, one per line.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from .clusters import Resources

FROM_ENV = object()  # a setting the jobs/ templates read from the environment instead of a literal


class RenderError(ValueError):
    pass


def q(value) -> str:
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise RenderError(f"refusing to render {text!r}: a value may not contain a newline")
    return shlex.quote(text)


def log_dir_rel(stage: str, variant: str | None) -> str:
    """The task logs' folder, relative to the run directory."""
    return f"logs/{stage}" + (f"/{variant}" if variant else "")


def multi_process(stage: str, res: Resources) -> bool:
    """Whether a task runs as one process per GPU (srun): a stage with a program of its own, on more than one
    GPU or node."""
    from .multitask import supported

    return (res.gpus_per_node > 1 or res.nodes > 1) and supported(stage)


def tasks_per_node(stage: str, res: Resources) -> int:
    return max(res.gpus_per_node, 1) if multi_process(stage, res) else 1


def _sbatch_lines(res: Resources, job_name: str, output: str, chdir: Path | None, finalize: bool,
                  tasks_per_node: int = 1) -> list[str]:
    """`finalize`: `res` is already the finalisation's small shape (ClusterConfig.finalize_resources)."""
    opts: list[tuple[str, object]] = [("job-name", job_name)]
    if chdir is not None:
        opts.append(("chdir", chdir))
    opts.append(("output", output))
    for key in ("partition", "account", "qos"):
        if getattr(res, key):
            opts.append((key, getattr(res, key)))
    opts.append(("time", res.time))
    opts.append(("nodes", res.nodes))
    opts.append(("ntasks-per-node", tasks_per_node))
    opts.append(("cpus-per-task", res.cpus_per_task))
    if res.gpus_per_node:
        opts.append(("gpus-per-node", res.gpus_per_node))
    if res.mem:
        opts.append(("mem", res.mem))
    if res.constraint:
        opts.append(("constraint", res.constraint))
    if not finalize:
        # USR2 to the batch shell (exec'd into python) before the time limit: checkpoint + requeue
        opts.append(("signal", f"B:USR2@{res.signal_seconds}"))
        opts.append(("requeue", None))
    opts.append(("open-mode", "append"))
    for key, value in res.sbatch:
        opts.append((key, value))
    return [f"#SBATCH --{key}" + ("" if value is None else f"={q(value)}") for key, value in opts]


def _assign(name: str, value, env_default: str | None) -> str:
    if value is FROM_ENV and env_default is None:
        return f'{name}="${{{name}:?set {name} (see jobs/chain.sh)}}"'
    if value is FROM_ENV:
        return f'{name}="${{{name}:-{env_default}}}"'
    return f"{name}={q(value)}"


@dataclass(frozen=True)
class Script:
    path_name: str  # file name inside the log folder (or jobs/)
    text: str


def task_script(stage: str, variant, res: Resources, run_dir: Path | None, python=None) -> Script:
    """The script of a stage's tasks: shard = HPC_SHARD_OFFSET + SLURM_ARRAY_TASK_ID.

    run_dir None renders the jobs/ template: no --chdir (chain.sh passes it) and RUN/VARIANT/PYTHON
    taken from the environment.
    """
    template = run_dir is None
    name = f"fyp-{stage}" + (f"-{variant}" if variant and not template else "")
    per_node = tasks_per_node(stage, res)
    header = _sbatch_lines(res, name, f"{log_dir_rel(stage, None)}/%A_%a.sbatch.log", run_dir, finalize=False,
                           tasks_per_node=per_node)
    lines = [
        "#!/bin/bash",
        f"# fyp-hpc: the {stage} stage's tasks, one per shard (rendered by hpc.render; jobs/ is regenerated",
        "# by `python -m hpc.jobs`). Arguments after the script name are the stage's options.",
        *header,
        "set -euo pipefail",
        _assign("RUN", FROM_ENV if template else run_dir, "$PWD"),
        f"STAGE={q(stage)}",
        _assign("VARIANT", FROM_ENV if template else (variant or ""), ""),
        _assign("PYTHON", FROM_ENV if template else (python or res.python or sys.executable), "python"),
        _assign("HPC_MAX_REQUEUES", FROM_ENV if template else res.max_requeues, str(res.max_requeues)),
        "export HPC_MAX_REQUEUES",
        'SHARD=$(( ${HPC_SHARD_OFFSET:-0} + ${SLURM_ARRAY_TASK_ID:-0} ))',
        # one log per task and attempt: array job id, array task id, restart count
        'LOG_DIR="$RUN/logs/$STAGE${VARIANT:+/$VARIANT}"',
        'mkdir -p "$LOG_DIR"',
        'LOG="$LOG_DIR/shard-$(printf %05d "$SHARD").job-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0}'
        '.attempt-${SLURM_RESTART_COUNT:-0}.log"',
        'exec >>"$LOG" 2>&1',
        'echo "[hpc] $STAGE${VARIANT:+/$VARIANT} shard $SHARD: job ${SLURM_JOB_ID:-?} on $(hostname), attempt ${SLURM_RESTART_COUNT:-0}, pid $$, start $(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"',
        *_setup(res),
        *(_launch_srun(stage) if multi_process(stage, res) else
          ['exec "$PYTHON" -m hpc.task "$STAGE" --run "$RUN" --shard "$SHARD" ${VARIANT:+--variant "$VARIANT"} "$@"']),
    ]
    return Script(f"{stage}.sbatch", "\n".join(lines) + "\n")


def _launch_srun(stage: str) -> list[str]:
    from fyp.stages import get_stage

    program = get_stage(stage).program
    module, run_flag = program.module, program.run_flag
    return [
        "# one process per GPU (rendezvous from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID): hpc.task runs",
        f'#   srun --kill-on-bad-exit=1 "$PYTHON" -m {module} {run_flag} "$RUN" "$@"',
        "# keeps the task record, passes USR2 on to srun, and requeues as a single-process task does",
        'exec "$PYTHON" -m hpc.task "$STAGE" --run "$RUN" --shard "$SHARD" --srun ${VARIANT:+--variant "$VARIANT"} "$@"',
    ]


def finalize_script(stage: str, variant, res: Resources, run_dir: Path | None, python=None) -> Script:
    """`res`: the finalisation's own shape (ClusterConfig.finalize_resources), not the stage's."""
    template = run_dir is None
    name, output = ("fyp-finalize", "logs/finalize.%j.sbatch.log") if template else (
        f"fyp-{stage}-finalize" + (f"-{variant}" if variant else ""), f"{log_dir_rel(stage, None)}/finalize.%j.sbatch.log")
    header = _sbatch_lines(res, name, output, run_dir, finalize=True)
    lines = [
        "#!/bin/bash",
        "# fyp-hpc: a stage's finalisation, once, after every task of the stage succeeded (afterok).",
        *header,
        "set -euo pipefail",
        _assign("RUN", FROM_ENV if template else run_dir, "$PWD"),
        _assign("STAGE", FROM_ENV if template else stage, None),
        _assign("VARIANT", FROM_ENV if template else (variant or ""), ""),
        _assign("PYTHON", FROM_ENV if template else (python or res.python or sys.executable), "python"),
        'LOG_DIR="$RUN/logs/$STAGE${VARIANT:+/$VARIANT}"',
        'mkdir -p "$LOG_DIR"',
        'exec >>"$LOG_DIR/finalize.job-${SLURM_JOB_ID}.attempt-${SLURM_RESTART_COUNT:-0}.log" 2>&1',
        *_setup(res),
        'exec "$PYTHON" -m hpc.task "$STAGE" --run "$RUN" --finalize ${VARIANT:+--variant "$VARIANT"} "$@"',
    ]
    return Script("finalize.sbatch", "\n".join(lines) + "\n")


def _setup(res: Resources) -> list[str]:
    for line in res.setup:
        if "\n" in line or "\0" in line:
            raise RenderError(f"setup line {line!r} may not contain a newline; give one list item per line")
    return list(res.setup)


def sbatch_command(script: Path | str, array: str | None = None, dependency: list[str] | None = None,
                   offset: int = 0, args: list[str] | None = None) -> list[str]:
    """The argv of one submission (`--parsable` prints the job id)."""
    cmd = ["sbatch", "--parsable"]
    if array is not None:
        cmd.append(f"--array={array}")
    if dependency:
        cmd.append("--dependency=afterok:" + ":".join(dependency))
    if offset:
        cmd.append(f"--export=ALL,HPC_SHARD_OFFSET={offset}")
    cmd.append(str(script))
    cmd.extend(args or [])
    return cmd


def shell_join(cmd: list[str]) -> str:
    return " ".join(q(part) for part in cmd)
