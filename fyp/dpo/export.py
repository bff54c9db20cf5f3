"""Export the aligned transformer as a diffusers model folder (safetensors) that FluxFillPipeline loads.

    <run>/train/<pairs>/transformer/   config.json + diffusion_pytorch_model.safetensors

Load it with `FluxTransformer2DModel.from_pretrained(path)` and hand it to the pipeline
(`build_pipeline(...)` then `pipe.transformer = ...`, or `FluxFillPipeline.from_pretrained(base,
transformer=...)`). Under ZeRO-3 the full weights are gathered to rank 0 first; LoRA adapters are fused
into the base weights, so the export is a plain transformer either way.
"""
from __future__ import annotations

from pathlib import Path

import torch


def gather_state_dict(engine, zero_stage: int) -> dict | None:
    """The full (unsharded) state dict on rank 0 (None elsewhere); collective under ZeRO-3."""
    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()  # gathers every parameter, rank 0 keeps them
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def export_transformer(state: dict, config: dict, out_dir: Path, dtype: torch.dtype, lora: dict | None = None) -> Path:
    """Build a fresh transformer from `config`, load `state` (fusing LoRA if `lora` is its config), save."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_config(config)
    if lora is not None:
        from peft import LoraConfig

        model.add_adapter(LoraConfig(**lora))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"export: state dict does not match the transformer (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    if lora is not None:
        model.fuse_lora(lora_scale=1.0)
        model.unload_lora()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def load_exported(path: Path | str, dtype: torch.dtype | None = None):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(path, torch_dtype=dtype).eval()
