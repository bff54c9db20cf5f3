"""The sample stage: one task per shard writes the K candidates of each valid sample of its shard.

Write order per sample n (what makes a SIGKILL at any point harmless):
    candidates/image[n]  (+ candidates/latent[n])  ->  candidates/seed[n]  ->  candidates/done[n]
Every chunk write is atomic (zarr >= 3.1.3: temp file + rename), and a sample counts as done only once
its done flag is written, after everything else. A re-run regenerates any sample not done, with the
same seeds and the same arithmetic, so it rewrites the same bytes. The image and latent chunks are
per sample; seed and done are chunked per shard (chunk = shard size), so setting one element rewrites
the shard's chunk — only this task owns it, and the rewrite is atomic.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..models import build_pipeline
from ..run import Run
from ..stages import Stage
from ..store import RunStore, StoreError
from .generate import generate_candidates
from .seeds import candidate_seeds

log = logging.getLogger("fyp.sampling")

# Test hook: FYP_SAMPLE_HOLD="<point>:<count>[:<shard>]" makes a task (of that shard only, if given) stop
# at the <count>-th time it reaches <point> (images | seed | done: just after that write), create
# "<run>/.sample-hold" and wait there to be killed. The kill-and-resume test uses it to SIGKILL a task between two specific writes.
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


class _Hold:
    def __init__(self, run_dir: Path, shard: int):
        point, _, rest = os.environ.get(HOLD_ENV, "").partition(":")
        count, _, only = rest.partition(":")
        if only and int(only) != shard:
            point = ""
        self.point, self.left, self.file = point, int(count or 0), Path(run_dir) / HOLD_FILE

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self.left -= 1
        if self.left == 0:
            self.file.touch()
            while True:
                time.sleep(1)


def _pending_mask(store: RunStore) -> np.ndarray:
    """Samples with work left: not prepared yet, or valid and not yet done. An unprepared sample is never
    valid, so without the first term a shard prepare never wrote would read as complete."""
    return ~store["samples/done"][:] | (store["samples/valid"][:] & ~store["candidates/done"][:])


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
        valid = store["samples/valid"][:]
        return int((valid & store["candidates/done"][:]).sum()), int(valid.sum())

    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        cfg, store = run.config, run.store()
        span = store.shard_slice(shard)
        if store.shape.k != cfg.sampling.candidates:
            raise StoreError(f"the store holds K={store.shape.k} candidates but sampling.candidates is "
                             f"{cfg.sampling.candidates}; the run's config changed since prepare")
        prepared = store["samples/done"][span]
        if not prepared.all():
            raise StoreError(f"prepare has not finished shard {shard} ({int((~prepared).sum())} samples not "
                             f"prepared); run `python -m hpc.submit prepare` for it first")
        valid = store["samples/valid"][span]
        done = store["candidates/done"][span]
        todo = [span.start + j for j in np.flatnonzero(valid & ~done)]
        counts = dict(done=0, skipped=int((valid & done).sum()), invalid=int((~valid).sum()), candidates=0)
        if not todo:
            log.info("sample shard %d: nothing to do (%d samples already done, %d invalid)", shard,
                     counts["skipped"], counts["invalid"])
            return counts

        k = cfg.sampling.candidates
        pipe = _pipeline(run)
        ids = store["samples/id"][span]
        prompts = store["samples/prompt"][span]
        hold = _Hold(run.dir, shard)
        save_latents = cfg.sampling.save_latents and "candidates/latent" in store
        start = time.time()
        bar = tqdm(total=len(todo) * k, desc=f"sample shard {shard}", unit="cand", file=sys.stderr,
                   mininterval=1 if sys.stderr.isatty() else 10)
        for n in todo:
            j = n - span.start
            seeds = candidate_seeds(cfg.seed, str(ids[j]), k)
            out = generate_candidates(pipe, str(prompts[j]), store["samples/image"][n], store["samples/mask"][n],
                                      seeds, cfg.sampling, on_batch=bar.update)
            store["candidates/image"][n] = out.images
            if save_latents:
                store["candidates/latent"][n] = out.latents
            hold.reached("images")
            store["candidates/seed"][n] = np.asarray(seeds, dtype=np.int64)
            hold.reached("seed")
            store["candidates/done"][n] = True  # last: the sample is complete
            hold.reached("done")
            counts["done"] += 1
            counts["candidates"] += k
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
        for stray in (store.path / "candidates").rglob("*.partial"):
            stray.unlink(missing_ok=True)
        store.consolidate()
        done, total = self.progress(run, variant, opts)
        log.info("sample: %d of %d valid samples have candidates", done, total)
