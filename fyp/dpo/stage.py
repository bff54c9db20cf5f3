"""The train stage: one (unsharded) task that runs `fyp.dpo.train.train` on a run's pairs.

Options: `--pairs NAME` (default train.pairs), `--steps N` (default train.steps), `--set train.KEY=VALUE`
(repeatable). In-process it trains single-process (its own process group of one, or the caller's);
for several processes or GPUs hpc/ runs `python -m fyp.dpo.train` under torchrun or srun instead, with
the same arguments (see docs/training.md). A preempted task raises `TrainingPreempted` after its
checkpoint; running the task again resumes.
"""
from __future__ import annotations

import json

from ..config import parse_override
from ..run import Run
from ..stages import Option, Program, Stage
from .train import REQUEUE_EXIT_CODE, TrainingPreempted, output_dir, request_stop

__all__ = ["TrainStage", "TrainingPreempted"]


def _pairs(run: Run, opts: dict) -> str:
    return opts.get("pairs") or run.config.train.pairs


def _overrides(opts: dict) -> dict:
    over: dict = {}
    for text in opts.get("set") or []:
        parsed = parse_override(text)
        if list(parsed) != ["train"]:
            raise ValueError(f"--set accepts train.* keys only, got {text!r}")
        over.update(parsed["train"])
    return over


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

        result = train(run.dir, _pairs(run, opts), steps=opts.get("steps"), overrides=_overrides(opts))
        last = result.last
        return dict(done=result.steps - result.start_step, steps=result.steps,
                    loss=round(last.get("loss", float("nan")), 5),
                    implicit_accuracy=round(last.get("implicit_accuracy", float("nan")), 4),
                    export=result.export or "")
