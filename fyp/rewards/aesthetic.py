"""LAION aesthetic score: a head on L2-normalised CLIP ViT-L/14 image features (the prompt is ignored).

Heads: 'linear' = LAION aesthetic predictor v1 (sa_0_4_vit_l_14_linear.pth, nn.Linear(768, 1): keys weight,
bias); 'mlp' = the improved predictor (sac+logos+ava1-l14-linearMSE.pth, 768-1024-128-64-16-1 with dropout and
no activations: keys layers.{0,2,4,6,7}.{weight,bias}). Score = head output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .clipscore import HFClipReward, load_clip
from .common import load_weights, prepare_module, resolve_device, resolve_dtype, seeded


class AestheticMLP(nn.Module):
    """improved-aesthetic-predictor's MLP (state-dict compatible)."""

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                    nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


def make_head(kind: str, width: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(width, 1)
    if kind == "mlp":
        return AestheticMLP(width)
    raise ValueError(f"aesthetic: unknown head {kind!r}; valid heads: linear, mlp")


class Aesthetic(HFClipReward):
    name = "aesthetic"
    needs_text = False

    def __init__(self, model, tokenizer, head: nn.Module, device, dtype, batch_size: int = 64):
        super().__init__(model, tokenizer, device, dtype, batch_size)
        self.head = head

    def formula(self, image_features, text_features):
        # The head runs in float32: it is tiny, and its inputs are unit vectors.
        return self.head(F.normalize(image_features.float(), dim=-1)).squeeze(-1)


def build(tiny: bool = False, pretrained: str | None = "openai/clip-vit-large-patch14", device: str = "auto",
          dtype: str = "float32", seed: int = 0, batch_size: int = 64, head: str = "linear",
          head_path: str | None = None, full_size_random: bool = False, tokenizer: str | None = None) -> Aesthetic:
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if not (tiny or full_size_random or head_path):
        raise ValueError("aesthetic: set options.head_path to the LAION head file "
                         "(sa_0_4_vit_l_14_linear.pth, or sac+logos+ava1-l14-linearMSE.pth with head: mlp)")
    model, tok = load_clip("ViT-L/14", tiny, pretrained or "openai/clip-vit-large-patch14", tokenizer, seed, dev, dt,
                           full_size_random)
    width = model.config.projection_dim
    with seeded(seed + 1):
        head_module = make_head(head, width)
    if not (tiny or full_size_random):
        head_module.load_state_dict(load_weights(head_path))
    return Aesthetic(model, tok, prepare_module(head_module, dev, torch.float32), dev, dt, batch_size)
