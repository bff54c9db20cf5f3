"""Generate the K candidates of one sample: prompt and masked image encoded once, noise per candidate.

Batch-size invariance: each candidate's starting noise comes from its own CPU generator
(`initial_noise`), the transformer runs under `batch_invariant()` and the VAE decodes one image at a
time, so candidate k is bit-identical whether it is generated alone or in a batch of any size.

Thread-count invariance on the CPU: some CPU kernels split their reductions by thread (on the dev box
GroupNorm of the VAE differs between 1 and 4 threads, the tiny transformer between 1 and 3), so a
task given a different number of cores would write different bytes than the run it resumes. On a CPU
device generation runs with a fixed torch thread count: FYP_SAMPLE_CPU_THREADS (default 1).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..config import SamplingConfig
from ..models import helpers


@dataclass
class Candidates:
    images: np.ndarray  # uint8 [K,H,W,3]
    latents: np.ndarray  # float16 [K,C,h,w]: the final denoised latents (transformer space, unpacked)


CPU_THREADS_ENV = "FYP_SAMPLE_CPU_THREADS"


@contextlib.contextmanager
def fixed_cpu_threads(device: torch.device):
    """On a CPU device, run with FYP_SAMPLE_CPU_THREADS (default 1) torch threads; restore after."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get(CPU_THREADS_ENV, "1")))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def generate_candidates(pipe, prompt: str, image: np.ndarray, mask: np.ndarray, seeds: list[int],
                        sampling: SamplingConfig, on_batch: Callable[[int], None] | None = None) -> Candidates:
    """The candidates of one sample, one per seed, in batches of `sampling.batch_size`.

    `image` uint8 [H,W,3], `mask` [H,W] with 1 = hole. `on_batch(n)` is told after every batch of n.
    """
    with fixed_cpu_threads(pipe.transformer.device):
        return _generate(pipe, prompt, image, mask, seeds, sampling, on_batch)


def _generate(pipe, prompt, image, mask, seeds, sampling, on_batch) -> Candidates:
    height, width = image.shape[:2]
    ops = helpers(pipe)  # FLUX.1 Fill or BrushNet: the same steps
    embeds = ops.encode_prompt(pipe, prompt, sampling.max_sequence_length)
    condition = ops.encode_condition(pipe, image, mask)
    images, latents = [], []
    for start in range(0, len(seeds), sampling.batch_size):
        batch_seeds = seeds[start:start + sampling.batch_size]
        noise = ops.initial_noise(pipe, batch_seeds, height, width)
        packed = ops.denoise(pipe, embeds, condition, noise, height=height, width=width, steps=sampling.steps,
                         guidance=sampling.guidance)
        batch_images, batch_latents = ops.decode_latents(pipe, packed, height, width)
        images.append(batch_images)
        latents.append(batch_latents.float().cpu().numpy().astype(np.float16))
        if on_batch is not None:
            on_batch(len(batch_seeds))
    return Candidates(np.concatenate(images), np.concatenate(latents))
