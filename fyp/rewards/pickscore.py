"""PickScore: logit_scale.exp() * cos(image, text) with yuvalkirstain/PickScore_v1 (CLIP ViT-H/14, transformers),
tokenised by the processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (224 px, shortest-side bicubic + centre crop,
OpenAI mean/std)."""
from __future__ import annotations

from .clipscore import HFClipReward, load_clip
from .common import cosine, resolve_device, resolve_dtype

PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(HFClipReward):
    name = "pickscore"

    def formula(self, image_features, text_features):
        return self.model.logit_scale.float().exp() * cosine(image_features, text_features)


def build(tiny: bool = False, pretrained: str | None = "yuvalkirstain/PickScore_v1", device: str = "auto",
          dtype: str = "float32", seed: int = 0, batch_size: int = 64, processor: str = PROCESSOR,
          full_size_random: bool = False) -> PickScore:
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    model, tok = load_clip("ViT-H/14", tiny, pretrained or "yuvalkirstain/PickScore_v1", processor, seed, dev, dt,
                           full_size_random)
    return PickScore(model, tok, dev, dt, batch_size)
