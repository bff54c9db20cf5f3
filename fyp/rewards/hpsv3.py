"""HPSv3 (MizzenAI/HPSv3): Qwen2-VL-7B-Instruct with a `<|Reward|>` token and an MLP head 3584-1024-16-2 that reads
the reward token's last hidden state and outputs (mu, sigma); the score is mu (SPEC section 2).

Layout follows MizzenAI/HPSv3 (hpsv3/model/qwen2vl_trainer.py, `Qwen2VLRewardModelBT` with rm_head_type "ranknet",
reward_token "special", output_dim 2; prompt from hpsv3/dataset/data_collator_qwen.py; images at 256*28*28 pixels).
The head runs in float32 like the original. The `hpsv3` package itself pins transformers 4.45 and cannot be
installed here, so the head formula is tested on a hand-computed case instead of against the package.
"""
from __future__ import annotations

import math
import os
import re

import torch
from torch import nn
from transformers import Qwen2VLForConditionalGeneration

from .base import RewardModel
from .vlm_common import build_tiny_vlm, resolve_device, resolve_dtype, tiny_qwen_vl_config, to_pil

REWARD_TOKEN = "<|Reward|>"
IMAGE_PIXELS = 256 * 28 * 28  # HPSv3 resizes every image to this many pixels (min_pixels = max_pixels)

INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall "
    "score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being "
    "the best. \n\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as "
    "abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements "
    "(e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of "
    "harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or "
    "adult material. If such content is present, the image quality and satisfaction score should be the lowest "
    "possible. \n"
    "Textual prompt - {text_prompt}\n\n\n"
)
PROMPT_WITH_SPECIAL_TOKEN = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"


class RewardHead(nn.Sequential):
    """hidden -> inner -> 16 -> 2 with ReLUs (dropout inactive in eval); index names match HPSv3's `rm_head.{0,3,5}`."""

    def __init__(self, hidden: int, inner: int = 1024) -> None:
        super().__init__(nn.Linear(hidden, inner), nn.ReLU(), nn.Dropout(0.05), nn.Linear(inner, 16), nn.ReLU(),
                         nn.Linear(16, 2))


class HPSv3Model(Qwen2VLForConditionalGeneration):
    """Qwen2-VL plus `rm_head`; state-dict keys are transformers-5 Qwen2-VL keys plus `rm_head.*`."""

    def __init__(self, config, head_inner: int = 1024) -> None:
        super().__init__(config)
        self.rm_head = RewardHead(config.text_config.hidden_size, head_inner).float()

    def reward(self, input_ids: torch.Tensor, reward_token_id: int, **inputs) -> torch.Tensor:
        """(mu, sigma) [B,2] in float32, read at each row's single reward token; rows without exactly one are NaN.
        `inputs`: the processor's other outputs (attention_mask, pixel_values, image_grid_thw, mm_token_type_ids)."""
        hidden = self.model(input_ids=input_ids, use_cache=False, **inputs).last_hidden_state
        is_reward = input_ids == reward_token_id
        out = torch.full((input_ids.shape[0], 2), math.nan, dtype=torch.float32, device=hidden.device)
        ok = is_reward.sum(1) == 1
        if ok.any():
            position = is_reward.float().argmax(1)
            rows = torch.arange(input_ids.shape[0], device=hidden.device)[ok]
            out[ok] = self.rm_head(hidden[rows, position[ok]].float())
        return out


_LEGACY_KEYS = [(re.compile(r"^visual\."), "model.visual."),
                (re.compile(r"^model\.(?!visual\.|language_model\.)"), "model.language_model.")]


def remap_legacy_keys(state_dict: dict) -> dict:
    """HPSv3.safetensors was saved with transformers 4.45 (`visual.*`, `model.layers.*`); map to transformers 5."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in _LEGACY_KEYS:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


class HPSv3(RewardModel):
    name = "hpsv3"

    def __init__(self, model: HPSv3Model, processor, image_pixels: int = IMAGE_PIXELS) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.image_pixels = image_pixels
        self.reward_token_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)

    def prepare(self, images: torch.Tensor, prompts: list[str]) -> dict:
        self.processor.tokenizer.padding_side = "right"  # positions of real tokens do not depend on the batch
        messages = [[{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": INSTRUCTION.format(text_prompt=p) + PROMPT_WITH_SPECIAL_TOKEN}]}]
            for p in prompts]
        texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
        px = self.image_pixels
        batch = self.processor(text=texts, images=to_pil(images), padding=True, return_tensors="pt",
                               images_kwargs={"size": {"shortest_edge": px, "longest_edge": px}})
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        batch["pixel_values"] = batch["pixel_values"].to(self.model.model.visual.dtype)
        return batch

    @torch.no_grad()
    def mu_sigma(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check_inputs(images, prompts)
        b = self.prepare(images, prompts)
        return self.model.reward(b.pop("input_ids"), self.reward_token_id, **b).cpu()

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        mu = self.mu_sigma(images, prompts)[:, 0].contiguous()
        self.failures += int((~torch.isfinite(mu)).sum())
        return mu


def _load_weights(path: str) -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "HPSv3.safetensors")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


def build(tiny: bool = False, pretrained: str | None = None, device: str = "auto", dtype: str = "float32",
          seed: int = 0, base: str = "Qwen/Qwen2-VL-7B-Instruct", image_pixels: int | None = None) -> HPSv3:
    """`pretrained`: HPSv3.safetensors (or a directory holding it, from MizzenAI/HPSv3);
    `base`: the Qwen2-VL-7B-Instruct directory whose config and processor HPSv3 was trained from."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if tiny:
        _, processor = build_tiny_vlm("qwen2_vl", seed=seed, extra_special_tokens=(REWARD_TOKEN,),
                                      corpus=[INSTRUCTION + PROMPT_WITH_SPECIAL_TOKEN])
        config = tiny_qwen_vl_config("qwen2_vl", processor.tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = HPSv3Model(config, head_inner=32)
        model.requires_grad_(False).eval().to(dev, dt)
        model.rm_head.float()
        return HPSv3(model, processor, image_pixels or 56 * 56)
    if pretrained is None:
        raise ValueError("hpsv3 needs pretrained= the HPSv3.safetensors file (MizzenAI/HPSv3) or tiny=True")
    from transformers import AutoConfig, AutoProcessor
    processor = AutoProcessor.from_pretrained(base)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    config = AutoConfig.from_pretrained(base)
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=False):  # parameters on meta, computed buffers (rotary, ids) real
        model = HPSv3Model(config)
    model.resize_token_embeddings(len(processor.tokenizer))
    state = remap_legacy_keys(_load_weights(pretrained))
    model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k, p in model.state_dict().items() if p.is_meta and k != "lm_head.weight"]
    if missing:
        raise ValueError(f"hpsv3: {pretrained} lacks {len(missing)} weights, e.g. {missing[:3]}")
    model.lm_head = nn.Identity()  # never used for the reward; drop it rather than materialise 152k x 3584
    model.to(dev, dt)
    model.rm_head.float()
    return HPSv3(model.requires_grad_(False).eval(), processor, image_pixels or IMAGE_PIXELS)
