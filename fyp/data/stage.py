"""The prepare stage: resolve the configuration, create the run and its store, fill `samples/*`.

`create_run` runs once, in the submitting process: it loads the preset, builds the reader to learn N,
writes config.yaml and creates every array of the store up front. Then one `PrepareStage` task per
shard reads its samples through the reader and writes image, mask, prompt, id, valid, reason and,
last, done for its slice only (so a killed task leaves its shard not done, and a re-run redoes it).
"""
from __future__ import annotations

import collections
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import ConfigError, RunConfig, differences, load_preset, merge
from ..hold import HoldPoints, hold_point
from ..run import CONFIG_NAME, Run
from ..stages import Stage
from ..store import STORE_NAME, RunStore, Shape
from .base import Reader
from .registry import build_reader
from .sample import reason_kind

log = logging.getLogger("fyp.data")

CACHE_DIR = "cache"  # <run>/cache: reader caches (the BrushData tar index)


def reader_for(run_dir: Path, cfg: RunConfig) -> Reader:
    return build_reader(cfg.data, cfg.seed, cache_dir=Path(run_dir) / CACHE_DIR)


def _latent_shape(cfg: RunConfig) -> tuple[int, int, int]:
    try:
        from ..models.flux_fill import latent_shape
    except ImportError as exc:
        raise ConfigError(f"sampling.save_latents needs fyp.models.flux_fill.latent_shape, which is not "
                          f"available in this installation ({exc}); set sampling.save_latents=false") from None
    return tuple(int(d) for d in latent_shape(cfg.model, cfg.data.resolution))


def resolve_settings(preset: str, overrides: dict | None = None, samples: int | None = None,
                     shards: int | None = None) -> RunConfig:
    """The validated configuration of a preset with `--set` overrides and --samples / --shards on top."""
    extra: dict = {}
    if samples is not None:
        extra["data"] = {"samples": samples}
    if shards is not None:
        extra["shards"] = shards
    return load_preset(preset, merge(overrides or {}, extra))


def check_same_settings(run: Run, preset: str | None, overrides: dict | None = None, samples: int | None = None,
                        shards: int | None = None) -> None:
    """`prepare` again on a prepared run: a no-op with the same settings, refused with others (a run's
    settings are fixed at prepare; silently keeping the old ones would mislabel everything after)."""
    wanted = resolve_settings(preset or run.config.preset, overrides, samples, shards)
    differ = differences(run.config.to_dict(), wanted.to_dict())
    if differ:
        shown = ", ".join(f"{key} (run: {_at(run.config.to_dict(), key)!r}, asked: {_at(wanted.to_dict(), key)!r})"
                          for key in differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise ConfigError(f"{run.dir} was prepared with other settings: {shown}; its settings cannot change: "
                          f"prepare a new --run directory (or drop the options to continue this run)")


def _at(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def create_run(run_dir: Path | str, preset: str, overrides: dict | None = None, samples: int | None = None,
               shards: int | None = None) -> Run:
    """Resolve the preset, learn N from the reader, write config.yaml, create the store; return the Run.

    `samples` / `shards` override data.samples / shards (data.samples = 0 takes every sample the
    reader has). Everything is checked before anything is written.
    """
    run_dir = Path(run_dir)
    cfg = resolve_settings(preset, overrides, samples, shards)
    for existing in (run_dir / CONFIG_NAME, run_dir / STORE_NAME):
        if existing.exists():
            raise FileExistsError(f"{run_dir} is already a prepared run ({existing.name} exists); choose a new --run directory")
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
    creates_run = True

    def create_run(self, run_dir, preset: str, overrides: dict, samples: int | None, shards: int | None,
                   dry_run: bool = False) -> Run:
        if (Path(run_dir) / CONFIG_NAME).exists():  # prepared already: the same settings or a one-line refusal
            run = Run.open(run_dir)
            check_same_settings(run, preset, overrides, samples, shards)
            return run
        if dry_run:
            return Run(Path(run_dir), resolve_settings(preset, overrides, samples, shards))
        return create_run(run_dir, preset, overrides, samples, shards)

    def pending_shards(self, run: Run, variant: str | None, opts: dict) -> list[int]:
        store = run.store(mode="r")
        return store.pending_shards(store.samples.done)

    def progress(self, run: Run, variant: str | None, opts: dict) -> tuple[int, int]:
        store = run.store(mode="r")
        return store.done_count(store.samples.done)

    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        store = run.store()
        samples = store.samples
        span = store.shard_slice(shard)
        count = span.stop - span.start
        done = samples.done[span] if count else np.ones(0, bool)
        if count == 0 or done.all():
            return dict(done=0, invalid=0, skipped=count)
        reader = reader_for(run.dir, run.config)
        if len(reader) < span.stop:
            raise RuntimeError(f"the {reader.kind} reader now has {len(reader)} samples but the run was prepared "
                               f"with {store.shape.n}; the data changed since prepare")
        res = store.shape.height
        kinds: collections.Counter = collections.Counter()
        counts = dict(done=0, invalid=0, skipped=0)
        bar = tqdm(total=count, desc=f"prepare shard {shard}", file=sys.stderr, mininterval=5)
        hold = HoldPoints(run.dir, shard)
        for block in store.blocks(span):
            size = block.stop - block.start
            if done[block.start - span.start:block.stop - span.start].all():  # a block is done whole or not at all
                counts["skipped"] += size
                bar.update(size)
                continue
            images = np.zeros((size, res, res, 3), np.uint8)
            masks = np.zeros((size, res, res), np.uint8)
            prompts, ids, reasons = [""] * size, [""] * size, [""] * size
            valid = np.zeros(size, bool)
            for j, index in enumerate(range(block.start, block.stop)):
                sample = reader[index]
                if sample.image.shape != (res, res, 3) or sample.mask.shape != (res, res):
                    raise RuntimeError(f"{reader.kind} reader returned {sample.image.shape} / {sample.mask.shape} "
                                       f"for item {index}, expected {res}x{res}")
                images[j], masks[j] = sample.image, sample.mask
                prompts[j], ids[j], valid[j], reasons[j] = sample.prompt, sample.id, sample.valid, sample.reason
                if not sample.valid:
                    kinds[reason_kind(sample.reason)] += 1
                    log.info("prepare: sample %d (%s) is invalid: %s", index, sample.id, sample.reason)
                bar.update(1)
            # One write per array and block (each block is one file); done goes last.
            samples.image[block] = images
            samples.mask[block] = masks
            hold.reached("prepare.images")
            samples.prompt[block] = np.array(prompts, dtype=object)
            samples.id[block] = np.array(ids, dtype=object)
            samples.reason[block] = np.array(reasons, dtype=object)
            samples.valid[block] = valid
            samples.done[block] = np.ones(size, bool)
            hold.reached("prepare.done")
            counts["done"] += size
            counts["invalid"] += int(size - valid.sum())
        bar.close()
        if counts["invalid"]:
            log.info("prepare shard %d: %d invalid (%s)", shard, counts["invalid"],
                     ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
        return counts

    def finalize(self, run: Run, variant: str | None, opts: dict) -> None:
        """Summarise validity (counts by reason kind) in the `samples` group's attributes; consolidate."""
        store = run.store()
        samples = store.samples
        valid, done, reasons = samples.valid[:], samples.done[:], samples.reason[:]
        kinds = collections.Counter(reason_kind(str(r)) for r, ok, d in zip(reasons, valid, done) if d and not ok)
        summary = dict(done=int(done.sum()), valid=int((valid & done).sum()), invalid=int((~valid & done).sum()),
                       invalid_by_kind=dict(sorted(kinds.items())), data_kind=run.config.data.kind)
        samples.update_attrs(**summary)
        hold_point(run.dir, "prepare.finalize")  # before the finalised marker (hpc.task writes it after this)
        store.consolidate()
        log.info("prepare: %d done, %d valid, %d invalid %s", summary["done"], summary["valid"], summary["invalid"],
                 summary["invalid_by_kind"] or "")
