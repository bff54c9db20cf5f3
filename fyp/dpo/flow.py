"""Flow matching for FLUX.1 Fill training: timestep draws, noising, and one transformer call.

SPEC section 4: `x_t = (1 - s) x0 + s eps`, target `eps - x0`, s the shifted sigma of t; t uniform over
the scheduler's training timesteps (option: logit-normal). FLUX.1's scheduler uses dynamic shifting:
the shift depends on the image's token count through `mu = calculate_shift(seq_len)` and
`s = exp(mu) / (exp(mu) + (1 / sigma - 1))` — the same shift the pipeline applies when sampling.
With a static-shift scheduler `s = shift * sigma / (1 + (shift - 1) * sigma)`.

Every random draw is a pure function of (seed, epoch, pair, side), never of a global RNG: a pair's
draw does not depend on the batch it lands in, on the number of processes, or on a resume, and the
reference-loss cache can precompute exactly the draws training will make.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch

from ..config import TimestepSampling

TIMESTEP_SAMPLING = get_args(TimestepSampling)  # the allowed values live in fyp.config


def calculate_shift(seq_len: int, base_seq: int = 256, max_seq: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """FLUX's mu for an image of `seq_len` tokens (diffusers' calculate_shift)."""
    slope = (max_shift - base_shift) / (max_seq - base_seq)
    return seq_len * slope + base_shift - slope * base_seq


def shift_sigmas(sigmas: torch.Tensor, scheduler_config, seq_len: int) -> torch.Tensor:
    """The scheduler's shift of unshifted sigmas in (0, 1], for images of `seq_len` tokens."""
    cfg = dict(scheduler_config)
    if cfg.get("use_dynamic_shifting", False):
        mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    shift = float(cfg.get("shift", 1.0))
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def pair_generator(seed: int, epoch: int, pair: int, side: int) -> torch.Generator:
    """A CPU generator for one pair's draw in one epoch (side 0: t and the winner's noise, 1: the loser's)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(pair), int(side)]).generate_state(2, np.uint64)
    return torch.Generator("cpu").manual_seed(int(state[0] >> np.uint64(1)))


@dataclass
class Draw:
    """Per-pair flow-matching draws of one micro-batch: sigma [B], noise [B, L, C] for each side."""

    sigma: torch.Tensor
    noise_w: torch.Tensor
    noise_l: torch.Tensor


def draw_pairs(pairs: list[int], epochs: list[int], latent_shape: tuple[int, int], *, seed: int,
               scheduler_config, sampling: str = "uniform", shared_noise: bool = True,
               num_train_timesteps: int = 1000) -> Draw:
    """Sigma and noise for each (pair, epoch): the same whatever batch, process or resume asks for them.

    `shared_noise`: DPO / IPO use one eps for winner and loser; CaPO / CaEN draw the loser's separately.
    """
    if sampling not in TIMESTEP_SAMPLING:
        raise ValueError(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}, got {sampling!r}")
    seq_len = latent_shape[0]
    sigmas, noise_w, noise_l = [], [], []
    for pair, epoch in zip(pairs, epochs):
        gen = pair_generator(seed, epoch, pair, 0)
        if sampling == "uniform":
            u = torch.rand((), generator=gen)
        else:  # logit-normal(0, 1), as in SD3 / FLUX training scripts
            u = torch.sigmoid(torch.randn((), generator=gen))
        # A training timestep index in [0, T): sigma = (index + 1) / T, the scheduler's training grid.
        index = torch.clamp((u * num_train_timesteps).long(), max=num_train_timesteps - 1)
        sigmas.append((index.float() + 1) / num_train_timesteps)
        eps_w = torch.randn(latent_shape, generator=gen)
        eps_l = eps_w if shared_noise else torch.randn(latent_shape, generator=pair_generator(seed, epoch, pair, 1))
        noise_w.append(eps_w)
        noise_l.append(eps_l)
    sigma = shift_sigmas(torch.stack(sigmas), scheduler_config, seq_len)
    return Draw(sigma, torch.stack(noise_w), torch.stack(noise_l))


def noisy_and_target(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = (1 - s) x0 + s eps and the velocity target eps - x0 (packed [B, L, C])."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0)
    return (1 - s) * x0 + s * noise, noise - x0


def image_ids(seq_h: int, seq_w: int, device, dtype) -> torch.Tensor:
    """FLUX's positional ids of the packed image tokens [h/2 * w/2, 3] (the pipeline's own layout)."""
    ids = torch.zeros(seq_h, seq_w, 3)
    ids[..., 1] = torch.arange(seq_h)[:, None]
    ids[..., 2] = torch.arange(seq_w)[None, :]
    return ids.reshape(seq_h * seq_w, 3).to(device=device, dtype=dtype)


def predict(transformer, x_t: torch.Tensor, condition: torch.Tensor, sigma: torch.Tensor,
            prompt_embeds: torch.Tensor, pooled: torch.Tensor, img_ids: torch.Tensor,
            guidance: float = 1.0, guidance_embeds: bool = True) -> torch.Tensor:
    """One FLUX Fill transformer call: input cat(x_t, condition) on channels (64 + 320 = 384 for FLUX)."""
    dtype = x_t.dtype
    text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=x_t.device, dtype=dtype)
    guidance_vec = torch.full((x_t.shape[0],), guidance, device=x_t.device, dtype=torch.float32) if guidance_embeds else None
    return transformer(
        hidden_states=torch.cat([x_t, condition.to(dtype)], dim=-1),
        timestep=sigma.to(device=x_t.device, dtype=dtype),  # the pipeline passes t / 1000 = sigma
        guidance=guidance_vec, pooled_projections=pooled.to(dtype), encoder_hidden_states=prompt_embeds.to(dtype),
        txt_ids=text_ids, img_ids=img_ids, return_dict=False,
    )[0]
