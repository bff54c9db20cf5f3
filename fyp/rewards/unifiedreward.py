"""UnifiedReward (CodeGoat24/UnifiedReward-qwen-7b, a Qwen2.5-VL-7B): pointwise 1-5 score of an image for a caption.

The model writes free text that ends in "Final Score: X"; the score is the first number after "Final Score:"
(SPEC section 2). An answer without it, or with a number outside 1-5, is NaN and counted in `failures`.
Backends: `transformers` (local Qwen2.5-VL, greedy, left-padded batches) and `http` (an OpenAI-compatible server
such as vLLM serving the same checkpoint, for throughput).
"""
from __future__ import annotations

import math

import torch

from .base import RewardModel
from .vlm_common import build_tiny_vlm, generate_texts, load_vlm, parse_final_score, resolve_device, resolve_dtype, to_pil

DEFAULT_WEIGHTS = "CodeGoat24/UnifiedReward-qwen-7b"

# UnifiedReward's pointwise image-generation prompt (inference_qwen/image_generation/qwen_point_score_image_generation.py).
POINTWISE_PROMPT = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image "
    "based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Extract key elements from the provided text caption, evaluate their presence in the generated image using the "
    "format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and assign a "
    "score from 1 to 5 after 'Final Score:'.\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{prompt}]"
)


class UnifiedReward(RewardModel):
    name = "unifiedreward"

    def __init__(self, answer_fn, max_new_tokens: int) -> None:
        super().__init__()
        self._answer = answer_fn  # (pil images, prompts) -> list of answer texts (None = request failed)
        self.max_new_tokens = max_new_tokens
        self.last_answers: list[str | None] = []

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check_inputs(images, prompts)
        answers = self._answer(to_pil(images), list(prompts))
        self.last_answers = answers
        scores = [parse_final_score(a) if a is not None else math.nan for a in answers]
        self.failures += sum(math.isnan(s) for s in scores)
        return torch.tensor(scores, dtype=torch.float32)


def _transformers_answers(model, processor, max_new_tokens: int):
    def answer(pils, prompts):
        messages = [[{"role": "user", "content": [{"type": "image"},
                                                  {"type": "text", "text": POINTWISE_PROMPT.format(prompt=p)}]}]
                    for p in prompts]
        return generate_texts(model, processor, messages, [[im] for im in pils], max_new_tokens)
    return answer


def _http_answers(client, max_new_tokens: int):
    from .http_backend import user_message

    def answer(pils, prompts):
        conversations = [user_message([im], POINTWISE_PROMPT.format(prompt=p)) for im, p in zip(pils, prompts)]
        return client.chat_many(conversations, max_new_tokens)
    return answer


def build(tiny: bool = False, pretrained: str | None = None, device: str = "auto", dtype: str = "float32",
          seed: int = 0, backend: str = "transformers", max_new_tokens: int = 512, base_url: str | None = None,
          served_model: str | None = None, api_key_env: str = "OPENAI_API_KEY", max_retries: int = 5,
          backoff_s: float = 1.0, requests_per_second: float = 0.0, concurrency: int = 8) -> UnifiedReward:
    """backend="transformers": Qwen2.5-VL weights `pretrained` (default CodeGoat24/UnifiedReward-qwen-7b);
    backend="http": `base_url` of an OpenAI-compatible server serving `served_model`."""
    if backend == "http":
        from .http_backend import ChatClient
        if not base_url:
            raise ValueError("unifiedreward backend='http' needs base_url (e.g. http://host:8000/v1)")
        client = ChatClient(base_url, served_model or pretrained or DEFAULT_WEIGHTS, api_key_env=api_key_env,
                            max_retries=max_retries, backoff_s=backoff_s,
                            requests_per_second=requests_per_second, concurrency=concurrency)
        return UnifiedReward(_http_answers(client, max_new_tokens), max_new_tokens)
    if backend != "transformers":
        raise ValueError(f"unifiedreward: unknown backend {backend!r}; valid: transformers, http")
    if tiny:
        model, processor = build_tiny_vlm("qwen2_5_vl", seed=seed, corpus=[POINTWISE_PROMPT])
        model.to(resolve_device(device), resolve_dtype(dtype))
        max_new_tokens = min(max_new_tokens, 16)  # a random tiny model never stops by itself
    else:
        model, processor = load_vlm("qwen2_5_vl", pretrained or DEFAULT_WEIGHTS, resolve_device(device),
                                    resolve_dtype(dtype))
    reward = UnifiedReward(_transformers_answers(model, processor, max_new_tokens), max_new_tokens)
    reward.model, reward.processor = model, processor
    return reward
