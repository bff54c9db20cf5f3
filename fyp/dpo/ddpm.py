"""DDPM (epsilon prediction) for U-Net inpainting models (BrushNet): timestep draws, noising, one step.

SPEC section 4: target eps, t uniform over the integers [0, 1000), `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`
with abar from SD1.5's DDPMScheduler (scaled-linear betas 0.00085 -> 0.012), exactly `DDPMScheduler.add_noise`.

Draws are pure functions of (seed, epoch, pair, side) through `fyp.dpo.flow.pair_generator`, as for FLUX: a
pair's t and noise do not depend on its batch, the number of processes or a resume, so the reference-loss
cache can precompute them. Side 0 draws t and the winner's noise; CaPO / CaEN draw the loser's noise from
side 1, DPO / IPO share the winner's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .flow import pair_generator

NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class DdpmDraw:
    """Per-pair draws of one micro-batch: integer timesteps t [B], noise [B, C, h, w] for each side."""

    t: torch.Tensor
    noise_w: torch.Tensor
    noise_l: torch.Tensor


def draw_pairs(pairs: list[int], epochs: list[int], latent_shape: tuple, *, seed: int, shared_noise: bool = True,
               sampling: str = "uniform", num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> DdpmDraw:
    if sampling != "uniform":
        raise ValueError(f"DDPM training draws t uniformly in [0, {num_train_timesteps}); "
                         f"train.timestep_sampling={sampling!r} is for flow matching")
    ts, noise_w, noise_l = [], [], []
    for pair, epoch in zip(pairs, epochs):
        gen = pair_generator(seed, epoch, pair, 0)
        ts.append(torch.randint(0, num_train_timesteps, (), generator=gen))
        eps_w = torch.randn(tuple(latent_shape), generator=gen)
        eps_l = eps_w if shared_noise else torch.randn(tuple(latent_shape), generator=pair_generator(seed, epoch, pair, 1))
        noise_w.append(eps_w)
        noise_l.append(eps_l)
    return DdpmDraw(torch.stack(ts), torch.stack(noise_w), torch.stack(noise_l))


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """abar_t [T] of the scheduler config (DDPMScheduler's own computation, so any SD-style config works)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(dict(scheduler_config)).alphas_cumprod.float()


def noisy_and_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and the epsilon target."""
    a = abar.to(x0.device)[t.to(x0.device)].view(-1, *([1] * (x0.dim() - 1)))
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype), noise
