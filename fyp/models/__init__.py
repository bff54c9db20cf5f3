"""Model builders: the inpainting pipelines the sampler, trainer and evaluator share."""
from .flux_fill import (
    PromptEmbeds,
    build_pipeline,
    build_tiny_components,
    decode_latents,
    denoise,
    encode_condition,
    encode_image_latents,
    encode_prompt,
    initial_noise,
    latent_shape,
    pack_latents,
    resolve_device,
    resolve_dtype,
    unpack_latents,
)

__all__ = [
    "PromptEmbeds", "build_pipeline", "build_tiny_components", "decode_latents", "denoise", "encode_condition",
    "encode_image_latents", "encode_prompt", "initial_noise", "latent_shape", "pack_latents",
    "resolve_device", "resolve_dtype", "unpack_latents",
]
