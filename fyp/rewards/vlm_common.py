"""Shared pieces of the VLM-based rewards and the judge: uint8 -> PIL, answer parsing,
and tiny Qwen-family vision-language models built in code (no hub) for tests."""
from __future__ import annotations

import math
import re

import numpy as np
import torch
from PIL import Image

from .common import resolve_device, resolve_dtype  # noqa: F401 (re-exported for the VLM modules)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 [B,H,W,3] -> B RGB PIL images (decoded once per batch)."""
    array = images.detach().cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def mask_to_pil(mask: torch.Tensor) -> Image.Image:
    """A mask [H,W] or [H,W,1|3] (1 = hole, bool/float/uint8 0|1 or 0|255) -> RGB image, hole white."""
    m = mask.detach().cpu()
    if m.ndim == 3:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"mask must be [H,W] or [H,W,C], got {tuple(mask.shape)}")
    m = m.float()
    if m.max() > 1:
        m = m / 255.0
    gray = (m.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.stack([gray] * 3, axis=-1))


_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_FINAL_SCORE = re.compile(r"Final Score\s*[:：]\s*\**\s*(" + _NUMBER + ")", re.IGNORECASE)


def parse_final_score(text: str, low: float = 1.0, high: float = 5.0) -> float:
    """The first number after "Final Score:" (UnifiedReward's answer format); NaN if absent or outside [low, high]."""
    match = _FINAL_SCORE.search(text or "")
    if not match:
        return math.nan
    value = float(match.group(1))
    return value if low <= value <= high else math.nan


# --------------------------------------------------------------------------------------------------
# Tiny Qwen-family VLMs for tests: byte-level BPE tokenizer, image processor and model, all in code.
# --------------------------------------------------------------------------------------------------
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]

# Qwen's chat layout (without the default system turn): enough for tiny models; real checkpoints ship theirs.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _trained_merges(corpus: list[str], vocab_size: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges learnt from `corpus` (so prompt words become about one token each, as in Qwen's
    real vocabulary; used for realistic sequence lengths in benchmarks)."""
    import json as _json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    merges = _json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def tiny_qwen_tokenizer(extra_special_tokens: tuple[str, ...] = (), corpus: list[str] | None = None):
    """A byte-level Qwen2Tokenizer (256 byte symbols + merges + Qwen's special tokens). Merges: a handful, or
    learnt from `corpus` when given."""
    from transformers import Qwen2Tokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    pairs = _trained_merges(corpus, 4096) if corpus else [("Ġ", "t"), ("Ġ", "a"), ("e", "s"), ("Y", "es"),
                                                           ("N", "o"), ("Ġ", "s")]
    merges = []
    for pair in pairs:
        merged = "".join(pair)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        merges.append(pair)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:] + list(extra_special_tokens)})
    tok.pad_token = "<|endoftext|>"
    return tok


def tiny_qwen_processor(family: str = "qwen2_5_vl", extra_special_tokens: tuple[str, ...] = (),
                        image_px: int | None = 56, corpus: list[str] | None = None):
    """Processor for a Qwen2-VL / Qwen2.5-VL / Qwen3-VL built in code: every image resized to image_px^2 pixels
    (tests), or, with image_px=None, the real models' pixel range (56^2 .. 1280 * 28^2: 512^2 -> 18x18 tokens)."""
    from transformers import Qwen2VLImageProcessor

    tokenizer = tiny_qwen_tokenizer(extra_special_tokens, corpus)
    patch = 16 if family == "qwen3_vl" else 14
    low, high = (image_px ** 2, image_px ** 2) if image_px else (56 * 56, 1280 * 28 * 28)
    image_processor = Qwen2VLImageProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                            size={"shortest_edge": low, "longest_edge": high})
    if family == "qwen3_vl":
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor
        return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=Qwen3VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE)
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor
    cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
               chat_template=QWEN_CHAT_TEMPLATE)


def _token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def tiny_qwen_vl_config(family: str, tokenizer, hidden: int = 32, layers: int = 2, init_std: float = 0.2):
    """A tiny config of the given family (same classes as the 7B models). A large init std makes the random
    model's outputs depend visibly on the image (the default 0.02 gives near-constant answers)."""
    vocab = len(tokenizer)
    head_dim = 16
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
    text = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=hidden // head_dim, num_key_value_heads=1, max_position_embeddings=512,
                rms_norm_eps=1e-6, rope_parameters=rope, bos_token_id=None,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id, initializer_range=init_std)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1], initializer_range=init_std)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_token_ids(tokenizer))
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig
        vision = dict(depth=2, embed_dim=32, hidden_size=hidden, mlp_ratio=2, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, initializer_range=init_std)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **_token_ids(tokenizer))
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig
        text.update(head_dim=head_dim, rope_parameters={**rope, "mrope_interleaved": True})
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                      deepstack_visual_indexes=[1], initializer_range=init_std)
        return Qwen3VLConfig(text_config=text, vision_config=vision, **_token_ids(tokenizer))
    raise ValueError(f"unknown VLM family {family!r}; valid: qwen2_vl, qwen2_5_vl, qwen3_vl")


# The 7B architectures (Qwen/Qwen2.5-VL-7B-Instruct = UnifiedReward-qwen-7b, Qwen/Qwen2-VL-7B-Instruct = HPSv3's
# backbone), written out so benchmarks build them without a download.
QWEN_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                    hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                        "mrope_section": [16, 24, 24]})
QWEN2_5_VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                            hidden_act="silu", patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                            window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
QWEN2_VL_7B_VISION = dict(depth=32, embed_dim=1280, hidden_size=3584, hidden_act="quick_gelu", mlp_ratio=4,
                          num_heads=16, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)


def qwen_vl_7b_config(family: str, tokenizer):
    """The 7B config of Qwen2-VL or Qwen2.5-VL, with special-token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
    text = dict(QWEN_7B_TEXT, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id)
    if family == "qwen2_5_vl":
        return Qwen2_5_VLConfig(text_config=text, vision_config=QWEN2_5_VL_7B_VISION, **_token_ids(tokenizer))
    if family == "qwen2_vl":
        return Qwen2VLConfig(text_config=text, vision_config=QWEN2_VL_7B_VISION, **_token_ids(tokenizer))
    raise ValueError(f"no 7B config for {family!r}; valid: qwen2_vl, qwen2_5_vl")


def model_class(family: str):
    import transformers
    return {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
            "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
            "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[family]


def build_tiny_vlm(family: str, seed: int = 0, extra_special_tokens: tuple[str, ...] = (),
                   corpus: list[str] | None = None):
    """(model in eval mode, processor) for a tiny random-weight VLM of the family, seeded. `corpus` (the reward's
    prompt template) teaches the tokenizer its words, which keeps test sequences short."""
    processor = tiny_qwen_processor(family, extra_special_tokens, corpus=corpus)
    config = tiny_qwen_vl_config(family, processor.tokenizer)
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = model_class(family)(config)
    return model.requires_grad_(False).eval(), processor


def load_vlm(family: str, pretrained: str, device: torch.device, dtype: torch.dtype):
    """(model, processor) from a local directory or hub id of the family (needs the weights on disk)."""
    from transformers import AutoProcessor
    model = model_class(family).from_pretrained(pretrained, dtype=dtype).to(device).requires_grad_(False).eval()
    return model, AutoProcessor.from_pretrained(pretrained)


@torch.no_grad()
def generate_texts(model, processor, messages_batch: list[list[dict]], images_batch: list[list[Image.Image]],
                   max_new_tokens: int) -> list[str]:
    """Greedy generation for a batch of chats (left-padded so every row's answer starts at the same column;
    greedy decoding then makes each answer independent of its batch)."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_batch]
    flat_images = [im for ims in images_batch for im in ims]
    inputs = processor(text=texts, images=flat_images or None, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    vocab = tokenizer.get_vocab()
    eos += [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab and vocab[t] not in eos]  # Qwen turn ends
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
