"""VQAScore: P("Yes") for `Does this figure show "{prompt}"? Please answer yes or no.` (SPEC section 2).

Backend `clip-flant5` (default) is t2v_metrics' CLIP-FlanT5 (zhiqiulin/clip-flant5-xxl) written natively: a CLIP
ViT-L/14-336 vision tower (second-to-last layer, patch tokens), a 2-layer GELU MLP projector into the FlanT5
embedding space, the projected image tokens spliced into the encoder input where the prompt says `<image>`, and
the decoder's first-step distribution read at the "Yes" token. Parameter names match t2v_metrics'
`CLIPT5ForConditionalGeneration` (`shared`, `encoder.*`, `decoder.*`, `lm_head`, `mm_projector.{0,2}`,
`vision_tower.vision_tower.vision_model.*`; transformers 5's CLIPVisionModel drops the `vision_model.` level, which
`remap_t2v_keys` removes) so the published checkpoint loads.

Backend `vlm` uses any transformers image-text-to-text model (Qwen2.5-VL, LLaVA, ...) as the answering model: P of
the first token of "Yes" at the first generated position of a chat with the image and the question.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn
from torch.nn import functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config, T5ForConditionalGeneration

from .base import RewardModel
from .vlm_common import build_tiny_vlm, resolve_device, resolve_dtype, to_pil

QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
ANSWER = "Yes"
SYSTEM_MSG = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
IMAGE_PLACEHOLDER = "<image>"
# t2v_metrics' "t5_chat" conversation style, used by clip-flant5-xxl.
T5_CHAT = SYSTEM_MSG + " USER: " + IMAGE_PLACEHOLDER + "\n{question} ASSISTANT: "
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Architecture of zhiqiulin/clip-flant5-xxl (google/flan-t5-xxl + openai/clip-vit-large-patch14-336), written out so
# the benchmark needs no download.
FLANT5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24,
                  num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1)
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")


class CLIPVisionTower(nn.Module):
    """CLIP vision model; features = hidden states of layer `select_layer` without the CLS token (LLaVA style)."""

    def __init__(self, config: CLIPVisionConfig, select_layer: int = -2) -> None:
        super().__init__()
        self.vision_tower = CLIPVisionModel(config)
        self.select_layer = select_layer

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values, output_hidden_states=True)
        return out.hidden_states[self.select_layer][:, 1:]


class CLIPFlanT5(T5ForConditionalGeneration):
    """FlanT5 encoder-decoder whose encoder input carries projected CLIP patch features in place of `<image>`."""

    def __init__(self, config: T5Config, vision_config: CLIPVisionConfig, select_layer: int = -2) -> None:
        super().__init__(config)
        if not config.scale_decoder_outputs:
            # FlanT5 (T5 v1.1, saved with tie_word_embeddings=False) has its own lm_head; transformers 5 ties it to
            # `shared` by default, so untie it here.
            self.lm_head.weight = nn.Parameter(torch.empty_like(self.shared.weight).normal_(0.0, config.d_model ** -0.5))
            getattr(self, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
        self.vision_tower = CLIPVisionTower(vision_config, select_layer)
        # mlp2x_gelu projector
        self.mm_projector = nn.Sequential(nn.Linear(vision_config.hidden_size, config.d_model), nn.GELU(),
                                          nn.Linear(config.d_model, config.d_model))

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(self.vision_tower(pixel_values.to(self.mm_projector[0].weight.dtype)))

    def multimodal_embeds(self, pixel_values: torch.Tensor, before: list[list[int]], after: list[list[int]]):
        """Rows `embed(before) + image tokens + embed(after)`, right-padded with zeros; returns (embeds, mask)."""
        image_tokens = self.encode_images(pixel_values)
        embed = self.get_input_embeddings()
        device = image_tokens.device
        rows = [torch.cat([embed(torch.tensor(b, device=device)), img, embed(torch.tensor(a, device=device))])
                for b, img, a in zip(before, image_tokens, after)]
        length = max(r.shape[0] for r in rows)
        embeds = image_tokens.new_zeros(len(rows), length, image_tokens.shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            embeds[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        return embeds, mask


def _pad_to_square_and_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """t2v_metrics' `expand2square` (pad with the CLIP mean colour) then resize to size^2 (bicubic, as uint8 like
    the PIL path), then CLIP normalisation. uint8 [B,H,W,3] -> float [B,3,size,size]."""
    x = images.permute(0, 3, 1, 2).float()
    b, _, h, w = x.shape
    side = max(h, w)
    fill = torch.tensor([int(m * 255) for m in CLIP_MEAN], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    canvas = fill.expand(b, 3, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, :, top:top + h, left:left + w] = x
    if side != size:
        canvas = F.interpolate(canvas, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    canvas = canvas.round().clamp(0, 255) / 255.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (canvas - mean) / std


class VQAScoreCLIPFlanT5(RewardModel):
    name = "vqascore"

    def __init__(self, model: CLIPFlanT5, tokenizer, formula: str = "first_token") -> None:
        super().__init__()
        if formula not in ("first_token", "t2v_metrics"):
            raise ValueError(f"vqascore formula {formula!r}; valid: first_token, t2v_metrics")
        self.model, self.tokenizer, self.formula = model, tokenizer, formula
        self.image_size = model.vision_tower.vision_tower.config.image_size
        # T5 tokenizers append </s> to every chunk; t2v_metrics keeps it (the chunks are tokenized separately).
        self.answer_ids = tokenizer(ANSWER).input_ids  # ["▁Yes", "</s>"]

    def _chunks(self, prompt: str) -> tuple[list[int], list[int]]:
        before, after = T5_CHAT.format(question=QUESTION.format(prompt)).split(IMAGE_PLACEHOLDER)
        return self.tokenizer(before).input_ids, self.tokenizer(after).input_ids

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check_inputs(images, prompts)
        device = next(self.model.parameters()).device
        pixels = _pad_to_square_and_resize(images.to(device), self.image_size)
        chunks = [self._chunks(p) for p in prompts]
        embeds, mask = self.model.multimodal_embeds(pixels, [c[0] for c in chunks], [c[1] for c in chunks])
        answer = torch.tensor(self.answer_ids, device=device)
        start = torch.tensor([getattr(self.model.config, "decoder_start_token_id", None) or 0], device=device)
        decoder_ids = torch.cat([start, answer[:-1]]).expand(len(prompts), -1)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids).logits.float()
        logp = logits.log_softmax(-1)
        if self.formula == "first_token":
            scores = logp[:, 0, self.answer_ids[0]].exp()
        else:  # exp(-mean cross-entropy over the answer tokens), as t2v_metrics' CLIPT5Model.forward
            scores = logp.gather(-1, answer.expand(len(prompts), -1).unsqueeze(-1)).squeeze(-1).mean(1).exp()
        out = scores.cpu()
        self.failures += int((~torch.isfinite(out)).sum())
        return out


class VQAScoreVLM(RewardModel):
    """Any chat VLM as the answering model: P(first token of "Yes") at the first answer position."""

    name = "vqascore"

    def __init__(self, model, processor) -> None:
        super().__init__()
        self.model, self.processor = model, processor
        self.yes_id = processor.tokenizer.encode(ANSWER, add_special_tokens=False)[0]

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check_inputs(images, prompts)
        self.processor.tokenizer.padding_side = "left"  # the answer position is the last column for every row
        messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION.format(p)}]}]
                    for p in prompts]
        texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
        inputs = self.processor(text=texts, images=to_pil(images), padding=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items() if torch.is_tensor(v)}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        logits = self.model(**inputs, logits_to_keep=1).logits[:, -1].float()
        out = logits.softmax(-1)[:, self.yes_id].cpu()
        self.failures += int((~torch.isfinite(out)).sum())
        return out


# ----------------------------------------------------------------------------------------------------------------
def tiny_t5_tokenizer():
    """A small FlanT5-style unigram tokenizer built in code (pad=0, eos=1, unk=2 as in T5)."""
    from transformers import T5TokenizerFast
    words = ["Yes", "No", "yes", "no", "A", "chat", "between", "a", "curious", "user", "and", "an", "artificial",
             "intelligence", "assistant", "The", "gives", "helpful", "detailed", "polite", "answers", "to", "the",
             "questions", "USER", "ASSISTANT", "Does", "this", "figure", "show", "Please", "answer", "or", "cat",
             "dog", "photo", "of"]
    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -5.0) for w in words] + [(c, -8.0) for c in chars] + [("▁" + c, -9.0) for c in chars]
    return T5TokenizerFast(vocab=pieces, unk_id=2, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)


def tiny_clip_flant5(tokenizer, seed: int = 0) -> CLIPFlanT5:
    t5 = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
                  num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=28, patch_size=14, hidden_act="quick_gelu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPFlanT5(t5, vision).eval()


def full_clip_flant5_xxl() -> CLIPFlanT5:
    """The full-size architecture with random weights (construct under a device / dtype context for speed)."""
    return CLIPFlanT5(T5Config(**FLANT5_XXL), CLIPVisionConfig(**CLIP_L_336))


def remap_t2v_keys(state_dict: dict) -> dict:
    """t2v_metrics / transformers-4 names -> this module's (CLIPVisionModel lost its `vision_model.` level in v5)."""
    prefix, legacy = "vision_tower.vision_tower.", "vision_tower.vision_tower.vision_model."
    return {(prefix + k[len(legacy):] if k.startswith(legacy) else k): v for k, v in state_dict.items()}


def _load_clip_flant5(path: str, tokenizer_path: str | None, vision_path: str | None) -> tuple[CLIPFlanT5, object]:
    """A local zhiqiulin/clip-flant5-xxl snapshot (config.json + *.safetensors or *.bin shards)."""
    from transformers import AutoTokenizer
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    t5_keys = set(T5Config().to_dict())
    config = T5Config(decoder_start_token_id=raw.get("decoder_start_token_id", 0),
                      **{k: v for k, v in raw.items() if k in t5_keys and k not in ("architectures", "model_type")})
    vision_src = vision_path or raw.get("mm_vision_tower", "openai/clip-vit-large-patch14-336")
    vision_config = CLIPVisionConfig.from_pretrained(vision_src)
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=False):  # parameters on meta, computed buffers (rotary, ids) real
        model = CLIPFlanT5(config, vision_config, raw.get("mm_vision_select_layer", -2))
    state = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            state.update(load_file(full))
        elif name.endswith(".bin"):
            state.update(torch.load(full, map_location="cpu", weights_only=True))
    if not any(k.startswith("vision_tower.") for k in state):  # LLaVA-style checkpoints may omit the CLIP tower
        clip = CLIPVisionModel.from_pretrained(vision_src)
        state.update({"vision_tower.vision_tower." + k: v for k, v in clip.state_dict().items()})
    state = remap_t2v_keys(state)
    model.load_state_dict(state, strict=False, assign=True)
    # assign=True replaced `shared`; re-share it with the embeddings the checkpoint does not repeat
    for stack in (model.encoder, model.decoder):
        stack.embed_tokens.weight = model.shared.weight
    if "lm_head.weight" not in state:
        model.lm_head.weight = model.shared.weight
    missing = [k for k, p in model.state_dict().items() if p.is_meta]
    if missing:
        raise ValueError(f"vqascore: {path} lacks {len(missing)} weights, e.g. {missing[:3]}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or "google/flan-t5-xxl")
    return model, tokenizer


def build(tiny: bool = False, pretrained: str | None = None, device: str = "auto", dtype: str = "float32",
          seed: int = 0, backend: str = "clip-flant5", formula: str = "first_token", tokenizer: str | None = None,
          vision_tower: str | None = None) -> RewardModel:
    """backend "clip-flant5": `pretrained` = local clip-flant5-xxl directory (`tokenizer` = flan-t5-xxl tokenizer,
    `vision_tower` = CLIP ViT-L/14-336 when the checkpoint lacks it); formula "first_token" (SPEC: P(Yes)) or
    "t2v_metrics" (exp(-mean CE) over "Yes</s>", t2v_metrics' number). backend "vlm": `pretrained` = any
    transformers image-text-to-text model."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if backend == "clip-flant5":
        if tiny:
            tok = tiny_t5_tokenizer()
            model = tiny_clip_flant5(tok, seed)
        else:
            if pretrained is None:
                raise ValueError("vqascore needs pretrained= a local zhiqiulin/clip-flant5-xxl directory or tiny=True")
            model, tok = _load_clip_flant5(pretrained, tokenizer, vision_tower)
        return VQAScoreCLIPFlanT5(model.to(dev, dt).requires_grad_(False).eval(), tok, formula)
    if backend == "vlm":
        if tiny:
            model, processor = build_tiny_vlm("qwen2_5_vl", seed=seed, corpus=[QUESTION, ANSWER])
        else:
            if pretrained is None:
                raise ValueError("vqascore backend='vlm' needs pretrained= a transformers VLM id or directory")
            from transformers import AutoModelForImageTextToText, AutoProcessor
            model = AutoModelForImageTextToText.from_pretrained(pretrained, dtype=dt)
            processor = AutoProcessor.from_pretrained(pretrained)
        return VQAScoreVLM(model.to(dev, dt).requires_grad_(False).eval(), processor)
    raise ValueError(f"vqascore: unknown backend {backend!r}; valid: clip-flant5, vlm")
