"""sbatch rendering: a golden script, shell quoting of every value, jobs/ in sync, stage options round-trip."""
import shlex
import subprocess
from pathlib import Path

import pytest

from fyp.stages import Option, Stage
from hpc import jobs, render
from hpc.clusters import from_dict
from hpc.options import to_argv
from hpc.render import RenderError, finalize_script, sbatch_command, task_script

GOLDEN_SCORE = """#!/bin/bash
# fyp-hpc: the score stage's tasks, one per shard (rendered by hpc.render; jobs/ is regenerated
# by `python -m hpc.jobs`). Arguments after the script name are the stage's options.
#SBATCH --job-name=fyp-score-hpsv2
#SBATCH --chdir=/scratch/runs/r1
#SBATCH --output=logs/score/%A_%a.sbatch.log
#SBATCH --partition=gpu-a100
#SBATCH --account=proj
#SBATCH --qos=normal
#SBATCH --time=04:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=1
#SBATCH --mem=64G
#SBATCH --constraint=a100_80g
#SBATCH --signal=B:USR2@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --mail-type=FAIL
set -euo pipefail
RUN=/scratch/runs/r1
STAGE=score
VARIANT=hpsv2
PYTHON=/envs/hpsv2/bin/python
HPC_MAX_REQUEUES=2
export HPC_MAX_REQUEUES
SHARD=$(( ${HPC_SHARD_OFFSET:-0} + ${SLURM_ARRAY_TASK_ID:-0} ))
LOG_DIR="$RUN/logs/$STAGE${VARIANT:+/$VARIANT}"
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/shard-$(printf %05d "$SHARD").job-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0}.attempt-${SLURM_RESTART_COUNT:-0}.log"
exec >>"$LOG" 2>&1
echo "[hpc] $STAGE${VARIANT:+/$VARIANT} shard $SHARD: job ${SLURM_JOB_ID:-?} on $(hostname), attempt ${SLURM_RESTART_COUNT:-0}, pid $$, start $(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"
module load cuda/12.4
exec "$PYTHON" -m hpc.task "$STAGE" --run "$RUN" --shard "$SHARD" ${VARIANT:+--variant "$VARIANT"} "$@"
"""

CLUSTER = from_dict({"executor": "slurm", "partition": "gpu-a100", "account": "proj", "qos": "normal",
                     "time": "04:00:00", "gpus_per_node": 1, "cpus_per_task": 8, "mem": "64G",
                     "constraint": "a100_80g", "setup": ["module load cuda/12.4"], "signal_seconds": 180,
                     "max_requeues": 2, "sbatch": {"mail-type": "FAIL"},
                     "rewards": {"hpsv2": {"python": "/envs/hpsv2/bin/python"}}})


def test_golden_task_script():
    script = task_script("score", "hpsv2", CLUSTER.resources("score", "hpsv2"), Path("/scratch/runs/r1"))
    assert script.text == GOLDEN_SCORE
    assert script.path_name == "score.sbatch"


def test_scripts_are_valid_bash():
    for script in (task_script("score", "hpsv2", CLUSTER.resources("score", "hpsv2"), Path("/r")),
                   finalize_script("sample", None, CLUSTER.base, Path("/r")), *[]):
        subprocess.run(["bash", "-n"], input=script.text, text=True, check=True)


def test_hostile_values_are_quoted(tmp_path):
    nasty = "/tmp/my run; rm -rf ~ $(id) `x` 'q'"
    cluster = from_dict({"executor": "slurm", "partition": "a b", "account": "x;y", "python": "/opt/my env/python"})
    text = task_script("sample", "we'ird", cluster.base, Path(nasty)).text
    assert f"RUN={shlex.quote(nasty)}" in text
    assert "#SBATCH --partition='a b'" in text and "#SBATCH --account='x;y'" in text
    assert f"VARIANT={shlex.quote(chr(39).join(['we', 'ird']))}" in text
    # the assignments evaluate to the literal values in bash: nothing is executed or expanded
    probe = "\n".join(line for line in text.splitlines() if line.startswith(("RUN=", "VARIANT=", "PYTHON=")))
    out = subprocess.run(["bash", "-c", probe + '\nprintf "%s\\n" "$RUN" "$VARIANT" "$PYTHON"'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [nasty, "we'ird", "/opt/my env/python"]


def test_newlines_are_refused():
    cluster = from_dict({"executor": "slurm", "partition": "gpu"})
    with pytest.raises(RenderError, match="newline"):
        task_script("sample", None, cluster.base, Path("/tmp/a\nb"))
    bad = from_dict({"executor": "slurm", "setup": ["module load x\necho pwned"]})
    with pytest.raises(RenderError, match="setup line"):
        task_script("sample", None, bad.base, Path("/r"))


def test_sbatch_command():
    cmd = sbatch_command("/r/logs/sample/sample.sbatch", "0-22%4", ["12", "13"], 1001, ["--reward", "a b"])
    assert cmd == ["sbatch", "--parsable", "--array=0-22%4", "--dependency=afterok:12:13",
                   "--export=ALL,HPC_SHARD_OFFSET=1001", "/r/logs/sample/sample.sbatch", "--reward", "a b"]
    assert shlex.split(render.shell_join(cmd)) == cmd


def test_jobs_folder_matches_renderer():
    """jobs/*.sbatch are exactly what hpc renders; regenerate with `python -m hpc.jobs write`."""
    expected = jobs.rendered()
    for name, text in expected.items():
        path = jobs.JOBS_DIR / name
        assert path.exists(), f"jobs/{name} is missing: run python -m hpc.jobs write"
        assert path.read_text() == text, f"jobs/{name} drifted from hpc.render: run python -m hpc.jobs write"
    chain = (jobs.JOBS_DIR / "chain.sh").read_text()
    assert "sbatch --parsable" in chain and "--dependency=afterok:" in chain and "finalize.sbatch" in chain
    subprocess.run(["bash", "-n", str(jobs.JOBS_DIR / "chain.sh")], check=True)
    for name in expected:
        subprocess.run(["bash", "-n", str(jobs.JOBS_DIR / name)], check=True)


class _Opts(Stage):
    name = "demo"
    options = (Option("--reward", dict(default="all")), Option("--fast", dict(action="store_true")),
               Option("--steps", dict(type=int)), Option("--set", dict(action="append", default=[])))


def test_stage_options_round_trip():
    import argparse

    from hpc.options import add_stage_options, stage_opts

    stage = _Opts()
    parser = argparse.ArgumentParser()
    add_stage_options(parser, stage)
    typed = ["--reward", "hpsv2", "--fast", "--steps", "3", "--set", "train.lr=1", "--set", "x=2"]
    opts = stage_opts(stage, parser.parse_args(typed))
    again = stage_opts(stage, parser.parse_args(to_argv(stage, opts)))
    assert again == opts == {"reward": "hpsv2", "fast": True, "steps": 3, "set": ["train.lr=1", "x=2"]}
    assert to_argv(stage, stage_opts(stage, parser.parse_args([]))) == []
