"""The VLM judge of SPEC section 5: scores an inpainting result against its original image, mask and prompt.

Rubric (points, default weights 40-30-30): Aesthetic quality 0-A (colour harmony, composition, style coherence,
texture realism), Structural coherence 0-S (geometry and continuity, seamless mask boundary), Semantic alignment
0-M (faithful to the prompt, consistent with context). The prompt states the variant's maxima (A, S, M); the
total is 100 * (aesthetic + structural + semantic) / (A + S + M), so every variant's total is on 0-100.

The answer is a JSON object; parsing is lenient (code fences, text around the object, single quotes, trailing
commas, numbers as strings such as "35" or "35/40", key spellings such as "Aesthetic quality"). Answers in the
official GPT-4 evaluation's free-text format parse too: "Aesthetic Quality", "Structural Accuracy" (or Coherence),
"Semantic Alignment" headings with their sub-score on the heading's line ("**Aesthetic Quality (0-40 points): 34**",
"Aesthetic Quality: 34/40", "### Aesthetic Quality (34/40)") or on the next line ("Score: 34"), then a 1-2 sentence
justification and an "Overall Score: 87/100" (the total is still computed from the sub-scores). A sub-score outside
its range is clamped (out_of_range="clamp", default) or invalid (out_of_range="invalid"). A sub-score that is
missing or invalid makes the total NaN, and the judgement counts in `failures`.

Bias study (optional second question set, `rate_bias`): brightness, composition (detail / complexity) and colour
vividness of one image, each 1-10.

Backends: "transformers" (a local Qwen3-VL, `Qwen3VLForConditionalGeneration`; family="qwen2_5_vl" for Qwen2.5-VL)
and "http" (any OpenAI-compatible chat API; the key comes from an environment variable and is never logged).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import torch

from .vlm_common import build_tiny_vlm, generate_texts, load_vlm, mask_to_pil, resolve_device, resolve_dtype, to_pil

WEIGHT_VARIANTS = {"40-30-30": (40, 30, 30), "30-40-30": (30, 40, 30), "30-30-40": (30, 30, 40),
                   "33-33-33": (33, 33, 33)}
CRITERIA = ("aesthetic", "structural", "semantic")
BIAS_CRITERIA = ("brightness", "composition", "colour")

JUDGE_PROMPT = (
    "You are an expert judge of image inpainting. You are given three images, in this order: (1) the original "
    "image; (2) the mask, where white marks the region that was regenerated and black the region that was kept; "
    "(3) the inpainted result. The text prompt for the regenerated region is: \"{prompt}\".\n"
    "Score the result with this rubric:\n"
    "- Aesthetic quality (0-{a} points): colour harmony, composition, style coherence, texture realism.\n"
    "- Structural coherence (0-{s} points): geometry and continuity, a seamless boundary at the mask edge.\n"
    "- Semantic alignment (0-{m} points): faithful to the prompt, consistent with the surrounding context.\n"
    "Answer with only a JSON object, no other text: "
    "{{\"aesthetic\": <0-{a}>, \"structural\": <0-{s}>, \"semantic\": <0-{m}>, \"reason\": \"<one sentence>\"}}"
)
BIAS_PROMPT = (
    "Rate this image on three scales from 1 to 10.\n"
    "- brightness: 1 = very dark, 10 = very bright.\n"
    "- composition: the amount of detail and complexity; 1 = very simple and sparse, 10 = very detailed and complex.\n"
    "- colour: colour vividness; 1 = dull or grey, 10 = very vivid and saturated.\n"
    "Answer with only a JSON object, no other text: {\"brightness\": <1-10>, \"composition\": <1-10>, "
    "\"colour\": <1-10>}"
)

_ALIASES = {
    "aesthetic": ("aesthetic", "aesthetic_quality", "aesthetics", "aesthetic_score"),
    "structural": ("structural", "structural_coherence", "structural_accuracy", "structure", "structure_accuracy",
                   "structural_score"),
    "semantic": ("semantic", "semantic_alignment", "semantics", "semantic_score"),
    "brightness": ("brightness", "bright"),
    "composition": ("composition", "complexity", "detail"),
    "colour": ("colour", "color", "colour_vividness", "color_vividness", "vividness", "colourfulness",
               "colorfulness"),
}
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
# A criterion heading's line: the sub-score follows the label, after punctuation, markdown, a stated range
# "(0-40 points)" and filler words ("score", "points", "is"); a justification sentence first means no score there.
_RANGE = re.compile(r"\d+(?:\.\d+)?\s*(?:-|\u2013|\u2014|to)\s*\d+(?:\.\d+)?\s*(?:points?|pts)?", re.IGNORECASE)
_FILLER = r"(?:[^\w+-]|_|(?:sub-?score|score|rating|points?|pts|is|of|given|awarded)\b|-(?!\d))*"
_SCORE_AFTER_LABEL = re.compile(r"^" + _FILLER + r"(" + _NUMBER.pattern + r")", re.IGNORECASE)
_SCORE_LINE = re.compile(r"^[\W_]*(?:sub-?score|score|rating|points)\b" + _FILLER + r"(" + _NUMBER.pattern + r")",
                         re.IGNORECASE)


@dataclass
class JudgeResult:
    aesthetic: float
    structural: float
    semantic: float
    total: float
    raw: str | None

    @property
    def valid(self) -> bool:
        return math.isfinite(self.total)


@dataclass
class BiasRatings:
    brightness: float
    composition: float
    colour: float
    raw: str | None

    @property
    def valid(self) -> bool:
        return all(math.isfinite(v) for v in (self.brightness, self.composition, self.colour))


def _json_object(text: str) -> dict | None:
    """The first balanced {...} in text (fences and surrounding prose ignored), parsed leniently."""
    text = re.sub(r"```[a-zA-Z]*", "", text)
    start = text.find("{")
    while start != -1:
        depth, in_string, quote, escaped = 0, False, "", False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == quote:
                    in_string = False
            elif ch in "\"'":
                in_string, quote = True, ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    candidate = text[start:i + 1]
                    for attempt in (candidate, _loosen(candidate)):
                        try:
                            value = json.loads(attempt)
                            if isinstance(value, dict):
                                return value
                        except json.JSONDecodeError:
                            pass
                    break
        start = text.find("{", start + 1)
    return None


def _loosen(candidate: str) -> str:
    """Single-quoted keys/strings -> double, trailing commas removed, bare keys quoted."""
    s = re.sub(r"'([^'\"]*)'", r'"\1"', candidate)
    s = re.sub(r",\s*([}\]])", r"\1", s)
    return re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z_ ]*?)\s*:", r'\1"\2":', s)


def _normalise_key(key: str) -> str:
    return re.sub(r"[^a-z]+", "_", key.lower()).strip("_")


def _number(value) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _NUMBER.search(value)  # "35", "35/40", "35 points"
        return float(match.group()) if match else math.nan
    if isinstance(value, dict):  # {"score": 35, ...}
        for k in ("score", "value", "points"):
            if k in value:
                return _number(value[k])
    return math.nan


def _fields(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each named field as a float (NaN when absent): from the JSON object if the answer has one, else (or for a
    field the JSON lacks) from labelled lines in the text (`Aesthetic Quality (0-40 points): 35`)."""
    obj = _json_object(text) or {}
    flat = {_normalise_key(k): v for k, v in obj.items()}
    out = {}
    for name in names:
        value = math.nan
        for alias in _ALIASES[name]:
            if alias in flat:
                value = _number(flat[alias])
                break
        if math.isnan(value):
            value = _labelled(text, name)
        out[name] = value
    return out


def _labelled(text: str, name: str) -> float:
    """The score written after the first heading of `name` that carries one, on its line or the next line."""
    aliases = sorted(_ALIASES[name], key=len, reverse=True)  # "aesthetic quality" is tried before "aesthetic"
    label = re.compile(r"\b(?:" + "|".join(a.replace("_", r"[\s_]+") for a in aliases) + r")\b", re.IGNORECASE)
    lines = text.splitlines()
    for number, line in enumerate(lines):
        for match in label.finditer(line):
            rest = _RANGE.sub(" ", line[match.end():])
            found = _SCORE_AFTER_LABEL.match(rest)
            if found:
                return float(found.group(1))
            following = next((n for n in lines[number + 1:number + 3] if n.strip()), "")
            found = _SCORE_LINE.match(following.strip())
            if found and not label.search(following):
                return float(found.group(1))
    return math.nan


def _in_range(value: float, low: float, high: float, out_of_range: str) -> float:
    if not math.isfinite(value):
        return math.nan
    if low <= value <= high:
        return value
    return min(max(value, low), high) if out_of_range == "clamp" else math.nan


def parse_judgement(text: str | None, weights=(40, 30, 30), out_of_range: str = "clamp") -> JudgeResult:
    if out_of_range not in ("clamp", "invalid"):
        raise ValueError(f"out_of_range {out_of_range!r}; valid: clamp, invalid")
    if text is None:
        return JudgeResult(math.nan, math.nan, math.nan, math.nan, None)
    fields = _fields(text, CRITERIA)
    subs = [_in_range(fields[c], 0.0, float(w), out_of_range) for c, w in zip(CRITERIA, weights)]
    total = 100.0 * sum(subs) / sum(weights) if all(math.isfinite(s) for s in subs) else math.nan
    return JudgeResult(*subs, total=total, raw=text)


def parse_bias(text: str | None, out_of_range: str = "clamp") -> BiasRatings:
    if text is None:
        return BiasRatings(math.nan, math.nan, math.nan, None)
    fields = _fields(text, BIAS_CRITERIA)
    return BiasRatings(*(_in_range(fields[c], 1.0, 10.0, out_of_range) for c in BIAS_CRITERIA), raw=text)


def resolve_weights(weights) -> tuple[int, int, int]:
    if isinstance(weights, str):
        if weights not in WEIGHT_VARIANTS:
            raise ValueError(f"unknown judge weights {weights!r}; valid: {', '.join(WEIGHT_VARIANTS)} or 3 numbers")
        return WEIGHT_VARIANTS[weights]
    weights = tuple(int(w) for w in weights)
    if len(weights) != 3 or min(weights) <= 0:
        raise ValueError(f"judge weights must be 3 positive maxima (aesthetic, structural, semantic), got {weights}")
    return weights


def _image(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dtype != torch.uint8 or x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"judge: {what} must be uint8 [H,W,3], got {x.dtype} {tuple(x.shape)}")
    return x


class Judge:
    """`judge(original, mask, prompt, result) -> JudgeResult`; `judge_batch` for many; `rate_bias` for the bias study.
    `ask(list of (PIL images, text)) -> list of answers (None = request failed)` is the backend."""

    def __init__(self, ask, weights="40-30-30", out_of_range: str = "clamp") -> None:
        self.ask = ask
        self.weights = resolve_weights(weights)
        self.out_of_range = out_of_range
        self.failures = 0

    def prompt(self, prompt: str) -> str:
        a, s, m = self.weights
        return JUDGE_PROMPT.format(prompt=prompt, a=a, s=s, m=m)

    def judge(self, original: torch.Tensor, mask: torch.Tensor, prompt: str, result: torch.Tensor) -> JudgeResult:
        return self.judge_batch(original[None], mask[None], [prompt], result[None])[0]

    def judge_batch(self, originals, masks, prompts: list[str], results) -> list[JudgeResult]:
        """originals, results: uint8 [B,H,W,3] (or lists of [H,W,3]); masks: [B,H,W] (1 = hole); B prompts."""
        if not (len(originals) == len(masks) == len(prompts) == len(results)):
            raise ValueError(f"judge: {len(originals)} originals, {len(masks)} masks, {len(prompts)} prompts, "
                             f"{len(results)} results; they must match")
        requests = [([to_pil(_image(o, "original")[None])[0], mask_to_pil(m), to_pil(_image(r, "result")[None])[0]],
                     self.prompt(p)) for o, m, p, r in zip(originals, masks, prompts, results)]
        answers = self.ask(requests)
        out = [parse_judgement(a, self.weights, self.out_of_range) for a in answers]
        self.failures += sum(not r.valid for r in out)
        return out

    def rate_bias(self, images) -> list[BiasRatings]:
        """Brightness, composition and colour ratings (1-10) of each uint8 [H,W,3] image."""
        answers = self.ask([([to_pil(_image(im, "image")[None])[0]], BIAS_PROMPT) for im in images])
        out = [parse_bias(a, self.out_of_range) for a in answers]
        self.failures += sum(not r.valid for r in out)
        return out


def _local_ask(model, processor, max_new_tokens: int, batch_size: int):
    def ask(requests):
        answers = []
        for i in range(0, len(requests), batch_size):
            chunk = requests[i:i + batch_size]
            messages = [[{"role": "user", "content": [{"type": "image"} for _ in ims] + [{"type": "text", "text": t}]}]
                        for ims, t in chunk]
            answers += generate_texts(model, processor, messages, [ims for ims, _ in chunk], max_new_tokens)
        return answers
    return ask


def _http_ask(client, max_new_tokens: int):
    from .http_backend import user_message
    return lambda requests: client.chat_many([user_message(ims, t) for ims, t in requests], max_new_tokens)


def build_judge(tiny: bool = False, backend: str = "transformers", pretrained: str | None = None,
                family: str = "qwen3_vl", device: str = "auto", dtype: str = "float32", seed: int = 0,
                weights="40-30-30", out_of_range: str = "clamp", max_new_tokens: int = 256, batch_size: int = 4,
                base_url: str | None = None, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                max_retries: int = 5, backoff_s: float = 1.0, requests_per_second: float = 0.0,
                concurrency: int = 8) -> Judge:
    """backend "transformers": `pretrained` = a Qwen3-VL checkpoint (e.g. Qwen/Qwen3-VL-8B-Instruct; family
    "qwen2_5_vl" for a Qwen2.5-VL one); backend "http": `base_url` + `model` of an OpenAI-compatible API."""
    if backend == "http":
        from .http_backend import ChatClient
        if not base_url or not model:
            raise ValueError("judge backend='http' needs base_url (e.g. https://api.openai.com/v1) and model")
        client = ChatClient(base_url, model, api_key_env=api_key_env, max_retries=max_retries, backoff_s=backoff_s,
                            requests_per_second=requests_per_second, concurrency=concurrency)
        judge = Judge(_http_ask(client, max_new_tokens), weights, out_of_range)
        judge.client = client
        return judge
    if backend != "transformers":
        raise ValueError(f"judge: unknown backend {backend!r}; valid: transformers, http")
    if tiny:
        vlm, processor = build_tiny_vlm(family, seed=seed, corpus=[JUDGE_PROMPT, BIAS_PROMPT])
        vlm.to(resolve_device(device), resolve_dtype(dtype))
        max_new_tokens = min(max_new_tokens, 16)
    else:
        if pretrained is None:
            raise ValueError("judge backend='transformers' needs pretrained= a Qwen3-VL checkpoint or tiny=True")
        vlm, processor = load_vlm(family, pretrained, resolve_device(device), resolve_dtype(dtype))
    judge = Judge(_local_ask(vlm, processor, max_new_tokens, batch_size), weights, out_of_range)
    judge.model, judge.processor = vlm, processor
    return judge
