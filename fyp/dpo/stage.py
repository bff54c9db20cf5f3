"""The train stage: one (unsharded) task that runs `fyp.dpo.train.train` on a run's pairs.

Options: `--pairs NAME` (default train.pairs), `--steps N` (default train.steps), `--set train.KEY=VALUE`
(repeatable). In-process it trains single-process (its own process group of one, or the caller's);
for several processes or GPUs hpc/ runs `python -m fyp.dpo.train` under torchrun or srun instead, with
the same arguments (see docs/training.md). A preempted task raises `TrainingPreempted` after its
checkpoint; running the task again resumes.
"""
from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

from ..config import parse_overrides
from ..run import Run, disk_full
from ..stages import Option, Program, Stage
from .train import REQUEUE_EXIT_CODE, TrainingPreempted, output_dir, request_stop

__all__ = ["TrainStage", "TrainingPreempted"]
log = logging.getLogger("fyp.dpo")


def remove_unfinished_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint folders written after the one `latest` names (a save cut short, e.g. by a full disk): removed,
    so they neither hold the space nor look like checkpoints. Resuming reads only what `latest` names."""
    if not ckpt_dir.is_dir():
        return []
    pointer = ckpt_dir / "latest"
    done = pointer.read_text().strip() if pointer.exists() else ""
    removed = []
    for folder in sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step-")):
        # later than the checkpoint `latest` names (its universal conversion keeps the tag as a prefix)
        unfinished = not done or (folder.name > done and not folder.name.startswith(done))
        if unfinished:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _pairs(run: Run, opts: dict) -> str:
    return opts.get("pairs") or run.config.train.pairs


def _overrides(opts: dict) -> dict:
    return parse_overrides(opts.get("set"), section="train")


class TrainStage(Stage):
    name = "train"
    progress_unit = "optimizer steps"
    sharded = False
    # several GPUs: one `python -m fyp.dpo.train` per GPU (its flags are `options`; torchrun claims --run)
    program = Program("fyp.dpo.train", "--run-dir", REQUEUE_EXIT_CODE)
    options = (
        Option("--pairs", dict(help="train on pairs/<NAME> (default: the config's train.pairs)")),
        Option("--steps", dict(type=int, help="optimizer steps (default: train.steps)")),
        Option("--set", dict(action="append", default=[], metavar="train.KEY=VALUE",
                             help="override a train setting, e.g. --set train.lr=1e-4 (repeatable)")),
    )

    def check_options(self, run: Run, opts: dict) -> None:
        """Every `--set` key and value, checked when submitting (and at --dry-run), not when the task runs."""
        from .train import resolve_config

        resolve_config(run, opts.get("pairs"), opts.get("steps"), _overrides(opts))

    def request_stop(self) -> bool:
        request_stop()  # the loop checkpoints after its current step and raises TrainingPreempted
        return True

    def _done(self, run: Run, opts: dict) -> dict | None:
        path = output_dir(run.dir, _pairs(run, opts)) / "done.json"
        return json.loads(path.read_text()) if path.exists() else None

    def pending_shards(self, run: Run, variant: str | None, opts: dict) -> list[int]:
        done = self._done(run, opts)
        steps = opts.get("steps") or run.config.train.steps
        return [] if done and done["steps"] >= steps else [0]

    def progress(self, run: Run, variant: str | None, opts: dict) -> tuple[int, int]:
        """(optimizer steps logged, steps asked) from metrics.csv."""
        steps = opts.get("steps") or run.config.train.steps
        path = output_dir(run.dir, _pairs(run, opts)) / "metrics.csv"
        if not path.exists():
            return (0, steps)
        with path.open() as handle:
            return (max(0, sum(1 for _ in handle) - 1), steps)

    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        from .train import train

        try:
            result = train(run.dir, _pairs(run, opts), steps=opts.get("steps"), overrides=_overrides(opts))
        except Exception as exc:
            if not disk_full(run.dir):
                raise
            # a checkpoint save cut short holds the space and is no checkpoint; say "disk full" as an OSError
            # (torch.save says it as a RuntimeError), before the removal makes room again
            for folder in remove_unfinished_checkpoints(output_dir(run.dir, _pairs(run, opts)) / "checkpoints"):
                log.warning("removed the unfinished checkpoint %s (the disk is full)", folder)
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise OSError(errno.ENOSPC, f"no space left on the disk holding the run ({type(exc).__name__}: "
                                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})",
                          str(run.dir)) from exc
        last = result.last
        return dict(done=result.steps - result.start_step, steps=result.steps,
                    loss=round(last.get("loss", float("nan")), 5),
                    implicit_accuracy=round(last.get("implicit_accuracy", float("nan")), 4),
                    export=result.export or "")
