"""Flow matching for FLUX.1 Fill training: timestep draws, noising, and one transformer call.

SPEC section 4: `x_t = (1 - s) x0 + s eps`, target `eps - x0`, s the shifted sigma of t; t uniform over
the scheduler's training timesteps (option: logit-normal). FLUX.1's scheduler uses dynamic shifting:
the shift depends on the image's token count through `mu = calculate_shift(seq_len)` and
`s = exp(mu) / (exp(mu) + (1 / sigma - 1))` — the same shift the pipeline applies when sampling.
With a static-shift scheduler `s = shift * sigma / (1 + (shift - 1) * sigma)`. `train.timestep_shift:
none` leaves sigma on the unshifted grid {1..1000}/1000, as the official FluxFill DPO code draws it
(mean 0.50 instead of 0.61 at 512 px).

`FluxFill` is the trainer's model-family seam for FLUX.1 Fill (see `fyp.dpo.family`): it loads the
transformer, encodes the pairs into the latent cache, and turns a batch of pairs into the noisy
inputs, the targets and the predictions of one step.

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

from ..config import TimestepSampling, TimestepShift

TIMESTEP_SAMPLING = get_args(TimestepSampling)  # the allowed values live in fyp.config
TIMESTEP_SHIFT = get_args(TimestepShift)  # none: the official code's unshifted grid; flux: the scheduler's shift
NUM_TRAIN_TIMESTEPS = 1000


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


def grid_sigma(u: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """u in [0, 1) -> the unshifted training sigma (index + 1) / T, index = floor(u * T) in [0, T)."""
    index = torch.clamp((u * num_train_timesteps).long(), max=num_train_timesteps - 1)
    return (index.float() + 1) / num_train_timesteps


def draw_pairs(pairs: list[int], epochs: list[int], latent_shape: tuple[int, int], *, seed: int,
               scheduler_config, sampling: str = "uniform", shared_noise: bool = True, shift: str = "flux",
               num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Draw:
    """Sigma and noise for each (pair, epoch): the same whatever batch, process or resume asks for them.

    `shared_noise`: DPO / IPO use one eps for winner and loser; CaPO / CaEN draw the loser's separately.
    `shift`: "flux" shifts sigma as the scheduler does; "none" keeps the grid value.
    """
    if sampling not in TIMESTEP_SAMPLING:
        raise ValueError(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}, got {sampling!r}")
    if shift not in TIMESTEP_SHIFT:
        raise ValueError(f"timestep_shift must be one of {', '.join(TIMESTEP_SHIFT)}, got {shift!r}")
    seq_len = latent_shape[0]
    sigmas, noise_w, noise_l = [], [], []
    for pair, epoch in zip(pairs, epochs):
        gen = pair_generator(seed, epoch, pair, 0)
        if sampling == "uniform":
            u = torch.rand((), generator=gen)
        else:  # logit-normal(0, 1), as in SD3 / FLUX training scripts
            u = torch.sigmoid(torch.randn((), generator=gen))
        sigmas.append(grid_sigma(u, num_train_timesteps))  # the scheduler's training grid
        eps_w = torch.randn(latent_shape, generator=gen)
        eps_l = eps_w if shared_noise else torch.randn(latent_shape, generator=pair_generator(seed, epoch, pair, 1))
        noise_w.append(eps_w)
        noise_l.append(eps_l)
    sigma = torch.stack(sigmas)
    if shift == "flux":
        sigma = shift_sigmas(sigma, scheduler_config, seq_len)
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


# -- the model-family seam for FLUX.1 Fill (fyp.dpo.family) ----------------------------------------------
@dataclass
class Noised:
    """One micro-batch made ready for the model: winner and loser as one batch of 2B, and the targets."""

    inputs: tuple  # x_t (2B), condition, sigma, prompt embeddings, pooled, image ids: `predict`'s arguments
    target_w: torch.Tensor
    target_l: torch.Tensor


class FlowMatching:
    """The step's objective for FLUX.1 Fill: draws, x_t and the velocity target, the transformer call."""

    def __init__(self, tcfg, scheduler_config: dict, latent_hw: tuple[int, int], latent_tokens: tuple[int, int],
                 *, shared_noise: bool, guidance_embeds: bool, device, dtype):
        self.scheduler_config, self.latent_tokens = scheduler_config, latent_tokens
        self.seed, self.sampling, self.shift = tcfg.seed, tcfg.timestep_sampling, tcfg.timestep_shift
        self.shared_noise, self.guidance_embeds = shared_noise, guidance_embeds
        self.device, self.dtype = device, dtype
        self.ids = image_ids(latent_hw[0] // 2, latent_hw[1] // 2, device, dtype)

    def key(self) -> dict:
        """What the draws depend on (the reference-loss cache is valid for these settings only)."""
        return dict(seed=int(self.seed), sampling=self.sampling, shift=self.shift,
                    shared_noise=bool(self.shared_noise))

    def noised(self, batch, pairs: list[int], epochs: list[int]) -> Noised:
        draw = draw_pairs(pairs, epochs, self.latent_tokens, seed=self.seed, scheduler_config=self.scheduler_config,
                          sampling=self.sampling, shared_noise=self.shared_noise, shift=self.shift)
        noise = dict(device=self.device, dtype=self.dtype)
        x_w, target_w = noisy_and_target(batch.latent_w, draw.noise_w.to(**noise), draw.sigma)
        x_l, target_l = noisy_and_target(batch.latent_l, draw.noise_l.to(**noise), draw.sigma)
        inputs = (torch.cat([x_w, x_l]), torch.cat([batch.condition] * 2), torch.cat([draw.sigma] * 2),
                  torch.cat([batch.prompt_embeds] * 2), torch.cat([batch.pooled] * 2), self.ids)
        return Noised(inputs, target_w, target_l)

    def predict(self, model, noised: Noised) -> tuple[torch.Tensor, torch.Tensor]:
        """(winner, loser) predictions of `model` (the policy engine or the frozen reference)."""
        pred_w, pred_l = predict(model, *noised.inputs, guidance_embeds=self.guidance_embeds).chunk(2)
        return pred_w, pred_l


class FluxFill:
    """FLUX.1 Fill as the trainer's model family: latent cache, transformer, flow-matching objective."""

    kind = "flux-fill"

    def __init__(self, cfg):
        self.cfg = cfg  # the RunConfig

    def encode_pairs(self, store, name: str, *, device, rank: int, world: int, comm) -> None:
        """Encode the pairs into the latent cache with the frozen VAE and text encoders (no transformer)."""
        from ..models import build_pipeline
        from .data import build_cache

        cfg = self.cfg
        pipe = build_pipeline(cfg.model, device=device, max_sequence_length=cfg.sampling.max_sequence_length,
                              with_transformer=False)
        build_cache(store, pipe, name, cfg.sampling.max_sequence_length, rank=rank, world=world, comm=comm,
                    chunk=cfg.train.encode_batch, progress=True, mask_downsample=cfg.train.mask_downsample)

    def open_pairs(self, store, name: str):
        from .data import PairData

        return PairData(store, name)

    def load_model(self, zero_init: dict | None = None):
        """The initial transformer (the policy's and the reference's weights) and the scheduler config.

        `zero_init` None: the whole model on this process (the caller moves it to its device and dtype).
        `zero_init` a DeepSpeed ZeRO-3 config: built under `deepspeed.zero.Init`, partitioned over the ranks
        from the start, in the config's precision (bf16 when enabled, else fp32), with the same weights
        (see fyp.dpo.zero3). The tiny model's weights are drawn on the CPU from model.seed either way.
        """
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

        from ..models import resolve_dtype
        from .zero3 import WeightSource, build_partitioned, transformer_folder

        cfg = self.cfg
        dtype = resolve_dtype(cfg.model.dtype)
        if cfg.model.tiny:
            from ..models import build_tiny_components

            parts = build_tiny_components(cfg.model.seed, cfg.sampling.max_sequence_length)
            transformer, scheduler_config = parts["transformer"], dict(parts["scheduler"].config)
            if zero_init is not None:
                transformer = build_partitioned(dict(transformer.config), WeightSource(transformer.state_dict()),
                                                zero_init, dtype)
            return transformer, scheduler_config
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(cfg.model.pretrained, subfolder="scheduler")
        if zero_init is None:
            transformer = FluxTransformer2DModel.from_pretrained(cfg.model.pretrained, subfolder="transformer",
                                                                 torch_dtype=dtype)
        else:
            folder = transformer_folder(cfg.model.pretrained)
            transformer = build_partitioned(FluxTransformer2DModel.load_config(folder),
                                            WeightSource.from_folder(folder), zero_init, dtype)
        return transformer, dict(scheduler.config)

    def set_trainable(self, policy, tcfg) -> dict | None:
        from .train import set_trainable

        return set_trainable(policy, tcfg)

    def export(self, state: dict, config: dict, out_dir, dtype, lora: dict | None = None):
        from .export import export_transformer

        return export_transformer(state, config, out_dir, dtype, lora)

    def objective(self, model, scheduler_config: dict, data, *, shared_noise: bool, device, dtype) -> FlowMatching:
        return FlowMatching(self.cfg.train, scheduler_config, data.latent_hw, data.latent_tokens,
                            shared_noise=shared_noise, guidance_embeds=bool(model.config.guidance_embeds),
                            device=device, dtype=dtype)
