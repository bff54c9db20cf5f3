"""What every reward model offers: score a batch of uint8 images against their prompts."""
from __future__ import annotations

import torch


class RewardModel:
    """`score(images, prompts)`: images uint8 [B,H,W,3] (any device), prompts B strings -> float32 [B] on CPU.

    Higher is better. A score never depends on the other images in the batch. A score that cannot be
    computed (e.g. an unparseable VLM answer) is NaN; `failures` counts them.
    """

    name: str = ""
    accepts_masks: bool = False  # True: the score stage also passes `masks=` (uint8 [B,H,W], 1 = hole)

    def __init__(self) -> None:
        self.failures = 0

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def check_inputs(self, images: torch.Tensor, prompts: list[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{self.name}: images must be uint8 [B,H,W,3], got {images.dtype} {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
