"""Model builders: the inpainting pipelines the sampler, trainer and evaluator share.

Two families, chosen by `model.kind`: `flux-fill` (fyp.models.flux_fill) and `brushnet`
(fyp.models.brushnet_pipeline, on the branch of fyp.models.brushnet). Both modules offer the same helpers
(encode_prompt, encode_condition, encode_image_latents, initial_noise, denoise, decode_latents, to_tokens);
`helpers(pipe)` gives the module of a built pipeline, `build_pipeline` / `latent_shape` dispatch on the kind.
The names re-exported below are FLUX's (the older callers' API).
"""
from .flux_fill import (
    PromptEmbeds,
    build_tiny_components,
    decode_latents,
    denoise,
    encode_condition,
    encode_image_latents,
    encode_prompt,
    initial_noise,
    pack_latents,
    resolve_device,
    resolve_dtype,
    unpack_latents,
)
from .family import KINDS, build_pipeline, helpers, latent_shape

__all__ = [
    "KINDS", "PromptEmbeds", "build_pipeline", "build_tiny_components", "decode_latents", "denoise",
    "encode_condition", "encode_image_latents", "encode_prompt", "helpers", "initial_noise", "latent_shape",
    "pack_latents", "resolve_device", "resolve_dtype", "unpack_latents",
]
