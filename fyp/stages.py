"""The stage protocol: what the scheduler (hpc/) may ask of a pipeline stage, and nothing more.

A stage is sharded (one task per shard, `num_shards` of them) or single (one task). `hpc` parses the
stage's own command-line options from `options`, asks for `variants` (the score stage has one per
reward, each its own array job), runs `execute_shard` for every task, then `finalize` once. `fyp`
knows nothing of Slurm: the same calls run in a Slurm array task, in submitit's local executor, or
inline.

Everything else the scheduler needs a stage says itself, so that `hpc/` names no stage (it walks
`PIPELINE`): how a run is created (`creates_run`, `create_run`), a program of its own for one process
per GPU (`program`), how it stops gracefully before the time limit (`request_stop`), the options it
needs in a chain whose upstream stages have not run yet (`chain_options`), what its finalisation
counted (`report`) and the line its task logs (`report_line`). `fyp/` imports nothing from `hpc/`.
"""
from __future__ import annotations

import errno
import importlib
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run import DISK_FULL, Run, disk_full

log = logging.getLogger("fyp")


@dataclass(frozen=True)
class Option:
    """A stage's command-line option: argparse's flag and keyword arguments."""

    flag: str
    kwargs: dict = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.flag.lstrip("-").replace("-", "_"))


def option_defaults(options: tuple[Option, ...]) -> dict:
    """The opts of a stage run with no flags given (what a chain submits)."""
    return {option.dest: option.kwargs.get("default") for option in options}


@dataclass(frozen=True)
class Program:
    """A stage's own program, run as one process per GPU (`srun`/`torchrun`): `python -m MODULE RUN_FLAG DIR
    [the stage's options]`; it exits with `requeue_exit_code` after checkpointing on a stop request."""

    module: str
    run_flag: str
    requeue_exit_code: int


class Stage:
    name: str = ""
    progress_unit: str = "samples"  # what progress() counts, for messages
    sharded: bool = True
    options: tuple[Option, ...] = ()
    creates_run: bool = False  # the pipeline's first stage: `create_run` makes the run directory
    program: Program | None = None  # a multi-process launch of its own (train on several GPUs)

    def create_run(self, run_dir: str | Path, preset: str, overrides: dict, samples: int | None,
                   shards: int | None, dry_run: bool = False) -> Run:
        """Make a new run (only the stage with `creates_run`); dry_run: resolve it in memory, write nothing.
        A run that exists is returned when the settings match and refused (ConfigError) when they differ."""
        raise NotImplementedError(f"{self.name} does not create runs")

    def request_stop(self) -> bool:
        """The time limit is near: ask the running task to checkpoint and end at its next step boundary.
        False = no graceful stop (the task is interrupted at once; its store keeps every finished sample)."""
        return False

    def prepare_variant(self, run: Run, variant: str | None, opts: dict) -> None:
        """Create the store arrays the variant's tasks write, from the submitting process, before any of its
        tasks is submitted (tasks write array data only, never metadata). Idempotent; default: nothing."""

    def chain_options(self, run: Run, chain: list[str]) -> dict:
        """Options this stage needs when submitted in a chain (`chain` = the chain's stage names) before the
        stages upstream of it ran (e.g. eval names the export the chain's train stage will write)."""
        return {}

    def report(self, run: Run, variant: str | None) -> dict:
        """Totals the stage's finalisation recorded (e.g. score: done, total, nonfinite); {} if none yet."""
        return {}

    def report_line(self, counts: dict, seconds: float) -> str:
        """The end of a task's log line: its counts and rate."""
        done = counts.get("done", 0)
        rate = f", {done / seconds:.2f} {self.progress_unit}/s" if seconds > 0 and done else ""
        return (", ".join(f"{k}={v}" for k, v in counts.items()) or "nothing to do") + rate

    def variants(self, run: Run, opts: dict) -> list[str | None]:
        """Independent sub-jobs of the stage (one array job each); None = the stage itself."""
        return [None]

    def check_options(self, run: Run, opts: dict) -> None:
        """Refuse bad option values (ConfigError, one line) when submitting and at --dry-run."""

    def num_shards(self, run: Run, opts: dict) -> int:
        return run.config.shards if self.sharded else 1

    def pending_shards(self, run: Run, variant: str | None, opts: dict) -> list[int]:
        """Shards with work left, read from the store's done masks."""
        return list(range(self.num_shards(run, opts)))

    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        """Do one shard's work; return counts for the log line (e.g. done=, skipped=, invalid=)."""
        raise NotImplementedError

    def finalize(self, run: Run, variant: str | None, opts: dict) -> None:
        """Once, after every task of the stage (variant) ended: consolidate metadata, write summaries."""

    def progress(self, run: Run, variant: str | None, opts: dict) -> tuple[int, int]:
        """(samples done, samples total) from the store."""
        return (0, 0)


_REGISTRY = {
    "prepare": "fyp.data.stage:PrepareStage",
    "sample": "fyp.sampling.stage:SampleStage",
    "score": "fyp.rewards.stage:ScoreStage",
    "pairs": "fyp.pairs.stage:PairsStage",
    "train": "fyp.dpo.stage:TrainStage",
    "eval": "fyp.evaluation.stage:EvalStage",
    "report": "fyp.evaluation.report:ReportStage",
}
PIPELINE = ("prepare", "sample", "score", "pairs", "train", "eval", "report")
# whole programs of fyp run as `python -m hpc.submit NAME ...` (the rest of argv goes to their `main(argv)`)
TOOLS = {"study": "fyp.evaluation.study", "agreement": "fyp.evaluation.agreement"}
# cluster configs give per-variant resources in a section of their own: section -> the stage it refines
VARIANT_RESOURCES = {"rewards": "score"}


def available_stages() -> list[str]:
    """Stages whose implementation is importable in this installation."""
    out = []
    for name in _REGISTRY:
        try:
            get_stage(name)
            out.append(name)
        except (ImportError, AttributeError):
            pass
    return out


def get_stage(name: str) -> Stage:
    if name not in _REGISTRY:
        raise ValueError(f"unknown stage {name!r}; valid stages: {', '.join(_REGISTRY)}")
    module, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)()


def execute_shard(stage_name: str, run_dir: str | Path, shard: int, variant: str | None = None,
                  opts: dict[str, Any] | None = None) -> dict:
    """Run one task with its record kept: what every scheduler calls (picklable, top-level)."""
    opts = dict(opts or {})
    run = Run.open(run_dir)
    stage = get_stage(stage_name)
    shards = stage.num_shards(run, opts)
    if not 0 <= shard < shards:
        raise IndexError(f"{stage_name}: array index {shard} is past this run's shards 0-{shards - 1}")
    run.write_task_record(stage_name, shard, "running", variant)
    start = time.time()
    try:
        counts = stage.run_shard(run, shard, variant, opts) or {}
    except BaseException as exc:  # noqa: BLE001 - record every failure, then re-raise
        last = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        # an OSError's errno and path let the CLI say "disk full at PATH" in one line; a failure on a full
        # disk that does not say so (torch.save raises RuntimeError) is recorded as one
        where = dict(errno=exc.errno, filename=str(exc.filename or "")) if isinstance(exc, OSError) else {}
        if where.get("errno") not in DISK_FULL and disk_full(run.dir):
            where = dict(errno=errno.ENOSPC, filename=str(run.dir))
            last = f"{last} (the disk holding {run.dir} is full)"
        run.write_task_record(stage_name, shard, "failed", variant, error=last,
                              traceback=traceback.format_exc()[-3000:], seconds=time.time() - start, **where)
        raise
    seconds = time.time() - start
    run.write_task_record(stage_name, shard, "done", variant, seconds=seconds, **counts)
    label = f"{stage_name}{'/' + variant if variant else ''} shard {shard}"
    log.info("%s finished in %.1fs: %s", label, seconds, stage.report_line(counts, seconds))
    return counts
