"""The score stage: every reward model scores every candidate of its shard.

One variant (array job) per reward. A task reads its shard's candidates (samples whose candidates are
done), scores them in groups of whole samples (about `batch_size` images per call), and writes each store
block (fyp.store) of the reward's values and then of its done mask once every sample of the block it has
to score is scored (the done mask last, so a killed task never marks an unscored sample done; a kill loses
at most the unfinished block). Each block is written once: the write cost is linear in the shard. Re-runs skip done samples; the models are deterministic, so a
killed task re-run gives the same scores. A reward that sets `accepts_masks` also gets the samples' masks
(`masks=`, uint8 [B,H,W], 1 = hole). Invalid samples (samples/valid False) are marked done with NaN
scores. Non-finite scores are counted per task (`nonfinite=` in the task record, which `status` shows) and per
reward at finalisation (attrs of `scores/<reward>`).

A reward whose RewardSpec sets `python` runs in that interpreter: the task starts
`<python> -m fyp.rewards.stage_worker --run DIR --shard N --reward NAME`, and the store is the only interface.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from ..config import RewardSpec
from ..hold import hold_point
from ..run import Run
from ..store import BlockWriter
from ..stages import Option, Stage
from .registry import accepts as reward_accepts
from .registry import build as build_reward

log = logging.getLogger("fyp")
COUNTS_MARKER = "FYP_SCORE_COUNTS "


def score_shard(run: Run, shard: int, spec: RewardSpec) -> dict:
    """Score one shard with one reward, in this process."""
    store = run.store()
    name = spec.name
    scores_part, samples = store.scores(name), store.samples
    value_arr, done_arr = scores_part.value, scores_part.done
    sl = store.shard_slice(shard)
    k = store.shape.k
    done = np.asarray(done_arr[sl], dtype=bool).copy()
    values = np.asarray(value_arr[sl], dtype=np.float32).copy()
    ready = np.asarray(store.candidates.done[sl], dtype=bool)
    valid = np.zeros(sl.stop - sl.start, bool)  # of sampled rows only: their blocks are prepared, so missing = damage
    valid[ready] = store.read_rows(samples.valid, np.flatnonzero(ready) + sl.start)
    invalid = ready & ~valid & ~done
    todo = np.flatnonzero(ready & valid & ~done)
    counts = dict(done=0, images=0, skipped=int(done.sum()), invalid=int(invalid.sum()),
                  waiting=int((~ready & ~done).sum()), nonfinite=0, failures=0)
    # Each block of values and done flags is written once, when its last sample to score is scored
    # (values first, done mask last: a kill in between only repeats that block's work).
    to_score = np.zeros(sl.stop - sl.start, bool)
    to_score[todo] = True
    done |= invalid
    writer = BlockWriter(store, sl, [value_arr, done_arr], [values, done], to_score, touched=invalid)
    writer.finish()  # blocks with invalid samples only
    if todo.size == 0:
        return counts

    options = dict(spec.options)
    if "batch_size" not in options and reward_accepts(name, "batch_size"):
        options["batch_size"] = spec.batch_size  # the model's micro-batch = the stage's call size
    model = build_reward(name, tiny=spec.tiny, pretrained=spec.pretrained, device=spec.device, dtype=spec.dtype,
                         **options)
    prompts = np.full(sl.stop - sl.start, "", dtype=object)
    prompts[todo] = store.read_rows(samples.prompt, todo + sl.start)  # prepared rows: a lost block is damage
    per_call = max(1, spec.batch_size // k)
    start_time = time.time()
    for first in range(0, todo.size, per_call):
        local = todo[first:first + per_call]
        images = store.read_rows(store.candidates.image, local + sl.start)  # [n,K,H,W,3], read once
        flat = torch.from_numpy(images.reshape(-1, *images.shape[2:]))
        flat_prompts = [str(p) for p in np.repeat(prompts[local], k)]
        extra = {}
        if getattr(model, "accepts_masks", False):  # e.g. brightness scores the hole only
            masks = store.read_rows(samples.mask, local + sl.start)
            extra["masks"] = torch.from_numpy(np.repeat(masks, k, axis=0))
        scores = model.score(flat, flat_prompts, **extra).numpy().astype(np.float32).reshape(len(local), k)
        values[local] = scores
        done[local] = True
        writer.finish(local)
        counts["done"] += len(local)
        counts["images"] += scores.size
        counts["nonfinite"] += int((~np.isfinite(scores)).sum())
        log.info("score/%s shard %d: %d/%d samples (%.1f images/s)", name, shard, counts["done"], todo.size,
                 counts["images"] / max(time.time() - start_time, 1e-9))
    counts["failures"] = int(getattr(model, "failures", 0))
    return counts


def score_shard_in(python: str, run_dir: Path, shard: int, reward: str) -> dict:
    """Run `score_shard` under another interpreter (its own environment); returns its counts."""
    import fyp

    package_root = str(Path(fyp.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = shlex.split(python) + ["-m", "fyp.rewards.stage_worker", "--run", str(run_dir), "--shard", str(shard),
                                 "--reward", reward]
    log.info("score/%s shard %d: running in %s", reward, shard, python)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # stderr (logs) goes to the task log
    lines = [line for line in proc.stdout.splitlines() if line.startswith(COUNTS_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"score/{reward} shard {shard}: worker `{' '.join(cmd)}` exited with {proc.returncode}"
                           " (its error is in this task's log above)")
    return json.loads(lines[-1][len(COUNTS_MARKER):])


class ScoreStage(Stage):
    name = "score"
    sharded = True
    options = (
        Option("--reward", dict(default="all", help="reward to score with (one array job per reward): a name, "
                                                    "a comma-separated list, or 'all' for every reward of the run")),
    )

    def variants(self, run: Run, opts: dict) -> list[str]:
        choice = (opts.get("reward") or "all").strip()
        if choice == "all":
            if not run.config.reward_names:
                raise ValueError(f"{run.dir}: the run's preset lists no rewards; nothing to score")
            return list(run.config.reward_names)
        names = [c.strip() for c in choice.split(",") if c.strip()]
        for name in names:
            run.config.reward(name)  # raises with the run's rewards listed
        return names

    @staticmethod
    def _reward(variant: str | None) -> str:
        if not variant:
            raise ValueError("the score stage runs per reward: pass --reward NAME or --reward all")
        return variant

    def pending_shards(self, run: Run, variant: str | None, opts: dict) -> list[int]:
        store = run.store("r")
        return store.pending_shards(store.scores(self._reward(variant)).done)

    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        spec = run.config.reward(self._reward(variant))
        if spec.python:
            return score_shard_in(spec.python, run.dir, shard, spec.name)
        return score_shard(run, shard, spec)

    def finalize(self, run: Run, variant: str | None, opts: dict) -> None:
        reward = self._reward(variant)
        store = run.store()
        scores = store.scores(reward)
        done = np.asarray(scores.done[:], dtype=bool)
        values = np.asarray(scores.value[:])
        valid = np.asarray(store.samples.valid[:], dtype=bool)
        scored = values[done & valid]
        scores.update_attrs(done=int(done.sum()), total=int(done.size), nonfinite=int((~np.isfinite(scored)).sum()))
        hold_point(run.dir, "score.finalize")  # before the finalised marker (hpc.task writes it after this)
        store.consolidate()

    def progress(self, run: Run, variant: str | None, opts: dict) -> tuple[int, int]:
        store = run.store("r")
        return store.done_count(store.scores(self._reward(variant)).done)

    def report(self, run: Run, variant: str | None) -> dict:
        """{done, total, nonfinite} that `finalize` wrote into the reward's group attrs."""
        if not variant:
            return {}
        return dict(run.store("r").scores(variant).attrs)
