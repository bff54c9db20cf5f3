"""Name -> reward model factory. Factories are imported lazily so a reward's heavy dependencies load only
when it is used. Every factory has the signature
    build(tiny: bool = False, pretrained: str | None = None, device: str = "auto", dtype: str = "float32",
          seed: int = 0, **options) -> RewardModel
"""
from __future__ import annotations

import importlib

from .base import RewardModel

_FACTORIES = {
    "clipscore": "fyp.rewards.clipscore:build",
    "aesthetic": "fyp.rewards.aesthetic:build",
    "imagereward": "fyp.rewards.imagereward:build",
    "pickscore": "fyp.rewards.pickscore:build",
    "hpsv2": "fyp.rewards.hpsv2:build",
    "vqascore": "fyp.rewards.vqascore:build",
    "unifiedreward": "fyp.rewards.unifiedreward:build",
    "perception": "fyp.rewards.perception:build",
    "hpsv3": "fyp.rewards.hpsv3:build",
    "brightness": "fyp.rewards.brightness:build",
}
PAPER_REWARDS = ("clipscore", "aesthetic", "imagereward", "pickscore", "hpsv2", "vqascore", "unifiedreward",
                 "perception", "hpsv3")


def names() -> list[str]:
    return list(_FACTORIES)


def build(name: str, tiny: bool = False, **spec) -> RewardModel:
    if name not in _FACTORIES:
        raise ValueError(f"unknown reward {name!r}; valid rewards: {', '.join(_FACTORIES)}")
    module, attr = _FACTORIES[name].split(":")
    return getattr(importlib.import_module(module), attr)(tiny=tiny, **spec)
