"""The toy experiment end to end, in one process: prepare, sample, score brightness, pairs, (train), held-out eval.

Used by tests/dpo/test_toy_learns.py and by the training tests for a small real run; every step goes through
the real stages (`fyp.stages.execute_shard`): the pairs are the pairs stage's `single` method on the
brightness reward (winner = brightest hole, loser = darkest), named `brightness`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..run import Run
from ..stages import execute_shard


def make_toy_run(run_dir: Path | str, overrides: dict | None = None, pairs: str = "brightness",
                 preset: str = "toy") -> Run:
    """A prepared, sampled, scored and paired run of the toy preset (or `toy-brushnet`), with `overrides`."""
    from ..data.stage import create_run

    run = create_run(run_dir, preset, overrides)
    for stage, variant in (("prepare", None), ("sample", None), ("score", "brightness")):
        for shard in range(run.config.shards):
            execute_shard(stage, run.dir, shard, variant)
    execute_shard("pairs", run.dir, 0, None, {"method": "single", "reward": "brightness", "name": pairs})
    return run


@torch.no_grad()
def heldout_brightness(run: Run, transformer_path: Path | str | None, samples: int, seed: int = 1234) -> np.ndarray:
    """Hole brightness [samples] of one generation per held-out synthetic sample.

    `transformer_path` None: the initial (reference) transformer; else an exported transformer folder.
    Same held-out samples, prompts and noise seeds for every model, so only the transformer differs.
    """
    from ..data.synthetic import SyntheticReader
    from ..models import build_pipeline, resolve_dtype
    from ..models.family import load_denoiser
    from ..rewards.brightness import hole_luminance
    from ..sampling.generate import generate_candidates

    cfg = run.config
    pipe = build_pipeline(cfg.model, max_sequence_length=cfg.sampling.max_sequence_length,
                          with_transformer=transformer_path is None)
    if transformer_path is not None:
        pipe.transformer = load_denoiser(cfg.model, transformer_path, resolve_dtype(cfg.model.dtype)).to(pipe.vae.device)
    reader = SyntheticReader(cfg.data.resolution, seed=cfg.seed, split="heldout")
    out = []
    for index in range(samples):
        sample = reader[index]
        cands = generate_candidates(pipe, sample.prompt, sample.image, sample.mask, [seed + index], cfg.sampling)
        out.append(float(hole_luminance(torch.from_numpy(cands.images), torch.from_numpy(sample.mask)[None])[0]))
    return np.array(out)
