"""Brightness: mean luminance of the hole, 0..1 — a cheap, meaningful reward for the toy experiment.

Luminance is Rec. 709 (0.2126 R + 0.7152 G + 0.0722 B) of the uint8 pixels, divided by 255. With
`masks` (uint8 [B,H,W], 1 = hole) the mean runs over the hole only; without, over the whole image.
A score does not depend on the prompt nor on the other images of the batch. An empty hole scores
the whole image (no NaN: the prepare stage already rejects empty masks).
"""
from __future__ import annotations

import torch

from .base import RewardModel

LUMA = (0.2126, 0.7152, 0.0722)


def hole_luminance(images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """images uint8 [B,H,W,3], masks uint8/bool [B,H,W] or None -> float32 [B] in 0..1."""
    luma = (images.float() * images.new_tensor(LUMA, dtype=torch.float32)).sum(-1) / 255.0  # [B,H,W]
    if masks is None:
        return luma.flatten(1).mean(1)
    if masks.shape != luma.shape:
        raise ValueError(f"brightness: masks must be [B,H,W] = {tuple(luma.shape)}, got {tuple(masks.shape)}")
    hole = (masks.to(luma.device) > 0).float()
    area = hole.flatten(1).sum(1)
    hole_mean = (luma * hole).flatten(1).sum(1) / area.clamp_min(1)
    return torch.where(area > 0, hole_mean, luma.flatten(1).mean(1))


class Brightness(RewardModel):
    name = "brightness"
    accepts_masks = True  # the score stage passes `masks=` to rewards that set this

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.device = device

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str], masks: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(images, prompts)
        if masks is not None and masks.shape[0] != images.shape[0]:
            raise ValueError(f"brightness: {images.shape[0]} images but {masks.shape[0]} masks")
        return hole_luminance(images, masks).float().cpu()


def build(tiny: bool = False, pretrained: str | None = None, device: str = "auto", dtype: str = "float32",
          seed: int = 0, **options) -> Brightness:
    """No weights: `tiny`, `pretrained`, `dtype` and `seed` are accepted for the common signature and unused."""
    if options:
        raise ValueError(f"brightness takes no options; got {', '.join(options)}")
    return Brightness(device="cpu" if device == "auto" else device)
