"""What one pairs run will do: the method and its settings, from the run config and CLI overrides.

Precedence: a command-line option that is set (not None) > the run's `pairs` config section > the
method's defaults in fyp.ensemble. `name` (the `pairs/<name>` group) defaults to the method, the reward
for `single`, plus `-k{k'}` when candidate scaling keeps fewer than all K candidates.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..config import ConfigError, PairsConfig
from ..ensemble import METHODS, TIES, method_plan

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PairsOptionError(ConfigError):
    """A pairs option that cannot work with this run (a ConfigError: the CLI prints it as one line)."""


@dataclass(frozen=True)
class PairsPlan:
    name: str
    method: str
    mode: str  # kernel mode: tie method, capo, caen or random
    rewards: tuple[str, ...]  # the rewards whose scores are read, in order
    weights: tuple[float, ...]
    ties: str
    temperature: float
    candidates: int  # k'
    seed: int
    backend: str
    reward: str | None = None

    def provenance(self) -> dict:
        """Attributes of pairs/<name>: enough to tell whether an existing group is this plan's output."""
        out = asdict(self)
        out["rewards"], out["weights"] = list(self.rewards), list(self.weights)
        out.pop("backend")  # every backend gives the same pairs
        return out


def parse_weights(text: str | dict | None) -> dict:
    """'clipscore=2,perception=2' -> {'clipscore': 2.0, 'perception': 2.0}."""
    if not text:
        return {}
    if isinstance(text, dict):
        return {str(k): float(v) for k, v in text.items()}
    out = {}
    for item in str(text).split(","):
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise PairsOptionError(f"--weights wants reward=value pairs separated by commas, got {item!r}")
    return out


def parse_list(text) -> list[str]:
    if not text:
        return []
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return [t.strip() for t in str(text).split(",") if t.strip()]


def resolve(cfg: PairsConfig, opts: dict, run_rewards: list[str], k_all: int, base_model: str) -> PairsPlan:
    def pick(key, default):
        value = opts.get(key)
        return default if value is None else value

    method = pick("method", cfg.method)
    if method not in METHODS:
        raise PairsOptionError(f"unknown pairs method {method!r}; valid: {', '.join(METHODS)}")
    ties = pick("ties", cfg.ties)
    if ties not in TIES:
        raise PairsOptionError(f"unknown tie method {ties!r}; valid: {', '.join(TIES)}")
    k = int(pick("candidates", cfg.candidates) or k_all)
    if not 2 <= k <= k_all:
        raise PairsOptionError(f"--candidates must be in 2..{k_all} (this run has K = {k_all}), got {k}")
    cli_weights = parse_weights(opts.get("weights"))
    weights = cli_weights or (parse_weights(cfg.weights) if method in ("linear", "softmax", "capo", "caen") else {})
    subset = parse_list(pick("rewards", None)) or list(cfg.rewards)
    reward = opts.get("reward")
    if method == "single" and not reward:
        # A single-reward run needs no flag: the one reward named in the config, or the run's only reward.
        candidates = subset if len(subset) == 1 else run_rewards if len(run_rewards) == 1 else []
        reward = candidates[0] if candidates else None
    try:
        used, w, mode = method_plan(method, run_rewards, ties=ties, weights=weights or None,
                                    temperature=float(pick("temperature", cfg.temperature)),
                                    keep=subset or None, reward=reward, base_model=base_model)
    except ValueError as exc:
        raise PairsOptionError(str(exc)) from None
    default_name = (reward if method == "single" else method) + (f"-k{k}" if k < k_all else "")
    name = pick("name", None) or default_name
    if not _NAME.match(name):
        raise PairsOptionError(f"pairs name {name!r} must be letters, digits, '.', '_' or '-'")
    backend = pick("backend", "auto")
    return PairsPlan(name=name, method=method, mode=mode, rewards=tuple(used), weights=tuple(w), ties=ties,
                     temperature=float(pick("temperature", cfg.temperature)), candidates=k,
                     seed=int(pick("seed", cfg.seed)), backend=backend, reward=reward if method == "single" else None)
