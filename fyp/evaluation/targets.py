"""What an eval task evaluates: a benchmark (its reader) and a model (baseline or an exported transformer).

Benchmarks: `synthetic` is the held-out synthetic split (`data.split = heldout`, ids `heldout-*`, a seed stream
training never draws from) at the run's resolution; `brushbench`, `editbench` and `rorem` read their folder
from `--data PATH` or `eval.options.paths.<benchmark>`, at `eval.options.resolution` (default: the run's
`data.resolution`); `eval.options.prompt_kind` / `mask_kind` choose EditBench's prompt and BrushBench's mask.
`eval.samples` (or `--samples`) caps the items (0 = all).

Models (`--model`): `baseline` (the run's initial transformer), a folder holding an exported diffusers
transformer (config.json + safetensors, as `<run>/train/<pairs>/transformer`), the name of a pairs set whose
export is `<run>/train/<name>/transformer`, `all` (baseline and every export present), or a comma-separated
list of these. A model's name is `baseline`, the pairs name, or the folder's name.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from ..config import Benchmark, ConfigError, DataConfig
from ..run import Run

BENCHMARKS = get_args(Benchmark)  # the allowed values live in fyp.config
REMOVAL_BENCHMARKS = ("rorem",)
BASELINE = "baseline"
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


class EvalError(ConfigError):
    """A bad eval request (unknown benchmark, missing checkpoint or data): one line that says what to do."""


@dataclass(frozen=True)
class ModelTarget:
    name: str
    path: Path | None  # None = baseline


@dataclass(frozen=True)
class Target:
    benchmark: str
    model: ModelTarget

    @property
    def variant(self) -> str:
        return f"{self.benchmark}/{self.model.name}"


def safe_name(text: str) -> str:
    return _SAFE.sub("_", text).strip("_") or "model"


def benchmark_of(run: Run, opts: dict) -> str:
    bench = opts.get("benchmark") or run.config.eval.benchmark
    if bench not in BENCHMARKS:
        raise EvalError(f"unknown benchmark {bench!r}; valid benchmarks: {', '.join(BENCHMARKS)}")
    return bench


def data_config(run: Run, benchmark: str, data_path: str | None = None) -> DataConfig:
    """The DataConfig of a benchmark's reader for this run."""
    cfg = run.config
    options = cfg.eval.options or {}
    resolution = int(options.get("resolution", cfg.data.resolution))
    if benchmark == "synthetic":
        return DataConfig(kind="synthetic", resolution=resolution, samples=0, split="heldout")
    path = data_path or (options.get("paths") or {}).get(benchmark)
    if not path:
        raise EvalError(f"benchmark {benchmark} needs its folder: pass --data PATH or set "
                        f"eval.options.paths.{benchmark} in the run's config")
    data = DataConfig(kind=benchmark, path=str(path), resolution=resolution, samples=0)
    if "prompt_kind" in options:
        data.prompt_kind = options["prompt_kind"]
    if "mask_kind" in options:
        data.mask_kind = options["mask_kind"]
    return data


def build_benchmark_reader(run: Run, data: DataConfig):
    from ..data.base import ReaderError
    from ..data.registry import build_reader

    try:
        return build_reader(copy.deepcopy(data), run.config.seed)
    except ReaderError as exc:
        raise EvalError(f"cannot read benchmark {data.kind}: {exc}") from None


def item_count(run: Run, reader, opts: dict) -> int:
    samples = opts.get("samples")
    samples = run.config.eval.samples if samples is None else int(samples)
    return len(reader) if samples <= 0 else min(len(reader), samples)


def export_path(run_dir: Path, pairs: str) -> Path:
    return Path(run_dir) / "train" / pairs / "transformer"


def is_transformer_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _name_for(path: Path) -> str:
    path = path.resolve()
    if path.name == "transformer" and path.parent.parent.name == "train":
        return safe_name(path.parent.name)  # <run>/train/<pairs>/transformer -> <pairs>
    return safe_name(path.parent.name if path.name == "transformer" else path.name)


def resolve_models(run: Run, spec: str | None, name: str | None = None) -> list[ModelTarget]:
    """The models named by `--model` (see the module doc); a missing checkpoint is an EvalError."""
    spec = (spec or "all").strip()
    out: list[ModelTarget] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part == BASELINE:
            out.append(ModelTarget(BASELINE, None))
        elif part == "all":
            out.append(ModelTarget(BASELINE, None))
            for folder in sorted((run.dir / "train").glob("*/transformer")):
                if is_transformer_dir(folder):
                    out.append(ModelTarget(safe_name(folder.parent.name), folder))
        elif "/" not in part and not Path(part).exists() and (run.dir / "train" / part).is_dir():
            out.append(ModelTarget(safe_name(part), export_path(run.dir, part)))
        else:
            path = Path(part).expanduser()
            if not path.exists():
                raise EvalError(f"checkpoint {part} does not exist; give --model baseline, a pairs name with an "
                                f"export under {run.dir / 'train'}, or a folder with an exported transformer")
            if not is_transformer_dir(path):
                raise EvalError(f"{part} is not an exported transformer folder (needs config.json and *.safetensors, "
                                f"as written by the train stage to <run>/train/<pairs>/transformer)")
            out.append(ModelTarget(_name_for(path), path.resolve()))
    if name:
        if len(out) != 1 or out[0].path is None:
            raise EvalError("--name renames a single checkpoint; give one --model path with it")
        out = [ModelTarget(safe_name(name), out[0].path)]
    unique = {}
    for target in out:
        if target.name in unique and unique[target.name] != target:
            raise EvalError(f"two models would be called {target.name!r}; evaluate them one at a time with --name")
        unique[target.name] = target
    if not unique:
        raise EvalError(f"--model {spec!r} names no model")
    return list(unique.values())


def targets(run: Run, opts: dict) -> list[Target]:
    bench = benchmark_of(run, opts)
    return [Target(bench, m) for m in resolve_models(run, opts.get("model"), opts.get("name"))]


def eval_dir(run_dir: Path, benchmark: str, model: str) -> Path:
    """`<run>/eval/<benchmark>/<model>/`: per-item parts, items.csv, summary.csv, failures.json."""
    return Path(run_dir) / "eval" / benchmark / model
