"""DDPM (epsilon prediction) for U-Net inpainting models (BrushNet): timestep draws, noising, one step.

SPEC section 4: target eps, t uniform over the integers [0, 1000), `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`
with abar from SD1.5's DDPMScheduler (scaled-linear betas 0.00085 -> 0.012), exactly `DDPMScheduler.add_noise`.

Draws are pure functions of (seed, epoch, pair, side) through `fyp.dpo.flow.pair_generator`, as for FLUX: a
pair's t and noise do not depend on its batch, the number of processes or a resume, so the reference-loss
cache can precompute them. Side 0 draws t and the winner's noise; CaPO / CaEN draw the loser's noise from
side 1, DPO / IPO share the winner's.

`BrushNet` is the trainer's model-family seam for BrushNet (see `fyp.dpo.family`), as `fyp.dpo.flow.FluxFill`
is FLUX's: the policy is the BrushNet branch alone (the only trainable module, the one DeepSpeed wraps); the
SD1.5 U-Net is frozen and held by the family on the device, outside DeepSpeed; the latent cache conditions
winner and loser each on its own masked image (`condition`, `condition_l`); the export is the official
folder layout. `DdpmEpsilon` is its objective: DDPM noising, epsilon target, U-Net + branch forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


# -- the model-family seam for BrushNet (fyp.dpo.family) --------------------------------------------------
@dataclass
class Noised:
    """One micro-batch made ready for the model: winner and loser as one batch of 2B, and the targets."""

    inputs: tuple  # x_t (2B), t (2B), prompt embeddings (2B), conditions [winner's; loser's]: `predict_noise`'s
    target_w: torch.Tensor
    target_l: torch.Tensor
    draw: DdpmDraw


class DdpmEpsilon:
    """The step's objective for BrushNet: draws, x_t and the epsilon target, the frozen U-Net + branch call."""

    def __init__(self, tcfg, unet, abar: torch.Tensor, latent_shape: tuple, *, shared_noise: bool, device, dtype):
        from ..config import ConfigError

        if tcfg.timestep_sampling != "uniform":
            raise ConfigError(f"BrushNet (DDPM) training draws t uniformly in [0, {NUM_TRAIN_TIMESTEPS}); "
                              f"train.timestep_sampling={tcfg.timestep_sampling!r} is for flow matching")
        self.unet, self.abar, self.latent_shape = unet, abar.to(device), tuple(latent_shape)
        self.seed, self.shared_noise = tcfg.seed, shared_noise
        self.device, self.dtype = device, dtype

    def key(self) -> dict:
        """What the draws depend on (the reference-loss cache is valid for these settings only)."""
        return dict(seed=int(self.seed), sampling="uniform", objective="ddpm", shared_noise=bool(self.shared_noise))

    def noised(self, batch, pairs: list[int], epochs: list[int]) -> Noised:
        draw = draw_pairs(pairs, epochs, self.latent_shape, seed=self.seed, shared_noise=self.shared_noise)
        noise = dict(device=self.device, dtype=self.dtype)
        t = draw.t.to(self.device)
        x_w, target_w = noisy_and_target(batch.latent_w, draw.noise_w.to(**noise), t, self.abar)
        x_l, target_l = noisy_and_target(batch.latent_l, draw.noise_l.to(**noise), t, self.abar)
        condition_l = batch.condition if batch.condition_l is None else batch.condition_l
        inputs = (torch.cat([x_w, x_l]), torch.cat([t, t]), torch.cat([batch.prompt_embeds] * 2),
                  torch.cat([batch.condition, condition_l]))
        return Noised(inputs, target_w, target_l, draw)

    def predict(self, model, noised: Noised) -> tuple[torch.Tensor, torch.Tensor]:
        """(winner, loser) predictions of the U-Net with `model`'s branch (the policy engine or the reference)."""
        from ..models.brushnet import predict_noise

        pred_w, pred_l = predict_noise(self.unet, model, *noised.inputs).chunk(2)
        return pred_w, pred_l


class BrushNet:
    """BrushNet as the trainer's model family: per-side latent cache, branch (frozen U-Net), DDPM objective."""

    kind = "brushnet"

    def __init__(self, cfg):
        self.cfg = cfg  # the RunConfig
        self.unet = None  # the frozen SD1.5 U-Net, loaded with the branch

    def encode_pairs(self, store, name: str, *, device, rank: int, world: int, comm) -> None:
        """Encode the pairs with the frozen VAE and text encoder; each side with its own masked image."""
        from ..models import build_pipeline
        from .data import build_cache

        cfg = self.cfg
        pipe = build_pipeline(cfg.model, device=device, max_sequence_length=cfg.sampling.max_sequence_length,
                              with_transformer=False)
        build_cache(store, pipe, name, cfg.sampling.max_sequence_length, rank=rank, world=world, comm=comm,
                    chunk=cfg.train.encode_batch, progress=True, mask_downsample=cfg.train.mask_downsample,
                    condition_per_side=True)

    def open_pairs(self, store, name: str):
        from .data import PairData

        return PairData(store, name)

    def load_model(self, zero_init: dict | None = None):
        """The initial branch (from model.brushnet, else initialised from the U-Net as the paper does; the tiny
        one drawn from model.seed) and the DDPM scheduler config; the frozen U-Net stays in `self.unet`."""
        from ..models import resolve_dtype
        from ..models.brushnet import BrushNetModel
        from ..models.brushnet_pipeline import SD15_SCHEDULER, build_tiny_components, load_brushnet
        from .zero3 import WeightSource, build_partitioned

        cfg = self.cfg
        dtype = resolve_dtype(cfg.model.dtype)
        if cfg.model.tiny:
            parts = build_tiny_components(cfg.model.seed)
            unet, branch, config = parts["unet"], parts["brushnet"], dict(SD15_SCHEDULER)
        else:
            from diffusers import DDPMScheduler, UNet2DConditionModel

            from ..models.brushnet import brushnet_from_unet

            unet = UNet2DConditionModel.from_pretrained(cfg.model.pretrained, subfolder="unet", torch_dtype=dtype)
            config = dict(DDPMScheduler.load_config(cfg.model.pretrained, subfolder="scheduler"))
            branch = load_brushnet(cfg.model.brushnet) if cfg.model.brushnet else brushnet_from_unet(unet)
        if self.unet is None:  # a second load (the NVMe-offload reference) keeps the U-Net already loaded
            self.unet = unet.requires_grad_(False).eval()
        if zero_init is not None:
            branch = build_partitioned(dict(branch.config), WeightSource(branch.state_dict()), zero_init, dtype,
                                       model_class=BrushNetModel)
        return branch, config

    def set_trainable(self, policy, tcfg) -> None:
        """The whole branch trains (the U-Net is frozen): train.trainable must be "all"."""
        from ..config import ConfigError

        if tcfg.trainable != "all":
            raise ConfigError(f"BrushNet trains its whole branch (the U-Net stays frozen); train.trainable must be "
                              f"'all', got {tcfg.trainable!r}")
        policy.requires_grad_(True)
        return None

    def objective(self, model, scheduler_config: dict, data, *, shared_noise: bool, device, dtype) -> DdpmEpsilon:
        if self.unet is None:
            raise RuntimeError("BrushNet.objective: load_model first (it loads the frozen U-Net)")
        if self.unet.device != torch.device(device) or self.unet.dtype != dtype:
            self.unet.to(device=device, dtype=dtype)
        return DdpmEpsilon(self.cfg.train, self.unet, alphas_cumprod(scheduler_config), data.latent_tokens,
                           shared_noise=shared_noise, device=device, dtype=dtype)

    def export(self, state: dict, config: dict, out_dir: Path, dtype: torch.dtype, lora: dict | None = None) -> Path:
        """The branch as the official BrushNetModel.save_pretrained writes it: config.json +
        diffusion_pytorch_model.safetensors (the official pipeline's `BrushNetModel.from_pretrained(folder)`)."""
        from ..models.brushnet import BrushNetModel

        model = BrushNetModel.from_config(config)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
        return out_dir
