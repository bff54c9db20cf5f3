"""Typed run configuration: presets are YAML files, validated eagerly.

A preset names the data, the model and every stage's settings. `load_preset` merges a preset with
overrides and checks every key: an unknown key stops with a message listing the valid ones, so a
typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem, with a one-line message that names the key and what is valid."""


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic | brushdata | brushbench | editbench | rorem
    path: str | None = None  # folder / tar glob / mapping file for the real readers
    resolution: int = 64  # square side in pixels, a multiple of 16
    samples: int = 24  # how many samples to take (None-like 0 = all the reader has)
    split: str = "train"  # synthetic: train | heldout (disjoint id spaces)
    prompt_kind: str = "mask-simple"  # editbench: mask-simple | mask-rich | full
    mask_kind: str = "inpainting"  # brushbench: inpainting | outpainting


@dataclass
class ModelConfig:
    kind: str = "flux-fill"  # flux-fill | brushnet
    tiny: bool = True  # build from tiny configs with random weights (seeded)
    pretrained: str = "black-forest-labs/FLUX.1-Fill-dev"  # hub id or local path
    brushnet: str | None = None  # kind brushnet: the branch's weights (hub id or local folder, official layout)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # seed of the random weights of the tiny model


@dataclass
class SamplingConfig:
    candidates: int = 4  # K
    steps: int = 2
    guidance: float = 30.0
    max_sequence_length: int = 512
    batch_size: int = 4  # candidates generated per forward; results do not depend on it
    save_latents: bool = False


@dataclass
class RewardSpec:
    name: str = "clipscore"
    tiny: bool = True
    pretrained: str | None = None  # hub id / local path of the published weights
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 16
    python: str | None = None  # a separate interpreter for rewards that need their own environment
    options: dict = field(default_factory=dict)  # model-specific settings (see fyp.rewards)


@dataclass
class PairsConfig:
    method: str = "ensemble"
    ties: str = "average"
    rewards: list = field(default_factory=list)  # subset of rewards for "filtered"; empty = all
    weights: dict = field(default_factory=dict)  # reward -> weight for linear/softmax/caen
    temperature: float = 1.0
    candidates: int = 0  # k' (0 = all K)
    seed: int = 0


@dataclass
class TrainConfig:
    pairs: str = "ensemble"
    loss: str = "dpo"  # dpo | ipo | capo | caen
    beta: float = 2000.0
    lr: float = 1e-5
    weight_decay: float = 0.01
    steps: int = 20
    warmup_steps: int = 0
    batch_size: int = 1
    grad_accum: int = 1
    grad_clip: float = 1.0
    mask_loss: bool = True
    normalize: str = "all"
    trainable: str = "all"  # all | attention | lora
    lora_rank: int = 16
    ref_cache: bool = False
    encode_batch: int = 8  # pairs per VAE / text-encoder call when building the latent cache
    dist_timeout_minutes: float = 120.0  # longest wait at a collective (the latent cache's encoding)
    checkpoint_every: int = 10
    zero_stage: int = 3
    zero_init: bool = True  # zero_stage 3: build the policy and reference partitioned (deepspeed.zero.Init)
    gradient_checkpointing: bool = False
    timestep_sampling: str = "uniform"  # uniform | logit-normal
    lr_schedule: str = "constant"  # after warm-up: constant | linear | cosine (decay to 0 at `steps`)
    export: bool = True  # save the aligned transformer as a diffusers folder at the end
    seed: int = 0
    options: dict = field(default_factory=dict)  # deepspeed: a mapping merged into the DeepSpeed config


@dataclass
class EvalConfig:
    benchmark: str = "synthetic"
    samples: int = 8
    seed: int = 1234
    rewards: list = field(default_factory=list)  # empty = the run's rewards
    judge: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    preset: str = "tiny"
    seed: int = 0
    shards: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rewards: list[RewardSpec] = field(default_factory=list)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def reward_names(self) -> list[str]:
        return [r.name for r in self.rewards]

    def reward(self, name: str) -> RewardSpec:
        for spec in self.rewards:
            if spec.name == name:
                return spec
        raise ConfigError(f"reward {name!r} is not in this run; the run has: {', '.join(self.reward_names) or 'none'}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls, values: Any, where: str):
    """Build dataclass `cls` from a dict, refusing unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(
                f"unknown config key {where + '.' if where else ''}{key}{_suggest(key, valid)}; valid keys: {', '.join(valid)}"
            )
        kwargs[key] = _coerce(hints[key], value, f"{where + '.' if where else ''}{key}")
    return cls(**kwargs)


def _coerce(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = get_origin(hint)
    if origin is list:
        (item,) = get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if dataclasses.is_dataclass(item):
            return [_build(item, v if isinstance(v, dict) else {"name": v}, f"{where}[{i}]") for i, v in enumerate(value)]
        return list(value)
    simple = [a for a in (get_args(hint) or (hint,)) if a is not type(None)]
    if value is None:
        if type(None) in get_args(hint):
            return None
        raise ConfigError(f"{where} may not be null")
    for kind in simple:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool, dict, list) and isinstance(value, kind):
            return value
    raise ConfigError(f"{where} must be {' or '.join(k.__name__ for k in simple)}, got {value!r}")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """`a.b=3` -> {"a": {"b": 3}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_preset(name_or_path: str, overrides: dict | None = None) -> RunConfig:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name_or_path!r}; valid presets: {', '.join(available_presets())}")
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("preset", path.stem)
    cfg = _build(RunConfig, _merge(raw, overrides or {}), "")
    validate(cfg)
    return cfg


def from_dict(raw: dict) -> RunConfig:
    cfg = _build(RunConfig, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    if cfg.data.resolution % 16:
        raise ConfigError(f"data.resolution must be a multiple of 16, got {cfg.data.resolution}")
    if cfg.shards < 1:
        raise ConfigError(f"shards must be >= 1, got {cfg.shards}")
    if cfg.sampling.candidates < 1 or cfg.sampling.batch_size < 1:
        raise ConfigError("sampling.candidates and sampling.batch_size must be >= 1")
    names = cfg.reward_names
    if len(set(names)) != len(names):
        raise ConfigError(f"rewards are listed twice: {names}")


def save(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load(path: Path) -> RunConfig:
    return from_dict(yaml.safe_load(Path(path).read_text()))
