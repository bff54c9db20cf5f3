"""HPSv2.1: 100 * cos(image, text) with open_clip ViT-H-14 carrying the HPS_v2.1_compressed.pt state dict.

(The hpsv2 package reports the bare cosine; SPEC section 2 scales it by 100.) Preprocessing: open_clip's
eval transform for ViT-H-14, 224 px, shortest-side bicubic + centre crop, OpenAI mean/std.
"""
from __future__ import annotations

from .common import ImageTransform, cosine, init_device, load_weights, resolve_device, resolve_dtype, resolve_file
from .openclip_base import OpenClipReward, random_open_clip, register_config

ARCH = "ViT-H-14"
WEIGHTS_FILE = "HPS_v2.1_compressed.pt"
TINY_ARCH = "fyp-tiny-ViT-H-14"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


class HPSv2(OpenClipReward):
    name = "hpsv2"

    def formula(self, image_features, text_features):
        return 100.0 * cosine(image_features, text_features)


def build(tiny: bool = False, pretrained: str | None = "xswu/HPSv2", device: str = "auto", dtype: str = "float32",
          seed: int = 0, batch_size: int = 64, full_size_random: bool = False) -> HPSv2:
    import open_clip

    dev, dt = resolve_device(device), resolve_dtype(dtype)
    register_config(TINY_ARCH, TINY_CONFIG)
    arch = TINY_ARCH if tiny else ARCH
    model = random_open_clip(arch, seed, init_device(tiny or not full_size_random, dev))
    if not (tiny or full_size_random):
        model.load_state_dict(load_weights(resolve_file(pretrained or "xswu/HPSv2", WEIGHTS_FILE)))
    size = model.visual.image_size
    transform = ImageTransform(size[0] if isinstance(size, (tuple, list)) else size)
    return HPSv2(model, open_clip.get_tokenizer(arch), transform, dev, dt, batch_size)
