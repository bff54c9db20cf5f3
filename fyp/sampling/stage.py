"""The sample stage: one task per shard writes the K candidates of each valid sample of its shard.

A shard is a run of whole store blocks (fyp.store). The task generates a block's samples into memory and
writes the block once it is complete, in this order (what makes a SIGKILL at any point harmless):
    candidates.image[block]  (+ candidates.latent[block])  ->  candidates.seed[block]  ->  candidates.done[block]
Every block write is one file written atomically (zarr >= 3.1.3: temp file + rename), and a block's
samples count as done only once its done flags are written, after everything else. A re-run regenerates
every sample of a block not done, with the same seeds and the same arithmetic, so it rewrites the same
bytes; a kill loses at most the block being generated. Each file is written once: linear in the work.
"""
from __future__ import annotations

import logging
import sys
import time

import numpy as np
from tqdm import tqdm

from ..hold import HoldPoints
from ..models import build_pipeline
from ..run import Run
from ..stages import Stage
from ..store import RunStore, StoreError
from .generate import generate_candidates
from .seeds import candidate_seeds

log = logging.getLogger("fyp.sampling")

# Test hook: FYP_SAMPLE_HOLD="<point>:<count>[:<shard>]" makes a task (of that shard only, if given) stop
# at the <count>-th time it reaches <point> (images | seed | done: just after that block write), create
# "<run>/.sample-hold" and wait there to be killed (fyp.hold.HoldPoints, the hook every stage shares). The
# kill-and-resume test uses it to SIGKILL a task between two specific writes.
HOLD_ENV = "FYP_SAMPLE_HOLD"
HOLD_FILE = ".sample-hold"

_PIPELINE_CACHE: dict = {}  # one pipeline per process: a local run executes many shards in one process


def _pipeline(run: Run):
    model, sampling = run.config.model, run.config.sampling
    key = (model.kind, model.tiny, model.pretrained, model.brushnet, model.dtype, model.device, model.seed, sampling.max_sequence_length)
    if key not in _PIPELINE_CACHE:
        _PIPELINE_CACHE.clear()
        _PIPELINE_CACHE[key] = build_pipeline(model, max_sequence_length=sampling.max_sequence_length)
    return _PIPELINE_CACHE[key]


def _pending_mask(store: RunStore) -> np.ndarray:
    """Samples with work left: not prepared yet, or valid and not yet done. An unprepared sample is never
    valid, so without the first term a shard prepare never wrote would read as complete."""
    samples = store.samples
    return ~samples.done[:] | (samples.valid[:] & ~store.candidates.done[:])


class SampleStage(Stage):
    name = "sample"
    sharded = True

    def pending_shards(self, run: Run, variant: str | None, opts: dict) -> list[int]:
        store = run.store(mode="r")
        todo = _pending_mask(store)
        return [s for s in range(store.shape.shards) if todo[store.shard_slice(s)].any()]

    def progress(self, run: Run, variant: str | None, opts: dict) -> tuple[int, int]:
        """(valid samples with candidates, valid samples): invalid samples never get candidates."""
        store = run.store(mode="r")
        valid = store.samples.valid[:]
        return int((valid & store.candidates.done[:]).sum()), int(valid.sum())

    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        cfg, store = run.config, run.store()
        span = store.shard_slice(shard)
        if store.shape.k != cfg.sampling.candidates:
            raise StoreError(f"the store holds K={store.shape.k} candidates but sampling.candidates is "
                             f"{cfg.sampling.candidates}; the run's config changed since prepare")
        samples, candidates = store.samples, store.candidates
        prepared = samples.done[span]
        if not prepared.all():
            raise StoreError(f"prepare has not finished shard {shard} ({int((~prepared).sum())} samples not "
                             f"prepared); run `python -m hpc.submit prepare` for it first")
        valid = store.read_rows(samples.valid, span)  # prepared: a missing block is damage, not "invalid"
        done = candidates.done[span]
        todo = [span.start + j for j in np.flatnonzero(valid & ~done)]
        counts = dict(done=0, skipped=int((valid & done).sum()), invalid=int((~valid).sum()), candidates=0)
        if not todo:
            log.info("sample shard %d: nothing to do (%d samples already done, %d invalid)", shard,
                     counts["skipped"], counts["invalid"])
            return counts

        k = cfg.sampling.candidates
        pipe = _pipeline(run)
        ids = store.read_rows(samples.id, span)
        prompts = store.read_rows(samples.prompt, span)
        hold = HoldPoints(run.dir, shard, env=HOLD_ENV, file=HOLD_FILE)
        save_latents = cfg.sampling.save_latents and "latent" in candidates
        start = time.time()
        bar = tqdm(total=len(todo) * k, desc=f"sample shard {shard}", unit="cand", file=sys.stderr,
                   mininterval=1 if sys.stderr.isatty() else 10)
        for block in store.blocks(span):
            rows = [n for n in todo if block.start <= n < block.stop]
            if not rows:
                continue
            size = block.stop - block.start
            # The block's buffers start as the store's fill values; samples of the block that are done
            # (none, unless written by another layout) or invalid keep what the store holds.
            keep = done[block.start - span.start:block.stop - span.start] & valid[block.start - span.start:block.stop - span.start]
            images = candidates.image[block] if keep.any() else np.zeros((size, *candidates.image.shape[1:]), np.uint8)
            seeds = candidates.seed[block] if keep.any() else np.full((size, k), -1, np.int64)
            latents = None
            if save_latents:
                latents = candidates.latent[block] if keep.any() else np.zeros((size, *candidates.latent.shape[1:]),
                                                                               np.float16)
            for n in rows:
                j = n - span.start
                sample_seeds = candidate_seeds(cfg.seed, str(ids[j]), k)
                out = generate_candidates(pipe, str(prompts[j]), store.read_rows(samples.image, n),
                                          store.read_rows(samples.mask, n), sample_seeds, cfg.sampling,
                                          on_batch=bar.update)
                images[n - block.start] = out.images
                if latents is not None:
                    latents[n - block.start] = out.latents
                seeds[n - block.start] = np.asarray(sample_seeds, dtype=np.int64)
            candidates.image[block] = images
            if latents is not None:
                candidates.latent[block] = latents
            hold.reached("images")
            candidates.seed[block] = seeds
            hold.reached("seed")
            candidates.done[block] = done[block.start - span.start:block.stop - span.start] | np.isin(
                np.arange(block.start, block.stop), rows)  # last: the block is complete
            hold.reached("done")
            counts["done"] += len(rows)
            counts["candidates"] += k * len(rows)
        bar.close()
        seconds = time.time() - start
        log.info("sample shard %d: %d samples, %d candidates in %.1fs (%.2f candidates/s); %d already done, "
                 "%d invalid", shard, counts["done"], counts["candidates"], seconds,
                 counts["candidates"] / max(seconds, 1e-9), counts["skipped"], counts["invalid"])
        counts["candidates_per_s"] = round(counts["candidates"] / max(seconds, 1e-9), 3)
        return counts

    def finalize(self, run: Run, variant: str | None, opts: dict) -> None:
        """Remove temp files a killed task left in the candidate arrays, then consolidate metadata once."""
        store = run.store()
        for stray in store.candidates.files("*.partial"):
            stray.unlink(missing_ok=True)
        store.consolidate()
        done, total = self.progress(run, variant, opts)
        log.info("sample: %d of %d valid samples have candidates", done, total)
