"""Cluster configurations (`cluster_configs/<name>.yaml`): where and with what resources tasks run.

Validated eagerly, before anything is submitted: an unknown key or a bad value stops with a one-line
message that names the key and lists the valid ones. Per-stage overrides (`stages: {train: {...}}`) and
per-reward overrides (`rewards: {imagereward: {python: ...}}`, applied to the score stage's variant of
that reward) take the same resource keys as the top level.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "cluster_configs"


class ClusterConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Resources:
    """What one task of a stage asks the scheduler for, and how its job script starts."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "01:00:00"  # Slurm syntax: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1  # per process: train on several GPUs runs one process (task) per GPU
    cpus_per_node: int = 0  # the nodes' CPUs (0 = not said): a task's shape is checked against it before sbatch
    mem: str | None = None  # e.g. 16G, 4000M; None = the cluster's DefMemPerCPU
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines run before the task: module loads, venv activation
    python: str | None = None  # interpreter of `-m hpc.task` (None: the submitting one); per reward: its own env
    throttle: int = 0  # default %N of array jobs (local: parallel tasks); 0 = no limit
    signal_seconds: int = 120  # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = 3  # requeues per task on the pre-timeout signal
    sbatch: tuple[tuple[str, str], ...] = ()  # further `#SBATCH --key=value` lines, verbatim keys

    def minutes(self) -> float:
        return time_minutes(self.time)


RESOURCE_KEYS = [f.name for f in dataclasses.fields(Resources)]
TOP_KEYS = ["executor", "max_array_size", "stages", "rewards", "finalize", "description"] + RESOURCE_KEYS
# A stage's finalisation (consolidate, write a marker) runs once on one CPU: it does not get the stage's
# GPUs, nodes or memory (train's 256G); partition/account/qos are the top level's; `finalize:` overrides.
FINALIZE_SHAPE = dict(nodes=1, gpus_per_node=0, cpus_per_task=1, mem="4G", time="00:30:00", constraint=None)
EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    executor: str  # local | slurm
    base: Resources
    max_array_size: int = 1001
    stages: dict = field(default_factory=dict)  # stage -> Resources
    rewards: dict = field(default_factory=dict)  # reward -> Resources (score stage variants)
    description: str = ""
    finalize: dict = field(default_factory=dict)  # resource keys the finalisation jobs override

    def finalize_resources(self, stage: str, variant: str | None = None) -> Resources:
        """The small CPU shape of a stage's finalisation job (its setup and interpreter are the stage's)."""
        res = self.resources(stage, variant)
        top = {k: getattr(self.base, k) for k in ("partition", "account", "qos")}
        return dataclasses.replace(res, **{**FINALIZE_SHAPE, **top, **self.finalize})

    def resources(self, stage: str, variant: str | None = None) -> Resources:
        res = self.stages.get(stage, self.base)
        if stage == "score" and variant in self.rewards:
            res = self.rewards[variant]
        return res


_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{1,2}(:\d{1,2})?)?|\d+(:\d{1,2}(:\d{1,2})?)?)$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")


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


def _check_value(key: str, value, where: str):
    """Return the value in its typed form, or raise naming the key and what it must be."""
    def bad(expected: str):
        return ClusterConfigError(f"{where}: {key} must be {expected}, got {value!r}")

    if key in ("partition", "account", "qos", "constraint", "mem"):
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string or null")
        if key == "mem" and not _MEM.match(value):
            raise bad("a Slurm memory size such as 16G or 4000M")
        return value
    if key == "time":
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(value, str) or not _TIME.match(value):
            raise bad("a Slurm time such as 30, 02:00:00 or 1-12:00:00")
        return value
    if key in ("nodes", "cpus_per_task", "max_requeues", "gpus_per_node", "throttle", "signal_seconds",
               "cpus_per_node"):
        minimum = 1 if key in ("nodes", "cpus_per_task") else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise bad(f"an integer >= {minimum}")
        return value
    if key == "python":
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad("an interpreter path or command")
        return value
    if key == "setup":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of shell lines")
        return tuple(value)
    if key == "sbatch":
        if not isinstance(value, dict):
            raise bad("a mapping of extra sbatch options (key: value)")
        for opt in value:
            if not isinstance(opt, str) or not _SBATCH_KEY.match(opt):
                raise ClusterConfigError(f"{where}: sbatch option {opt!r} must be a long option name such as 'mail-type'")
        return tuple((k, str(v)) for k, v in value.items())
    raise AssertionError(key)


def _resources(raw: dict, base: Resources, where: str) -> Resources:
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{where} must be a mapping of resource keys; valid keys: {', '.join(RESOURCE_KEYS)}")
    values = {}
    for key, value in raw.items():
        if key not in RESOURCE_KEYS:
            raise _unknown(key, RESOURCE_KEYS, where)
        values[key] = _check_value(key, value, where)
    return dataclasses.replace(base, **values)


def available_clusters() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def from_dict(raw: dict, name: str = "<inline>", stage_names: list[str] | None = None) -> ClusterConfig:
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"cluster config {name} must be a mapping; valid keys: {', '.join(TOP_KEYS)}")
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, f"cluster config {name}")
    executor = raw.get("executor", "slurm")
    if executor not in EXECUTORS:
        raise ClusterConfigError(f"cluster config {name}: executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    max_array = raw.get("max_array_size", 1001)
    if not isinstance(max_array, int) or isinstance(max_array, bool) or max_array < 1:
        raise ClusterConfigError(f"cluster config {name}: max_array_size must be an integer >= 1, got {max_array!r}")
    base = _resources({k: v for k, v in raw.items() if k in RESOURCE_KEYS}, Resources(), f"cluster config {name}")
    stages = {}
    from fyp.stages import PIPELINE  # the stage names are fixed by the protocol, not by what is installed
    valid_stages = list(stage_names or PIPELINE)
    for stage, over in (raw.get("stages") or {}).items():
        if stage not in valid_stages:
            raise ClusterConfigError(f"cluster config {name}: stages.{stage} is not a stage; valid stages: {', '.join(valid_stages)}")
        stages[stage] = _resources(over or {}, base, f"cluster config {name}, stages.{stage}")
    rewards = {}
    score = stages.get("score", base)
    for reward, over in (raw.get("rewards") or {}).items():
        rewards[str(reward)] = _resources(over or {}, score, f"cluster config {name}, rewards.{reward}")
    over = raw.get("finalize") or {}
    shape = _resources(over, base, f"cluster config {name}, finalize")
    finalize = {k: getattr(shape, k) for k in over}
    return ClusterConfig(name, executor, base, max_array, stages, rewards, str(raw.get("description", "")), finalize)


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
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"cluster config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return from_dict(raw, path.stem)
