"""Cluster configurations (`cluster_configs/<name>.yaml`): where and with what resources tasks run.

Validated eagerly, before anything is submitted, by the run config's validator (fyp.config.build: the
field types below say what each key may hold): an unknown key or a bad value stops with a one-line
message that names the key and lists the valid ones. Per-stage overrides (`stages: {train: {...}}`) and
per-reward overrides (`rewards: {imagereward: {python: ...}}`, applied to the score stage's variant of
that reward) take the same resource keys as the top level.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml

from fyp.config import ConfigError, Meaning, Pattern, Range, build_fields, coerce, yaml_load

CONFIG_DIR = Path(__file__).resolve().parent.parent / "cluster_configs"


class ClusterConfigError(ConfigError):
    pass


_TIME = r"\d+-\d{1,2}(:\d{1,2}(:\d{1,2})?)?|\d+(:\d{1,2}(:\d{1,2})?)?"
Text = Annotated[str, Pattern(r"(?s)\s*\S.*", "a non-empty string")]
SlurmTime = Annotated[str, Pattern(_TIME, "a Slurm time such as 30, 02:00:00 or 1-12:00:00", from_int=True)]
SlurmMem = Annotated[str, Pattern(r"\d+[KMGT]?", "a Slurm memory size such as 16G or 4000M")]
Interpreter = Annotated[str, Pattern(r"(?s)\s*\S.*", "an interpreter path or command")]
ShellLines = Annotated[tuple[str, ...], Meaning("a list of shell lines")]
SbatchOptions = dict[Annotated[str, Pattern(r"[a-z][a-z0-9-]*", "a long option name such as 'mail-type'")], Any]
Executor = Literal["local", "slurm"]


@dataclass(frozen=True)
class Resources:
    """What one task of a stage asks the scheduler for, and how its job script starts."""

    partition: Text | None = None
    account: Text | None = None
    qos: Text | None = None
    time: SlurmTime = "01:00:00"  # Slurm syntax: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
    nodes: Annotated[int, Range(ge=1)] = 1
    gpus_per_node: Annotated[int, Range(ge=0)] = 0
    cpus_per_task: Annotated[int, Range(ge=1)] = 1  # per process: train on several GPUs runs one process (task) per GPU
    cpus_per_node: Annotated[int, Range(ge=0)] = 0  # the nodes' CPUs (0 = not said): a task's shape is checked against it before sbatch
    mem: SlurmMem | None = None  # e.g. 16G, 4000M; None = the cluster's DefMemPerCPU
    constraint: Text | None = None
    setup: ShellLines = ()  # shell lines run before the task: module loads, venv activation
    python: Interpreter | None = None  # interpreter of `-m hpc.task` (None: the submitting one); per reward: its own env
    throttle: Annotated[int, Range(ge=0)] = 0  # default %N of array jobs (local: parallel tasks); 0 = no limit
    signal_seconds: Annotated[int, Range(ge=0)] = 120  # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: Annotated[int, Range(ge=0)] = 3  # requeues per task on the pre-timeout signal
    # further `#SBATCH --key=value` lines, verbatim keys; written as a mapping, checked as SbatchOptions
    sbatch: tuple[tuple[str, str], ...] = ()

    def minutes(self) -> float:
        return time_minutes(self.time)


RESOURCE_KEYS = [f.name for f in dataclasses.fields(Resources)]
def _variant_sections() -> dict[str, str]:
    from fyp.stages import VARIANT_RESOURCES  # section -> stage whose variants it refines (rewards -> the score stage)

    return VARIANT_RESOURCES


TOP_KEYS = ["executor", "max_array_size", "stages", *_variant_sections(), "finalize", "description"] + RESOURCE_KEYS
# A stage's finalisation (consolidate, write a marker) runs once on one CPU: it does not get the stage's
# GPUs, nodes or memory (train's 256G); partition/account/qos are the top level's; `finalize:` overrides.
FINALIZE_SHAPE = dict(nodes=1, gpus_per_node=0, cpus_per_task=1, mem="4G", time="00:30:00", constraint=None)
EXECUTORS = get_args(Executor)


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    executor: str  # local | slurm
    base: Resources
    max_array_size: int = 1001
    stages: dict = field(default_factory=dict)  # stage -> Resources
    variants: dict = field(default_factory=dict)  # stage -> {variant -> Resources} (e.g. the score stage's rewards)
    description: str = ""
    finalize: dict = field(default_factory=dict)  # resource keys the finalisation jobs override

    def finalize_resources(self, stage: str, variant: str | None = None) -> Resources:
        """The small CPU shape of a stage's finalisation job (its setup and interpreter are the stage's)."""
        res = self.resources(stage, variant)
        top = {k: getattr(self.base, k) for k in ("partition", "account", "qos")}
        return dataclasses.replace(res, **{**FINALIZE_SHAPE, **top, **self.finalize})

    def resources(self, stage: str, variant: str | None = None) -> Resources:
        res = self.stages.get(stage, self.base)
        if variant in self.variants.get(stage, {}):
            res = self.variants[stage][variant]
        return res


def time_minutes(text: str) -> float:
    days = 0
    if "-" in text:
        day, text = text.split("-", 1)
        days = int(day)
        parts = [int(p) for p in text.split(":")] + [0, 0]
        hours, minutes, seconds = parts[0], parts[1], parts[2]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:  # MM
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:  # MM:SS
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:  # HH:MM:SS
            hours, minutes, seconds = parts
    return days * 1440 + hours * 60 + minutes + seconds / 60


def _unknown(key: str, valid: list[str], where: str) -> ClusterConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ClusterConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")


def _resources(raw: dict, base: Resources, where: str) -> Resources:
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{where} must be a mapping of resource keys; valid keys: {', '.join(RESOURCE_KEYS)}")
    raw = dict(raw)
    sbatch = raw.pop("sbatch", None)
    values = build_fields(Resources, raw, "", ClusterConfigError, f"{where}: ")
    if sbatch is not None:
        options = coerce(SbatchOptions, sbatch, "sbatch option", ClusterConfigError, f"{where}: ")
        values["sbatch"] = tuple((k, str(v)) for k, v in options.items())
    return dataclasses.replace(base, **values)


def available_clusters() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def from_dict(raw: dict, name: str = "<inline>", stage_names: list[str] | None = None) -> ClusterConfig:
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"cluster config {name} must be a mapping; valid keys: {', '.join(TOP_KEYS)}")
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, f"cluster config {name}")
    context = f"cluster config {name}: "
    executor = coerce(Executor, raw.get("executor", "slurm"), "executor", ClusterConfigError, context)
    max_array = coerce(Annotated[int, Range(ge=1)], raw.get("max_array_size", 1001), "max_array_size",
                       ClusterConfigError, context)
    base = _resources({k: v for k, v in raw.items() if k in RESOURCE_KEYS}, Resources(), f"cluster config {name}")
    stages = {}
    from fyp.stages import PIPELINE  # the stage names are fixed by the protocol, not by what is installed
    valid_stages = list(stage_names or PIPELINE)
    for stage, over in (raw.get("stages") or {}).items():
        if stage not in valid_stages:
            raise ClusterConfigError(f"cluster config {name}: stages.{stage} is not a stage; valid stages: {', '.join(valid_stages)}")
        stages[stage] = _resources(over or {}, base, f"cluster config {name}, stages.{stage}")
    variants: dict = {}
    for section, stage in _variant_sections().items():
        parent = stages.get(stage, base)
        for variant, over in (raw.get(section) or {}).items():
            variants.setdefault(stage, {})[str(variant)] = _resources(
                over or {}, parent, f"cluster config {name}, {section}.{variant}")
    over = raw.get("finalize") or {}
    shape = _resources(over, base, f"cluster config {name}, finalize")
    finalize = {k: getattr(shape, k) for k in over}
    return ClusterConfig(name, executor, base, max_array, stages, variants, str(raw.get("description", "")), finalize)


def check_shape(cluster: "ClusterConfig", stage: str, res: Resources, tasks_per_node: int) -> None:
    """Refuse, before sbatch, a task that cannot fit a node: Slurm would refuse it (or pend it forever)."""
    cpus = tasks_per_node * res.cpus_per_task
    if res.cpus_per_node and cpus > res.cpus_per_node:
        raise ClusterConfigError(
            f"cluster config {cluster.name}, stages.{stage}: {tasks_per_node} task(s) per node x cpus_per_task "
            f"{res.cpus_per_task} = {cpus} CPUs, more than a node's cpus_per_node {res.cpus_per_node}; cpus_per_task "
            f"is per process (one per GPU): set it to at most {max(1, res.cpus_per_node // tasks_per_node)}")


def load(name_or_path: str) -> ClusterConfig:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ClusterConfigError(f"unknown cluster {name_or_path!r}; valid clusters: {', '.join(available_clusters())} "
                                 f"(or a path to a .yaml file)")
    try:
        raw = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"cluster config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return from_dict(raw, path.stem)
