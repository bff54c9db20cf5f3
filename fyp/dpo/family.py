"""The trainer's model-family seam: what differs between training FLUX.1 Fill (flow matching) and BrushNet
(DDPM, epsilon target) behind one small interface the trainer and the reference-loss cache call.

    family = training_family(cfg)
    policy, scheduler_config = family.load(cfg, zero_init)       # the module DeepSpeed trains
    family.to_device(device, dtype)                                 # frozen parts (BrushNet: the U-Net)
    lora = family.set_trainable(policy, cfg.train)
    draw = family.draw(rows, epochs, data, seed=..., sampling=..., shared_noise=...)
    pred_w, pred_l, target_w, target_l = family.predict_pair(model, batch, draw, device, dtype)
    family.export(state, config, out_dir, dtype, lora)

FLUX: the transformer is the policy; `predict_pair` noises both sides with the shifted sigma and calls it
once on [w; l]. BrushNet: the branch is the policy (only it is trained), the SD1.5 U-Net is frozen and held
here, not in DeepSpeed; each side has its own masked-image condition (`batch.condition_l`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError, RunConfig, TrainConfig


def training_family(cfg: RunConfig):
    if cfg.model.kind == "brushnet":
        return BrushNetFamily(cfg)
    return FluxFamily(cfg)


class FluxFamily:
    kind = "flux-fill"

    def __init__(self, cfg: RunConfig | None = None, scheduler_config: dict | None = None, guidance_embeds: bool = True):
        self.scheduler_config, self.guidance_embeds = scheduler_config, guidance_embeds

    def load(self, cfg: RunConfig, zero_init: dict | None):
        from .train import load_transformer_and_scheduler

        policy, self.scheduler_config = load_transformer_and_scheduler(cfg, zero_init)
        self.guidance_embeds = bool(policy.config.guidance_embeds)
        return policy, self.scheduler_config

    def to_device(self, device, dtype) -> None:
        pass

    def set_trainable(self, policy, tcfg: TrainConfig):
        from .train import set_trainable

        return set_trainable(policy, tcfg)

    def draw(self, rows, epochs, data, *, seed: int, sampling: str, shared_noise: bool):
        from .flow import draw_pairs

        return draw_pairs(rows, epochs, data.latent_tokens, seed=seed, scheduler_config=self.scheduler_config,
                          sampling=sampling, shared_noise=shared_noise)

    def predict_pair(self, model, batch, draw, device, dtype):
        from .flow import image_ids, noisy_and_target, predict

        x_w, target_w = noisy_and_target(batch.latent_w, draw.noise_w.to(device=device, dtype=dtype), draw.sigma)
        x_l, target_l = noisy_and_target(batch.latent_l, draw.noise_l.to(device=device, dtype=dtype), draw.sigma)
        h, w = batch.latent_hw
        ids = image_ids(h // 2, w // 2, device, dtype)
        condition_l = batch.condition if batch.condition_l is None else batch.condition_l
        pred = predict(model, torch.cat([x_w, x_l]), torch.cat([batch.condition, condition_l]),
                       torch.cat([draw.sigma] * 2), torch.cat([batch.prompt_embeds] * 2),
                       torch.cat([batch.pooled] * 2), ids, guidance_embeds=self.guidance_embeds)
        pred_w, pred_l = pred.chunk(2)
        return pred_w, pred_l, target_w, target_l

    def export(self, state, config, out_dir: Path, dtype, lora):
        from .export import export_transformer

        return export_transformer(state, config, out_dir, dtype, lora)


class BrushNetFamily:
    """DDPM Diffusion-DPO of the BrushNet branch on a frozen SD1.5 U-Net (fyp.dpo.ddpm)."""

    kind = "brushnet"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.unet = None
        self.abar = None
        self.scheduler_config = None

    def load(self, cfg: RunConfig, zero_init: dict | None):
        from ..models import resolve_dtype
        from ..models.brushnet import BrushNetModel
        from ..models.brushnet_pipeline import SD15_SCHEDULER, build_tiny_components, load_brushnet
        from .ddpm import alphas_cumprod
        from .zero3 import WeightSource, build_partitioned

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
        if self.unet is None:  # a second load (the NVMe-offload reference) keeps the U-Net already placed
            self.unet = unet.requires_grad_(False).eval()
        self.scheduler_config = config
        self.abar = alphas_cumprod(config)
        if zero_init is not None:
            branch = build_partitioned(dict(branch.config), WeightSource(branch.state_dict()), zero_init, dtype,
                                       model_class=BrushNetModel)
        return branch, config

    def to_device(self, device, dtype) -> None:
        self.unet.to(device=device) if self.unet.dtype == dtype else self.unet.to(device=device, dtype=dtype)

    def set_trainable(self, policy, tcfg: TrainConfig):
        if tcfg.trainable != "all":
            raise ConfigError(f"BrushNet trains its whole branch (the U-Net stays frozen); train.trainable must be "
                              f"'all', got {tcfg.trainable!r}")
        policy.requires_grad_(True)
        return None

    def draw(self, rows, epochs, data, *, seed: int, sampling: str, shared_noise: bool):
        from .ddpm import draw_pairs

        return draw_pairs(rows, epochs, data.latent_tokens, seed=seed, shared_noise=shared_noise, sampling=sampling)

    def predict_pair(self, model, batch, draw, device, dtype):
        from ..models.brushnet import predict_noise
        from .ddpm import noisy_and_target

        t = draw.t.to(device)
        x_w, target_w = noisy_and_target(batch.latent_w, draw.noise_w.to(device=device, dtype=dtype), t, self.abar)
        x_l, target_l = noisy_and_target(batch.latent_l, draw.noise_l.to(device=device, dtype=dtype), t, self.abar)
        condition_l = batch.condition if batch.condition_l is None else batch.condition_l
        pred = predict_noise(self.unet, model, torch.cat([x_w, x_l]), torch.cat([t, t]),
                             torch.cat([batch.prompt_embeds] * 2), torch.cat([batch.condition, condition_l]))
        pred_w, pred_l = pred.chunk(2)
        return pred_w, pred_l, target_w, target_l

    def export(self, state, config, out_dir: Path, dtype, lora):
        """The branch as the official BrushNetModel.save_pretrained writes it: config.json +
        diffusion_pytorch_model.safetensors (the official pipeline's `BrushNetModel.from_pretrained(folder)`)."""
        from ..models.brushnet import BrushNetModel

        model = BrushNetModel.from_config(config)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
        return out_dir
