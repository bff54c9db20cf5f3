"""CLIPScore: 100 * max(cos(image, text), 0) with openai/clip-vit-large-patch14 (transformers CLIPModel).

Also home of the transformers CLIP backbone shared with the aesthetic head and PickScore: tiny and
full-size configurations, loading, and the two feature functions.
"""
from __future__ import annotations

import torch

from .common import EmbeddingReward, ImageTransform, clip_tokenizer_in_code, cosine, init_device, prepare_module, \
    resolve_device, resolve_dtype, seeded

# Architectures of the published checkpoints (for random-weight full-size builds) and their tiny twins.
CLIP_ARCHS = {
    # openai/clip-vit-large-patch14
    "ViT-L/14": dict(projection_dim=768, act="quick_gelu",
                     text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                     vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, image_size=224, patch_size=14)),
    # yuvalkirstain/PickScore_v1 (laion CLIP-ViT-H-14)
    "ViT-H/14": dict(projection_dim=1024, act="gelu",
                     text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
                     vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                 num_attention_heads=16, image_size=224, patch_size=14)),
}
TINY = dict(projection_dim=16, text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
            vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        image_size=32, patch_size=8))


def clip_config(arch: str, tiny: bool):
    from transformers import CLIPConfig

    full = CLIP_ARCHS[arch]
    dims = TINY if tiny else full
    text = dict(dims["text"], vocab_size=49408, max_position_embeddings=77, hidden_act=full["act"],
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(dims["vision"], hidden_act=full["act"])
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=dims["projection_dim"])


def load_clip(arch: str, tiny: bool, pretrained: str | None, tokenizer: str | None, seed: int,
              device: torch.device, dtype: torch.dtype, full_size_random: bool = False):
    """(CLIPModel, tokenizer): published weights from `pretrained`, or random weights (tiny or full size)."""
    from transformers import AutoTokenizer, CLIPModel

    if tiny or full_size_random:
        with seeded(seed), init_device(tiny, device):
            model = CLIPModel(clip_config(arch, tiny=tiny))
        tok = clip_tokenizer_in_code()
    else:
        if not pretrained:
            raise ValueError(f"a {arch} CLIP reward needs `pretrained` (hub id or local folder) unless tiny=True")
        model = CLIPModel.from_pretrained(pretrained, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(tokenizer or pretrained)
    return prepare_module(model, device, dtype), tok


class HFClipReward(EmbeddingReward):
    """A reward on a transformers CLIPModel; subclasses choose the formula."""

    def __init__(self, model, tokenizer, device, dtype, batch_size: int = 64):
        super().__init__(device, dtype, batch_size)
        self.model, self.tokenizer = model, tokenizer
        self.context_length = model.config.text_config.max_position_embeddings
        self.transform = ImageTransform(model.config.vision_config.image_size)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        # Fixed-length padding: a prompt's tokens never depend on the other prompts of the batch.
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.context_length,
                                return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        return self.model.text_projection(pooled)


class CLIPScore(HFClipReward):
    name = "clipscore"

    def formula(self, image_features, text_features):
        return 100.0 * cosine(image_features, text_features).clamp(min=0)


def build(tiny: bool = False, pretrained: str | None = "openai/clip-vit-large-patch14", device: str = "auto",
          dtype: str = "float32", seed: int = 0, batch_size: int = 64, full_size_random: bool = False,
          tokenizer: str | None = None) -> CLIPScore:
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    model, tok = load_clip("ViT-L/14", tiny, pretrained or "openai/clip-vit-large-patch14", tokenizer, seed, dev, dt,
                           full_size_random)
    return CLIPScore(model, tok, dev, dt, batch_size)
