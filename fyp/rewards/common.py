"""Helpers shared by the reward models: device/dtype, seeded tiny weights, image preprocessing on tensors,
weight-file loading, a CLIP BPE tokenizer built in code, and the embedding-similarity reward skeleton.

Preprocessing runs on torch tensors (on the model's device), so a batch is decoded once and resized on the
GPU. Resizing uses torch's antialiased bicubic/bilinear interpolation; PIL's filters differ from it by about
one grey level, which moves scores in the third decimal (docs/rewards.md). An image already at the model's
resolution is not resized at all, so both paths agree exactly there (the legacy cross-check relies on it).
"""
from __future__ import annotations

import contextlib
import gzip
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..devices import resolve_device, resolve_dtype  # noqa: F401 - re-exported for the reward builders
from .base import RewardModel

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)





@contextlib.contextmanager
def seeded(seed: int):
    """Deterministic random init of tiny weights without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def init_device(tiny: bool, device: torch.device) -> torch.device:
    """Where to initialise random weights: tiny models on the CPU (the same numbers on every machine); full-size
    random models (benchmarks) on their device, where initialising billions of parameters takes seconds."""
    return torch.device("cpu") if tiny else device


def prepare_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Frozen, inference-mode module: models built from configs start in train mode (dropout on)."""
    module.requires_grad_(False)
    return module.to(device=device, dtype=dtype).eval()


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch pickle (weights_only=True); unwraps {'state_dict': ...}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def resolve_file(pretrained: str, filename: str) -> Path:
    """A weight file from a local file, a local folder, or a hub repo id (hub cache only, no network here)."""
    path = Path(pretrained)
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / filename).is_file():
            raise FileNotFoundError(f"{path} has no {filename}")
        return path / filename
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(pretrained, filename))


@dataclass(frozen=True)
class ImageTransform:
    """uint8 [B,H,W,3] -> normalised float [B,3,size,size], the CLIP way on tensors.

    resize_mode 'shortest': scale the short side to `size`, then centre-crop (CLIP, BLIP, open_clip default);
    'squash': scale both sides to `size` (PE-Core).
    """

    size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"

    def __call__(self, images: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            target = (self.size, self.size)
        elif self.resize_mode == "shortest":
            scale = self.size / min(h, w)
            target = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
        else:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}; valid: shortest, squash")
        if (h, w) != target:
            x = F.interpolate(x, size=target, mode=self.interpolation, antialias=True, align_corners=False)
            x = x.clamp(0, 255)  # bicubic overshoots; PIL clips to the uint8 range too
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size] / 255.0
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)


def open_clip_bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def clip_bpe_vocab() -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's BPE vocab (49408 tokens) and merges, from the copy open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode

    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def clip_tokenizer_in_code():
    """A transformers CLIPTokenizer with the real CLIP vocab, built without the hub (tiny / random models)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab()
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], unk_token="<|endoftext|>",
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")


class EmbeddingReward(RewardModel):
    """A reward computed from an image embedding and a text embedding (CLIP family).

    Subclasses provide `encode_images(pixels) -> [B,D]`, `encode_texts(prompts) -> [P,D]` and `formula(cos)`.
    Each distinct prompt is encoded once per call (K candidates share one prompt); images run in
    micro-batches of `batch_size` so a call of any size fits in memory.
    """

    transform: ImageTransform
    needs_text: bool = True

    def __init__(self, device: torch.device, dtype: torch.dtype, batch_size: int = 64):
        super().__init__()
        self.device, self.dtype, self.batch_size = device, dtype, int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size}")

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def formula(self, image_features: torch.Tensor, text_features: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def embed(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image features [B,D], text features [B,D] or None), float32, unnormalised."""
        self.check_inputs(images, prompts)
        text = None
        if self.needs_text:
            unique = list(dict.fromkeys(prompts))
            feats = torch.cat([self.encode_texts(unique[i:i + self.batch_size]).float()
                               for i in range(0, len(unique), self.batch_size)])
            position = {p: i for i, p in enumerate(unique)}
            text = feats[torch.tensor([position[p] for p in prompts], device=feats.device)]
        image = torch.cat([self.encode_images(self.transform(images[i:i + self.batch_size], self.device,
                                                             self.dtype)).float()
                           for i in range(0, images.shape[0], self.batch_size)])
        return image, text

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.formula(*self.embed(images, prompts)).float().cpu()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)
