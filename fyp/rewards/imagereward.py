"""ImageReward (THUDM): BLIP ViT-L/16 image encoder, a BERT-base text encoder with cross-attention to the image
tokens in every layer, and an MLP on the [CLS] output. Score = (raw - 0.16717362830052426) / 1.0333394966054072.

Written natively (the `image-reward` package pins timm 0.6 and transformers 4). Module and parameter names
mirror the package, so the published ImageReward.pt state dict loads as is:
    blip.visual_encoder.{cls_token,pos_embed,patch_embed.proj,blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2},norm}
    blip.text_encoder.embeddings.{word_embeddings,position_embeddings,LayerNorm}
    blip.text_encoder.encoder.layer.N.{attention,crossattention}.{self.{query,key,value},output.{dense,LayerNorm}}
    blip.text_encoder.encoder.layer.N.{intermediate.dense,output.dense,output.LayerNorm}
    mlp.layers.{0,2,4,6,7}
Text: bert-base-uncased + [DEC] + [ENC] (vocab 30524), padded/truncated to 35 tokens; image: 224 px, shortest-side
bicubic + centre crop, OpenAI mean/std.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import RewardModel
from .common import (ImageTransform, init_device, load_weights, prepare_module, resolve_device, resolve_dtype,
                     resolve_file, seeded)

MEAN, STD = 0.16717362830052426, 1.0333394966054072
MAX_TEXT_LENGTH = 35
# Keys of the published checkpoint that the score does not use (BLIP pre-training projections, buffers).
IGNORED_KEYS = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


@dataclass(frozen=True)
class ImageRewardConfig:
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    vocab_size: int = 30524
    max_positions: int = 512

    def med_config(self) -> dict:
        """BLIP's med_config.json for these sizes (what the package's BertConfig reads)."""
        return dict(architectures=["BertModel"], attention_probs_dropout_prob=0.1, hidden_act="gelu",
                    hidden_dropout_prob=0.1, hidden_size=self.text_width, initializer_range=0.02,
                    intermediate_size=self.text_intermediate, layer_norm_eps=1e-12,
                    max_position_embeddings=self.max_positions, model_type="bert",
                    num_attention_heads=self.text_heads, num_hidden_layers=self.text_layers, pad_token_id=0,
                    type_vocab_size=2, vocab_size=self.vocab_size, encoder_width=self.vision_width,
                    add_cross_attention=True)


TINY = ImageRewardConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                         text_width=32, text_layers=2, text_heads=2, text_intermediate=64, max_positions=64)


# -- BLIP vision transformer ---------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.vision_width, cfg.patch_size, cfg.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class VisionMlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), VisionAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), VisionMlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, cfg.vision_width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(VisionBlock(cfg.vision_width, cfg.vision_heads) for _ in range(cfg.vision_layers))
        self.norm = nn.LayerNorm(cfg.vision_width, eps=1e-6)

    def forward(self, pixels):
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed[:, :x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# -- BLIP's BERT with cross-attention ------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.text_width, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.text_width)
        self.LayerNorm = nn.LayerNorm(cfg.text_width, eps=1e-12)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions)[None])


class BertSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def forward(self, x, context, mask):
        b, n, c = x.shape

        def split(t):
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, c)


class BertSelfOutput(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(width, width), nn.LayerNorm(width, eps=1e-12)

    def forward(self, hidden, residual):
        return self.LayerNorm(self.dense(hidden) + residual)


class BertAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.self = BertSelfAttention(width, heads, kv_width)
        self.output = BertSelfOutput(width)

    def forward(self, x, context, mask):
        return self.output(self.self(x, context, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.text_width, cfg.text_intermediate)

    def forward(self, x):
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.text_intermediate, cfg.text_width)
        self.LayerNorm = nn.LayerNorm(cfg.text_width, eps=1e-12)

    def forward(self, hidden, residual):
        return self.LayerNorm(self.dense(hidden) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.attention = BertAttention(cfg.text_width, cfg.text_heads, cfg.text_width)
        self.crossattention = BertAttention(cfg.text_width, cfg.text_heads, cfg.vision_width)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x, text_mask, image_tokens):
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image_tokens, None)  # every image token is attended (the package's all-ones mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.text_layers))

    def forward(self, x, text_mask, image_tokens):
        for layer in self.layer:
            x = layer(x, text_mask, image_tokens)
        return x


class BertModel(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids, attention_mask, image_tokens):
        mask = attention_mask[:, None, None, :].bool()  # [B,1,1,T]: keys that are real tokens
        return self.encoder(self.embeddings(input_ids), mask, image_tokens)


class Blip(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.visual_encoder = VisionTransformer(cfg)
        self.text_encoder = BertModel(cfg)


class RewardMLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
        for name, param in self.layers.named_parameters():  # the package's init (used by tiny random weights)
            if "weight" in name:
                nn.init.normal_(param, mean=0.0, std=1.0 / (width + 1))
            else:
                nn.init.zeros_(param)

    def forward(self, x):
        return self.layers(x)


class ImageRewardModel(nn.Module):
    def __init__(self, cfg: ImageRewardConfig):
        super().__init__()
        self.cfg = cfg
        self.blip = Blip(cfg)
        self.mlp = RewardMLP(cfg.text_width)

    def raw(self, pixels, input_ids, attention_mask):
        """The MLP's output before normalisation, [B]."""
        image_tokens = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(input_ids, attention_mask, image_tokens)
        return self.mlp(text[:, 0].float()).squeeze(-1)

    def forward(self, pixels, input_ids, attention_mask):
        return (self.raw(pixels, input_ids, attention_mask) - MEAN) / STD

    def load_published(self, state: dict[str, torch.Tensor]) -> None:
        """Load ImageReward.pt's state dict; every parameter must be present, only known extras may be left over."""
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_KEYS)}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"imagereward: checkpoint does not match the architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")


# -- tokenizer -----------------------------------------------------------------------------------------------
_TINY_WORDS = ("a photo of the and in on with red blue green cat dog car house tree sky person woman man "
               "table chair flower garden road water beautiful old new big small").split()


def tiny_bert_vocab() -> list[str]:
    """A small WordPiece vocabulary (tiny models): specials, characters, continuation pieces, a few words."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars[:36]] + _TINY_WORDS


def blip_tokenizer(source: str | None):
    """bert-base-uncased plus BLIP's [DEC] / [ENC] tokens (ids 30522, 30523); `None` builds the tiny vocabulary."""
    from transformers import BertTokenizer

    if source is None:
        vocab = {tok: i for i, tok in enumerate(tiny_bert_vocab())}
        tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    else:
        tok = BertTokenizer.from_pretrained(source)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageReward(RewardModel):
    name = "imagereward"

    def __init__(self, model: ImageRewardModel, tokenizer, device, dtype, batch_size: int = 64):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.device, self.dtype, self.batch_size = device, dtype, int(batch_size)
        self.transform = ImageTransform(model.cfg.image_size)

    def tokenize(self, prompts: list[str]):
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_LENGTH,
                                return_tensors="pt")
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check_inputs(images, prompts)
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            pixels = self.transform(images[start:start + self.batch_size], self.device, self.dtype)
            ids, mask = self.tokenize(prompts[start:start + self.batch_size])
            out.append(self.model(pixels, ids, mask).float())
        return torch.cat(out).cpu()


def build(tiny: bool = False, pretrained: str | None = "THUDM/ImageReward", device: str = "auto",
          dtype: str = "float32", seed: int = 0, batch_size: int = 64, tokenizer: str = "bert-base-uncased",
          full_size_random: bool = False) -> ImageReward:
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if tiny or full_size_random:
        tok = blip_tokenizer(None)
        cfg = ImageRewardConfig(**{**TINY.__dict__, "vocab_size": len(tok)}) if tiny else ImageRewardConfig()
        with seeded(seed), init_device(tiny, dev):
            model = ImageRewardModel(cfg)
    else:
        pretrained = pretrained or "THUDM/ImageReward"
        med = json.loads(resolve_file(pretrained, "med_config.json").read_text())
        cfg = ImageRewardConfig(text_width=med["hidden_size"], text_layers=med["num_hidden_layers"],
                                text_heads=med["num_attention_heads"], text_intermediate=med["intermediate_size"],
                                vocab_size=med["vocab_size"], max_positions=med["max_position_embeddings"])
        with torch.device("meta"):
            model = ImageRewardModel(cfg)
        model = model.to_empty(device="cpu")
        model.load_published(load_weights(resolve_file(pretrained, "ImageReward.pt")))
        tok = blip_tokenizer(tokenizer)
    model = prepare_module(model, dev, dt)
    model.mlp.float()  # the head runs in float32 on the float32 [CLS] feature, as the package does
    return ImageReward(model, tok, dev, dt, batch_size)
