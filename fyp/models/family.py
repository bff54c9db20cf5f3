"""Which model family a config or a built pipeline belongs to, and that family's helper module."""
from __future__ import annotations

from types import ModuleType

from ..config import ConfigError, ModelConfig

KINDS = ("flux-fill", "brushnet")


def module_for(kind: str) -> ModuleType:
    if kind == "flux-fill":
        from . import flux_fill

        return flux_fill
    if kind == "brushnet":
        from . import brushnet_pipeline

        return brushnet_pipeline
    raise ConfigError(f"unknown model.kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def helpers(pipe) -> ModuleType:
    """The helper module (encode_prompt, encode_condition, denoise, ...) of a built pipeline."""
    from .brushnet_pipeline import BrushNetPipe

    return module_for("brushnet" if isinstance(pipe, BrushNetPipe) else "flux-fill")


def build_pipeline(model: ModelConfig, **kwargs):
    return module_for(model.kind).build_pipeline(model, **kwargs)


def latent_shape(model_cfg: ModelConfig, resolution: int) -> tuple[int, int, int]:
    return module_for(model_cfg.kind).latent_shape(model_cfg, resolution)
