"""Name -> reward model factory. Factories are imported lazily so a reward's heavy dependencies load only
when it is used. Every factory has the signature
    build(tiny: bool = False, pretrained: str | None = None, device: str = "auto", dtype: str = "float32",
          seed: int = 0, **options) -> RewardModel
Common options of the CLIP/BLIP family: `batch_size` (images per forward; scores do not depend on it) and
`full_size_random=True` (the published architecture with random weights and a tokenizer built in code, for
benchmarks on machines without the weights).
"""
from __future__ import annotations

import importlib
import inspect

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


def check_names(names) -> None:
    """Refuse reward names no factory builds (at prepare, before anything is sampled), listing the known ones."""
    unknown = [name for name in names if name not in _FACTORIES]
    if unknown:
        from ..config import ConfigError

        raise ConfigError(f"unknown reward{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in the "
                          f"config's rewards; known rewards: {', '.join(_FACTORIES)}")


def factory(name: str):
    if name not in _FACTORIES:
        raise ValueError(f"unknown reward {name!r}; valid rewards: {', '.join(_FACTORIES)}")
    module, attr = _FACTORIES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def accepts(name: str, option: str) -> bool:
    """Whether reward `name`'s factory names `option` as a parameter (e.g. batch_size, full_size_random)."""
    return option in inspect.signature(factory(name)).parameters


def build(name: str, tiny: bool = False, **spec) -> RewardModel:
    return factory(name)(tiny=tiny, **spec)
