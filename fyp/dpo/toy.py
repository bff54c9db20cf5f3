"""The toy experiment end to end, in one process: prepare, sample, score brightness, pairs, (train), held-out eval.

Used by tests/test_toy_learns.py and by the training tests for a small real run; every step goes through
the real stages (`fyp.stages.execute_shard`). Where a stage is not installed (a partial checkout) the
fallback is stated: scores are computed with the brightness reward directly, and the single-reward pairs
are argmax / argmin of that score (what the pairs stage's single-reward method computes), written to
`pairs/<name>` in the store's documented layout.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..run import Run
from ..stages import execute_shard

log = logging.getLogger("fyp.dpo")


def _stage_available(name: str) -> bool:
    from ..stages import get_stage

    try:
        get_stage(name)
        return True
    except (ImportError, AttributeError):
        return False


def score_brightness(run: Run) -> None:
    if _stage_available("score"):
        for shard in range(run.config.shards):
            execute_shard("score", run.dir, shard, "brightness")
        return
    from ..rewards.brightness import hole_luminance

    store = run.store()
    images = torch.from_numpy(store["candidates/image"][:])  # [N,K,H,W,3]
    masks = torch.from_numpy(store["samples/mask"][:])
    n, k = images.shape[:2]
    values = hole_luminance(images.flatten(0, 1), masks[:, None].expand(n, k, *masks.shape[1:]).flatten(0, 1))
    store["scores/brightness/value"][:] = values.view(n, k).numpy()
    store["scores/brightness/done"][:] = np.ones(n, bool)


def pairs_by_reward(run: Run, name: str, reward: str = "brightness") -> str:
    """pairs/<name>: winner = best score, loser = worst. Returns the pairs name that was written."""
    if _stage_available("pairs"):
        execute_shard("pairs", run.dir, 0, None, {"method": "single", "reward": reward, "name": name})
        return name
    store = run.store()
    scores = store[f"scores/{reward}/value"][:]
    valid = store["samples/valid"][:] & ~np.isnan(scores).any(1)
    winner = np.where(valid, np.nanargmax(np.nan_to_num(scores, nan=-np.inf), 1), -1).astype(np.int32)
    loser = np.where(valid, np.nanargmin(np.nan_to_num(scores, nan=np.inf), 1), -1).astype(np.int32)
    valid &= winner != loser
    n = len(scores)
    for key, value, dtype, fill in (("winner", winner, "int32", -1), ("loser", loser, "int32", -1),
                                    ("margin", np.full(n, np.nan, np.float32), "float32", float("nan")),
                                    ("valid", valid, "bool", False)):
        store.create_array(f"pairs/{name}/{key}", shape=(n,), chunks=(n,), dtype=dtype, fill_value=fill)[:] = value
    store.root[f"pairs/{name}"].attrs.update(dict(method="single", rewards=[reward], fallback="fyp.dpo.toy"))
    return name


def make_toy_run(run_dir: Path | str, overrides: dict | None = None, pairs: str = "brightness") -> Run:
    """A prepared, sampled, scored and paired run of the toy preset (or another preset's overrides)."""
    from ..data.stage import create_run

    run = create_run(run_dir, "toy", overrides)
    for stage in ("prepare", "sample"):
        for shard in range(run.config.shards):
            execute_shard(stage, run.dir, shard)
    score_brightness(run)
    pairs_by_reward(run, pairs)
    return run


@torch.no_grad()
def heldout_brightness(run: Run, transformer_path: Path | str | None, samples: int, seed: int = 1234) -> np.ndarray:
    """Hole brightness [samples] of one generation per held-out synthetic sample.

    `transformer_path` None: the initial (reference) transformer; else an exported transformer folder.
    Same held-out samples, prompts and noise seeds for every model, so only the transformer differs.
    """
    from ..data.synthetic import SyntheticReader
    from ..models import build_pipeline
    from ..rewards.brightness import hole_luminance
    from ..sampling.generate import generate_candidates
    from .export import load_exported

    cfg = run.config
    pipe = build_pipeline(cfg.model, max_sequence_length=cfg.sampling.max_sequence_length)
    if transformer_path is not None:
        pipe.transformer = load_exported(transformer_path, pipe.transformer.dtype).to(pipe.transformer.device)
    reader = SyntheticReader(cfg.data.resolution, seed=cfg.seed, split="heldout")
    out = []
    for index in range(samples):
        sample = reader[index]
        cands = generate_candidates(pipe, sample.prompt, sample.image, sample.mask, [seed + index], cfg.sampling)
        out.append(float(hole_luminance(torch.from_numpy(cands.images), torch.from_numpy(sample.mask)[None])[0]))
    return np.array(out)
