"""open_clip backbones for the HPSv2 and Perception rewards: tiny configs registered in code, model building,
and the embedding-reward class on an open_clip model."""
from __future__ import annotations

import copy
import logging

import torch

from .common import EmbeddingReward, ImageTransform, prepare_module, seeded


def register_config(name: str, config: dict) -> None:
    """Make `name` an open_clip architecture (idempotent); open_clip.add_model_config only takes files."""
    from open_clip import factory

    factory._MODEL_CONFIGS.setdefault(name, copy.deepcopy(config))


def random_open_clip(name: str, seed: int, device: torch.device | None = None):
    import open_clip

    # open_clip and timm warn on the root logger that no weights were loaded: intended here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with seeded(seed), (device or torch.device("cpu")):
            return open_clip.create_model(name, pretrained=None, device=device or "cpu")
    finally:
        root.setLevel(level)


class OpenClipReward(EmbeddingReward):
    """A reward on an open_clip CLIP model; subclasses choose the formula."""

    def __init__(self, model, tokenizer, transform: ImageTransform, device, dtype, batch_size: int = 64):
        super().__init__(device, dtype, batch_size)
        self.model = prepare_module(model, device, dtype)
        self.tokenizer, self.transform = tokenizer, transform

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))
