"""Typed run configuration: presets are YAML files, validated eagerly, every key and every value.

A preset names the data, the model and every stage's settings. The dataclasses below are the schema:
each field's type says what it may hold, allowed values as `Literal`s, numeric bounds and text formats as
`Annotated[..., Range(...)]` / `Pattern(...)`. `build` checks a mapping against a dataclass once, for
every key and value, with one rule set (the same for presets, `--set` overrides at every stage, a saved
config.yaml and hpc's cluster configs): an unknown key or a bad value stops with a one-line message that
names the key and lists what is valid, so a typo never silently falls back to a default.

Coercion (the one rule): a float setting takes any number (`1e-4` too: YAML 1.1 reads it as a string,
the loader here reads numbers as YAML 1.2 does); an int takes an int (not a bool, not 2.5); a list of
names takes one name as a one-item list; nothing else is converted.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem, with a one-line message that names the key and what is valid."""


# -- value constraints (metadata of Annotated types) ---------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Numeric bounds: ge/gt (>=, >), le (<=), multiple_of."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    multiple_of: int | None = None

    def ok(self, value) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le)
                and (self.multiple_of is None or value % self.multiple_of == 0))

    def describe(self) -> str:
        parts = [f">= {self.ge:g}" if self.ge is not None else "", f"> {self.gt:g}" if self.gt is not None else "",
                 f"<= {self.le:g}" if self.le is not None else "",
                 f"a multiple of {self.multiple_of}" if self.multiple_of else ""]
        return " and ".join(p for p in parts if p)


@dataclass(frozen=True)
class Pattern:
    """A text format: `regex` must match the whole value; `meaning` is what the message calls it.
    from_int: an integer is taken as its decimal text (Slurm `time: 30` in YAML)."""

    regex: str
    meaning: str
    from_int: bool = False

    def ok(self, value) -> bool:
        return re.fullmatch(self.regex, value) is not None


@dataclass(frozen=True)
class Schema:
    """A mapping checked against dataclass `cls` (every key a field, every value of the field's type) but kept
    a plain dict of the keys given: for option mappings whose readers take `.get(key, default)`."""

    cls: type


@dataclass(frozen=True)
class Meaning:
    """What the message calls a value of this type (instead of the generated description)."""

    text: str


# -- the allowed values: one place for every enumerated setting ----------------------------------------
DataKind = Literal["synthetic", "brushdata", "brushbench", "editbench", "rorem"]
Split = Literal["train", "heldout"]
PromptKind = Literal["mask-simple", "mask-rich", "full"]  # EditBench prompt column
MaskKind = Literal["inpainting", "outpainting"]  # BrushBench mask
ModelKind = Literal["flux-fill", "brushnet"]
Dtype = Literal["float32", "bfloat16", "float16"]
Device = Annotated[str, Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")]
RewardName = Literal["clipscore", "aesthetic", "imagereward", "pickscore", "hpsv2", "vqascore", "unifiedreward",
                     "perception", "hpsv3", "brightness"]  # fyp.rewards.registry builds each (a test keeps them equal)
PairsMethod = Literal["ensemble", "filtered", "linear", "softmax", "capo", "caen", "single", "random"]
Ties = Literal["min", "average", "dense"]
PairsName = Annotated[str, Pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "a pairs name (letters, digits, '.', '_', '-')")]
Loss = Literal["dpo", "ipo", "capo", "caen"]
Normalize = Literal["all", "mask"]
Trainable = Literal["all", "attention", "lora"]
TimestepSampling = Literal["uniform", "logit-normal"]
LrSchedule = Literal["constant", "linear", "cosine"]
TimestepShift = Literal["flux", "none"]
MaskDownsample = Literal["any", "nearest"]
LossBackend = Literal["auto", "torch", "triton"]
ZeroStage = Literal[0, 1, 2, 3]
Benchmark = Literal["synthetic", "brushbench", "editbench", "rorem"]

Count = Annotated[int, Range(ge=0)]  # 0 allowed (its meaning is said at the field)
Positive = Annotated[int, Range(ge=1)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]


# -- option mappings (kept as dicts, checked against these) -------------------------------------------------
@dataclass
class EvalOptions:
    paths: dict[Benchmark, str] = field(default_factory=dict)  # benchmark -> its folder
    resolution: Annotated[int, Range(ge=16, multiple_of=16)] = 64  # default: data.resolution
    prompt_kind: PromptKind = "mask-simple"
    mask_kind: MaskKind = "inpainting"
    steps: Positive = 2  # default: sampling.steps
    guidance: NonNegativeFloat = 30.0  # default: sampling.guidance
    lpips_backbone: str = "auto"  # auto | a path to AlexNet weights


@dataclass
class JudgeOptions:  # fyp.rewards.judge.build_judge's parameters, plus the eval stage's own two
    variants: list[Literal["40-30-30", "30-40-30", "30-30-40", "33-33-33"]] = field(default_factory=list)
    bias: bool = True  # also ask the bias-study ratings
    tiny: bool = False
    backend: Literal["transformers", "http"] = "transformers"
    pretrained: str | None = None
    family: Literal["qwen3_vl", "qwen2_5_vl"] = "qwen3_vl"
    device: Device = "auto"
    dtype: Dtype = "float32"
    seed: int = 0
    weights: Any = "40-30-30"  # ignored: `variants` chooses
    out_of_range: Literal["clamp", "invalid"] = "clamp"
    max_new_tokens: Positive = 256
    batch_size: Positive = 4
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: Count = 5
    backoff_s: NonNegativeFloat = 1.0
    requests_per_second: NonNegativeFloat = 0.0
    concurrency: Positive = 8


@dataclass
class TrainOptions:
    deepspeed: dict = field(default_factory=dict)  # merged into the DeepSpeed config


@dataclass
class DataConfig:
    kind: DataKind = "synthetic"
    path: str | None = None  # folder / tar glob / mapping file for the real readers
    resolution: Annotated[int, Range(ge=16, multiple_of=16)] = 64  # square side in pixels
    samples: Count = 24  # how many samples to take (0 = all the reader has)
    split: Split = "train"  # synthetic: disjoint id spaces
    prompt_kind: PromptKind = "mask-simple"  # editbench
    mask_kind: MaskKind = "inpainting"  # brushbench


@dataclass
class ModelConfig:
    kind: ModelKind = "flux-fill"
    tiny: bool = True  # build from tiny configs with random weights (seeded)
    pretrained: str = "black-forest-labs/FLUX.1-Fill-dev"  # hub id or local path
    brushnet: str | None = None  # kind brushnet: the branch's weights (hub id or local folder, official layout)
    dtype: Dtype = "float32"
    device: Device = "auto"
    seed: int = 0  # seed of the random weights of the tiny model


@dataclass
class SamplingConfig:
    candidates: Positive = 4  # K
    steps: Positive = 2
    guidance: NonNegativeFloat = 30.0
    max_sequence_length: Annotated[int, Range(ge=1, le=512)] = 512  # T5 tokens (FLUX refuses more than 512)
    batch_size: Positive = 4  # candidates generated per forward; results do not depend on it
    save_latents: bool = False


@dataclass
class RewardSpec:
    name: RewardName = "clipscore"
    tiny: bool = True
    pretrained: str | None = None  # hub id / local path of the published weights
    device: Device = "auto"
    dtype: Dtype = "float32"
    batch_size: Positive = 16
    python: str | None = None  # a separate interpreter for rewards that need their own environment
    options: dict = field(default_factory=dict)  # model-specific settings (see fyp.rewards)


@dataclass
class PairsConfig:
    method: PairsMethod = "ensemble"
    ties: Ties = "average"
    rewards: list[RewardName] = field(default_factory=list)  # subset of rewards for "filtered"; empty = all
    weights: dict[RewardName, float] = field(default_factory=dict)  # reward -> weight for linear/softmax/caen
    temperature: PositiveFloat = 1.0
    candidates: Count = 0  # k' (0 = all K)
    seed: int = 0


@dataclass
class TrainConfig:
    pairs: PairsName = "ensemble"
    loss: Loss = "dpo"
    beta: PositiveFloat = 2000.0
    lr: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 0.01
    steps: Positive = 20
    warmup_steps: Count = 0
    batch_size: Positive = 1
    grad_accum: Positive = 1
    grad_clip: NonNegativeFloat = 1.0
    mask_loss: bool = True
    normalize: Normalize = "all"
    trainable: Trainable = "all"
    lora_rank: Positive = 16
    ref_cache: bool = False
    encode_batch: Positive = 8  # pairs per VAE / text-encoder call when building the latent cache
    dist_timeout_minutes: PositiveFloat = 120.0  # longest wait at a collective (the latent cache's encoding)
    checkpoint_every: Count = 10  # 0 = only at the end
    zero_stage: ZeroStage = 3
    zero_init: bool = True  # zero_stage 3: build the policy and reference partitioned (deepspeed.zero.Init)
    gradient_checkpointing: bool = False
    timestep_sampling: TimestepSampling = "uniform"
    timestep_shift: TimestepShift = "flux"  # flux (the scheduler's shift) | none (the official code's unshifted grid)
    mask_downsample: MaskDownsample = "any"  # any (a pixel of the block is hole) | nearest (the official code's)
    loss_backend: LossBackend = "auto"  # auto (triton on CUDA, else torch) | torch | triton
    lr_schedule: LrSchedule = "constant"  # after warm-up; linear / cosine decay to 0 at `steps`
    export: bool = True  # save the aligned transformer as a diffusers folder at the end
    seed: int = 0
    options: Annotated[dict, Schema(TrainOptions)] = field(default_factory=dict)  # deepspeed: {...}


@dataclass
class EvalConfig:
    benchmark: Benchmark = "synthetic"
    samples: Count = 8  # 0 = all
    seed: int = 1234
    rewards: list[RewardName] = field(default_factory=list)  # empty = the run's rewards
    judge: Annotated[dict, Schema(JudgeOptions)] = field(default_factory=dict)  # empty = no judge
    options: Annotated[dict, Schema(EvalOptions)] = field(default_factory=dict)


@dataclass
class RunConfig:
    preset: str = "tiny"
    seed: int = 0
    shards: Positive = 1
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


def _suggest(key, valid) -> str:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


# -- the one validator: a mapping -> a dataclass, every key and value checked ---------------------------
def build(cls, values: Any, where: str = "", error: type[Exception] = ConfigError, context: str = ""):
    """Build dataclass `cls` from a mapping, refusing unknown keys and bad values with one line.

    `where` is the dotted key path of `values` ("train"); `context` prefixes the message ("cluster config
    a100: "); `error` is the exception class raised (a ConfigError subclass elsewhere, e.g. hpc's)."""
    return cls(**build_fields(cls, values, where, error, context))


def build_fields(cls, values: Any, where: str = "", error: type[Exception] = ConfigError, context: str = "") -> dict:
    """The checked keyword arguments of `cls` that `values` sets (for `dataclasses.replace` on a base)."""
    if not isinstance(values, dict):
        raise error(f"{context}{where or 'config'} must be a mapping of {_keys_of(cls)}, got {values!r}")
    hints = get_type_hints(cls, include_extras=True)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            name = f"key {_dotted(where, key)!r}" if context else f"config key {_dotted(where, key)}"
            raise error(f"{context}unknown {name}{_suggest(key, valid)}; valid keys: {', '.join(valid)}")
        kwargs[key] = coerce(hints[key], value, _dotted(where, key), error, context)
    return kwargs


def _keys_of(cls) -> str:
    return "keys (" + ", ".join(f.name for f in dataclasses.fields(cls)) + ")"


def check(obj, where: str, error: type[Exception] = ConfigError, context: str = "") -> None:
    """Validate a dataclass instance that was built in code (constructors check nothing)."""
    build(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, where, error, context)


def coerce(hint, value, where: str, error: type[Exception] = ConfigError, context: str = ""):
    """`value` as type `hint`, by the module's one coercion rule; `error` names `where` and what is valid."""
    problem = _Invalid()
    out = _coerce(hint, value, where, problem, error, context)
    if out is _BAD:
        raise error(f"{context}{problem.where} must be {problem.wanted}, got {problem.got!r}{problem.hint}")
    return out


class _Invalid:
    def __init__(self):
        self.where, self.wanted, self.got, self.hint = "", "", None, ""  # where, what it must be, what it was

    def set(self, where, wanted, got, hint=""):
        self.where, self.wanted, self.got, self.hint = where, wanted, got, hint
        return _BAD


_BAD = object()
_NONE = type(None)


def describe(hint) -> str:
    """What a value of type `hint` must be, in words (for messages)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        base, *meta = args
        for m in meta:
            if isinstance(m, Meaning):
                return m.text
        for m in meta:
            if isinstance(m, Pattern):
                return m.meaning
        bounds = " and ".join(m.describe() for m in meta if isinstance(m, Range))
        return f"{describe(base)} {bounds}".strip()
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        arms = [describe(a) for a in args if a is not _NONE]
        return " or ".join(arms) + (" or null" if _NONE in args else "")
    if origin in (list, tuple):
        return f"a list of {describe(args[0]) if args else 'values'}"
    if origin is dict or hint is dict:
        return "a mapping" + (f" of {describe(args[0])} -> {describe(args[1])}" if args else "")
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {_keys_of(hint)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _takes_str(hint) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return _takes_str(args[0])
    if origin is Literal:
        return all(isinstance(a, str) for a in args)
    return hint is str


def _coerce(hint, value, where, problem: _Invalid, error, context):
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, error, context)
    if origin is Annotated:
        base, *meta = args
        if isinstance(value, int) and not isinstance(value, bool) and any(
                isinstance(m, Pattern) and m.from_int for m in meta):
            value = str(value)
        out = _coerce(base, value, where, problem, error, context)
        schema = next((m.cls for m in meta if isinstance(m, Schema)), None)
        if schema is not None and out is not _BAD:
            return build_fields(schema, out, where, error, context)
        if out is _BAD:  # say it at this level when the type has its own words, or the problem is here
            own = problem.where == where or any(isinstance(m, Meaning) for m in meta)
            return problem.set(where, describe(hint), value) if own else out
        for m in meta:
            if isinstance(m, (Range, Pattern)) and not m.ok(out):
                return problem.set(where, describe(hint), value)
        return out
    if origin is Literal:
        for allowed in args:  # type-exact: True is not 1, "1" is not 1
            if type(value) is type(allowed) and value == allowed:
                return value
        return problem.set(where, describe(hint), value, _suggest(value, args) if isinstance(value, str) else "")
    if origin in (Union, types.UnionType):
        if value is None:
            return None if _NONE in args else problem.set(where, describe(hint), value)
        arms = [a for a in args if a is not _NONE]
        for arm in arms:
            trial = _Invalid()
            out = _coerce(arm, value, where, trial, error, context)
            if out is not _BAD:
                return out
            if len(arms) == 1:
                problem.set(trial.where, trial.wanted + (" or null" if trial.where == where and _NONE in args
                                                         else ""), trial.got, trial.hint)
                return _BAD
        return problem.set(where, describe(hint), value)
    if origin in (list, tuple) or hint in (list, tuple):
        item = args[0] if args else Any
        if isinstance(value, str) and args and _takes_str(item):
            value = [value]  # one name where a list of names is expected
        if not isinstance(value, (list, tuple)):
            return problem.set(where, describe(hint), value)
        out = []
        for i, v in enumerate(value):
            if dataclasses.is_dataclass(item) and not isinstance(v, dict):
                v = {"name": v}  # a list of specs may name them only: [clipscore, hpsv2]
            got = _coerce(item, v, f"{where}[{i}]", problem, error, context)
            if got is _BAD:
                return _BAD
            out.append(got)
        return tuple(out) if (origin is tuple or hint is tuple) else out
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return problem.set(where, describe(hint), value)
        if not args:
            return value
        out = {}
        for k, v in value.items():
            key = _coerce(args[0], k, f"{where} key", problem, error, context)
            if key is _BAD:
                return _BAD
            got = _coerce(args[1], v, _dotted(where, k), problem, error, context)
            if got is _BAD:
                return _BAD
            out[key] = got
        return out
    if value is None:
        return problem.set(where, describe(hint) + " (not null)", value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    return problem.set(where, describe(hint), value)


# -- YAML, merging and overrides -------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads numbers as YAML 1.2 does: `1e-4` is a float (YAML 1.1 says a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*(?:[eE][-+]?\d+)|\d[\d_]*\.\d*|\.\d+(?:[eE][-+]?\d+)?"
               r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def yaml_load(text: str):
    """YAML text -> Python values, numbers read as YAML 1.2 (the one parser of presets, configs, --set)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, mappings merged key by key (the one merge of presets and overrides)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


_merge = merge  # the old name (fyp.dpo.train imports it)


def parse_override(text: str) -> dict:
    """`a.b=3` -> {"a": {"b": 3}}; the value is parsed as YAML (1.2 numbers: 1e-4 is a float)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. train.lr=1e-4)")
    try:
        value = yaml_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def parse_overrides(texts, section: str | None = None) -> dict:
    """Every `--set key.sub=value` merged into one mapping; `section`: only `section.*` keys allowed, and
    the mapping under it is returned (the train stage takes `train.*` only)."""
    out: dict = {}
    for text in texts or []:
        parsed = parse_override(text)
        if section is not None and list(parsed) != [section]:
            raise ConfigError(f"--set accepts {section}.* keys here, got {text!r}")
        out = merge(out, parsed)
    return out.get(section, {}) if section is not None else out


def load_preset(name_or_path: str, overrides: dict | None = None) -> RunConfig:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name_or_path!r}; valid presets: {', '.join(available_presets())}")
    raw = yaml_load(path.read_text()) or {}
    raw.setdefault("preset", path.stem)
    return from_dict(merge(raw, overrides or {}))


def from_dict(raw: dict) -> RunConfig:
    cfg = build(RunConfig, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """What no single field's type can say: relations between fields."""
    names = cfg.reward_names
    if len(set(names)) != len(names):
        raise ConfigError(f"rewards are listed twice: {names}")
    for key, listed in (("pairs.rewards", cfg.pairs.rewards), ("eval.rewards", cfg.eval.rewards)):
        unknown = [r for r in listed if r not in names]
        if unknown and names:
            raise ConfigError(f"{key} names {', '.join(unknown)}, which the run does not score; "
                              f"the run's rewards: {', '.join(names)}")


def dump(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save(cfg: RunConfig, path: Path) -> None:
    Path(path).write_text(dump(cfg))


def load(path: Path) -> RunConfig:
    return from_dict(yaml_load(Path(path).read_text()))


def differences(a: dict, b: dict, where: str = "") -> list[str]:
    """Dotted keys whose values differ between two config mappings (lists compared whole)."""
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, _dotted(where, key))
        elif va != vb:
            out.append(_dotted(where, key))
    return out
