"""Which model family a config or a built pipeline belongs to, and that family's helper module."""
from __future__ import annotations

from types import ModuleType
from typing import get_args

from ..config import ConfigError, ModelConfig, ModelKind

KINDS = get_args(ModelKind)  # the allowed values live in fyp.config


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


def load_denoiser(model_cfg: ModelConfig, path, dtype=None):
    """An exported denoiser folder: FLUX's transformer, or BrushNet's branch (official layout)."""
    if model_cfg.kind == "brushnet":
        from .brushnet import BrushNetModel

        return BrushNetModel.from_pretrained(path, torch_dtype=dtype).eval()
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(path, torch_dtype=dtype).eval()


def denoiser_mismatch(pipe, module) -> str | None:
    """Why `module` cannot be this pipeline's denoiser (another model's export), or None."""
    from .brushnet_pipeline import BrushNetPipe

    if isinstance(pipe, BrushNetPipe):
        from .brushnet import BrushNetModel

        if not isinstance(module, BrushNetModel):
            return f"it is a {type(module).__name__}, not a BrushNet branch"
        have = tuple(module.config.block_out_channels)
        want = tuple(pipe.unet.config.block_out_channels)
        return None if have == want else f"its blocks are {have} wide but this run's U-Net's are {want}"
    from .flux_fill import fill_in_channels

    if getattr(module.config, "in_channels", None) != fill_in_channels(pipe):
        return (f"it has {getattr(module.config, 'in_channels', None)} input channels but this run's model has "
                f"{fill_in_channels(pipe)}")
    return None
