"""The prepare stage: resolve the configuration, create the run and its store, fill `samples/*`.

`create_run` runs once, in the submitting process: it loads the preset, builds the reader to learn N,
writes config.yaml and creates every array of the store up front. Then one `PrepareStage` task per
shard reads its samples through the reader and writes image, mask, prompt, id, valid, reason and,
last, done for its slice only (so a killed task leaves its shard not done, and a re-run redoes it).
"""
from __future__ import annotations

import collections
import copy
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import ConfigError, RunConfig, load_preset
from ..hold import HoldPoints, hold_point
from ..run import CONFIG_NAME, Run
from ..stages import Stage
from ..store import STORE_NAME, RunStore, Shape
from .base import Reader
from .registry import build_reader
from .sample import reason_kind

log = logging.getLogger("fyp.data")

CACHE_DIR = "cache"  # <run>/cache: reader caches (the BrushData tar index)
IMAGE_BLOCK = 64  # samples per image/mask write: bounds a task's memory; chunks are per sample


def reader_for(run_dir: Path, cfg: RunConfig) -> Reader:
    return build_reader(cfg.data, cfg.seed, cache_dir=Path(run_dir) / CACHE_DIR)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _latent_shape(cfg: RunConfig) -> tuple[int, int, int]:
    try:
        from ..models.flux_fill import latent_shape
    except ImportError as exc:
        raise ConfigError(f"sampling.save_latents needs fyp.models.flux_fill.latent_shape, which is not "
                          f"available in this installation ({exc}); set sampling.save_latents=false") from None
    return tuple(int(d) for d in latent_shape(cfg.model, cfg.data.resolution))


def create_run(run_dir: Path | str, preset: str, overrides: dict | None = None, samples: int | None = None,
               shards: int | None = None) -> Run:
    """Resolve the preset, learn N from the reader, write config.yaml, create the store; return the Run.

    `samples` / `shards` override data.samples / shards (data.samples = 0 takes every sample the
    reader has). Everything is checked before anything is written.
    """
    run_dir = Path(run_dir)
    extra: dict = {}
    if samples is not None:
        extra["data"] = {"samples": samples}
    if shards is not None:
        extra["shards"] = shards
    cfg = load_preset(preset, _merge(overrides or {}, extra))
    for existing in (run_dir / CONFIG_NAME, run_dir / STORE_NAME):
        if existing.exists():
            raise FileExistsError(f"{run_dir} is already a prepared run ({existing.name} exists); choose a new --run directory")
    if cfg.data.samples < 0:
        raise ConfigError(f"data.samples must be >= 0 (0 = all), got {cfg.data.samples}")
    reader = reader_for(run_dir, cfg)
    available = len(reader)
    n = available if cfg.data.samples == 0 else min(available, cfg.data.samples)
    if n == 0:
        raise ConfigError(f"the {cfg.data.kind} reader has no samples at {cfg.data.path}")
    if cfg.shards > n:
        raise ConfigError(f"shards ({cfg.shards}) is more than the {n} samples; use at most {n} shards")
    latent = _latent_shape(cfg) if cfg.sampling.save_latents else None
    run = Run.create(run_dir, cfg)
    res = cfg.data.resolution
    RunStore.create(run_dir, Shape(n, cfg.sampling.candidates, res, res, cfg.shards), cfg.reward_names,
                    latent_shape=latent)
    log.info("prepared run %s: %d of %d %s samples at %dx%d in %d shards", run_dir, n, available, cfg.data.kind,
             res, res, cfg.shards)
    return run


class PrepareStage(Stage):
    name = "prepare"
    sharded = True

    def pending_shards(self, run: Run, variant: str | None, opts: dict) -> list[int]:
        return run.store(mode="r").pending_shards("samples/done")

    def progress(self, run: Run, variant: str | None, opts: dict) -> tuple[int, int]:
        return run.store(mode="r").done_count("samples/done")

    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        store = run.store()
        span = store.shard_slice(shard)
        count = span.stop - span.start
        if count == 0 or store["samples/done"][span].all():
            return dict(done=0, invalid=0, skipped=count)
        reader = reader_for(run.dir, run.config)
        if len(reader) < span.stop:
            raise RuntimeError(f"the {reader.kind} reader now has {len(reader)} samples but the run was prepared "
                               f"with {store.shape.n}; the data changed since prepare")
        res = store.shape.height
        prompts, ids, reasons = [""] * count, [""] * count, [""] * count
        valid = np.zeros(count, bool)
        kinds: collections.Counter = collections.Counter()
        bar = tqdm(total=count, desc=f"prepare shard {shard}", file=sys.stderr, mininterval=5)
        for block in range(span.start, span.stop, IMAGE_BLOCK):
            stop = min(block + IMAGE_BLOCK, span.stop)
            images = np.zeros((stop - block, res, res, 3), np.uint8)
            masks = np.zeros((stop - block, res, res), np.uint8)
            for index in range(block, stop):
                sample, j = reader[index], index - span.start
                if sample.image.shape != (res, res, 3) or sample.mask.shape != (res, res):
                    raise RuntimeError(f"{reader.kind} reader returned {sample.image.shape} / {sample.mask.shape} "
                                       f"for item {index}, expected {res}x{res}")
                images[index - block], masks[index - block] = sample.image, sample.mask
                prompts[j], ids[j], valid[j], reasons[j] = sample.prompt, sample.id, sample.valid, sample.reason
                if not sample.valid:
                    kinds[reason_kind(sample.reason)] += 1
                    log.info("prepare: sample %d (%s) is invalid: %s", index, sample.id, sample.reason)
                bar.update(1)
            store["samples/image"][block:stop] = images
            store["samples/mask"][block:stop] = masks
        bar.close()
        hold = HoldPoints(run.dir, shard)
        hold.reached("prepare.images")
        # One assignment per 1-D array: the shard's chunk of each is written whole; done goes last.
        store["samples/prompt"][span] = np.array(prompts, dtype=object)
        store["samples/id"][span] = np.array(ids, dtype=object)
        store["samples/reason"][span] = np.array(reasons, dtype=object)
        store["samples/valid"][span] = valid
        store["samples/done"][span] = np.ones(count, bool)
        hold.reached("prepare.done")
        invalid = int(count - valid.sum())
        if invalid:
            log.info("prepare shard %d: %d invalid (%s)", shard, invalid,
                     ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
        return dict(done=count, invalid=invalid, skipped=0)

    def finalize(self, run: Run, variant: str | None, opts: dict) -> None:
        """Summarise validity (counts by reason kind) in the `samples` group's attributes; consolidate."""
        store = run.store()
        valid = store["samples/valid"][:]
        done = store["samples/done"][:]
        reasons = store["samples/reason"][:]
        kinds = collections.Counter(reason_kind(str(r)) for r, ok, d in zip(reasons, valid, done) if d and not ok)
        summary = dict(done=int(done.sum()), valid=int((valid & done).sum()), invalid=int((~valid & done).sum()),
                       invalid_by_kind=dict(sorted(kinds.items())), data_kind=run.config.data.kind)
        store.root.require_group("samples").attrs.update(summary)
        hold_point(run.dir, "prepare.finalize")  # before the finalised marker (hpc.task writes it after this)
        store.consolidate()
        log.info("prepare: %d done, %d valid, %d invalid %s", summary["done"], summary["valid"], summary["invalid"],
                 summary["invalid_by_kind"] or "")
