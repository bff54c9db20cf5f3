"""Perception Encoder (PE-Core-bigG-14-448, open_clip >= 3, pretrained='meta'): logit_scale.exp() * cos.

open_clip keeps the log of the scale (`model.logit_scale`); the score uses the scale itself, as open_clip's
forward does. Preprocessing (PE's config): 448 px, both sides resized (squash), bilinear, mean = std = 0.5.
"""
from __future__ import annotations

from pathlib import Path

from .common import ImageTransform, cosine, init_device, load_weights, resolve_device, resolve_dtype
from .openclip_base import OpenClipReward, random_open_clip, register_config

ARCH = "PE-Core-bigG-14-448"
TINY_ARCH = "fyp-tiny-PE-Core"
TINY_TIMM = "fyp_tiny_pe_core_patch8_32"
PE_MEAN = PE_STD = (0.5, 0.5, 0.5)
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "timm_model_name": TINY_TIMM, "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": None},
    "text_cfg": {"context_length": 72, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    "custom_text": True,
}


def _register_tiny_timm() -> None:
    """timm's PE-Core ViT (Eva class, the same options as vit_pe_core_gigantic_patch14_448), tiny sizes."""
    from functools import partial

    import timm
    from timm.layers import LayerNorm
    from timm.models import eva, register_model

    if timm.models.is_model(TINY_TIMM):
        return

    def fyp_tiny_pe_core_patch8_32(pretrained: bool = False, **kwargs):
        args = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, global_pool="map",
                    attn_type="rope", class_token=False, use_pre_transformer_norm=True, use_rot_pos_emb=True,
                    ref_feat_shape=(4, 4), rope_grid_indexing="xy", attn_pool_num_heads=2, attn_pool_mlp_ratio=2.0,
                    norm_layer=partial(LayerNorm, eps=1e-5), img_size=32)
        return eva._create_eva(TINY_TIMM, pretrained=False, **dict(args, **kwargs))

    fyp_tiny_pe_core_patch8_32.__module__ = eva.__name__
    register_model(fyp_tiny_pe_core_patch8_32)


class Perception(OpenClipReward):
    name = "perception"

    def formula(self, image_features, text_features):
        return self.model.logit_scale.float().exp() * cosine(image_features, text_features)


def build(tiny: bool = False, pretrained: str | None = ARCH, device: str = "auto", dtype: str = "float32",
          seed: int = 0, batch_size: int = 32, full_size_random: bool = False) -> Perception:
    """`pretrained`: an open_clip PE-Core name, default 'PE-Core-bigG-14-448' (its 'meta' weights, from the hub
    cache), or a checkpoint file for PE-Core-bigG-14-448."""
    import open_clip

    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if tiny:
        _register_tiny_timm()
        register_config(TINY_ARCH, TINY_CONFIG)
        arch = TINY_ARCH
    else:  # another PE-Core size may be named in `pretrained` (e.g. PE-Core-L-14-336)
        arch = pretrained if pretrained in open_clip.list_models() else ARCH
    if tiny or full_size_random:
        model = random_open_clip(arch, seed, init_device(tiny, dev))
    elif pretrained and Path(pretrained).is_file():
        model = random_open_clip(arch, seed)
        model.load_state_dict(load_weights(pretrained))
    else:
        model = open_clip.create_model(arch, pretrained="meta")
    size = model.visual.image_size
    transform = ImageTransform(size[0] if isinstance(size, (tuple, list)) else size, PE_MEAN, PE_STD,
                               resize_mode="squash", interpolation="bilinear")
    return Perception(model, open_clip.get_tokenizer(arch), transform, dev, dt, batch_size)
