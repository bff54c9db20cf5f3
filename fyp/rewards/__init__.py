"""Reward models: `build(name, tiny=False, **spec).score(images_uint8_BHW3, prompts) -> float32 [B]`."""
from .base import RewardModel
from .registry import PAPER_REWARDS, build, names

__all__ = ["RewardModel", "build", "names", "PAPER_REWARDS"]
