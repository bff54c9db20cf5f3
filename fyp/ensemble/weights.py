"""Weights of the ensemble variants (SPEC section 3): filtered subsets, linear, softmax, CaEN's official.

Linear and softmax weights start from one judge score per reward model g_m (the paper: the GPT-4 score
of the model trained on that reward's pairs, its Tables 1 and 2, BrushBench column). They are kept here
per base model so a run can use the paper's numbers until it has its own calibration run.
"""
from __future__ import annotations

import math

# GPT-4 judge score on BrushBench of the model aligned with each single reward (paper Tables 1-2).
PAPER_JUDGE_SCORES = {
    "flux-fill": {"clipscore": 83.942, "aesthetic": 83.950, "imagereward": 84.176, "pickscore": 84.188,
                  "hpsv2": 84.699, "vqascore": 83.854, "unifiedreward": 83.950, "perception": 84.022,
                  "hpsv3": 84.615},
    "brushnet": {"clipscore": 79.661, "aesthetic": 81.603, "imagereward": 80.341, "pickscore": 82.726,
                 "hpsv2": 79.914, "vqascore": 78.877, "unifiedreward": 80.333, "perception": 80.277,
                 "hpsv3": 80.623},
}
# CaEN's official weights: CLIPScore 2, Perception 2, the other seven 5/7 each (SPEC section 3).
CAEN_SPECIAL = {"clipscore": 2.0, "perception": 2.0}
CAEN_OTHER = 5.0 / 7.0
# The paper's filtered ensemble drops VQAScore.
FILTERED_DROP_DEFAULT = ("vqascore",)


class WeightError(ValueError):
    """Weights that do not fit the rewards they are meant for."""


def filtered_subset(rewards: list[str], keep: list[str] | None = None,
                    drop: tuple[str, ...] | list[str] = FILTERED_DROP_DEFAULT) -> list[str]:
    """The rewards of a filtered ensemble: `keep` if given (each must exist), else `rewards` minus `drop`."""
    if keep:
        unknown = [r for r in keep if r not in rewards]
        if unknown:
            raise WeightError(f"filtered rewards {unknown} are not among the run's rewards: {', '.join(rewards)}")
        return [r for r in rewards if r in keep]
    missing = [r for r in drop if r not in rewards]
    if missing:
        raise WeightError(f"the default filtered ensemble drops {', '.join(drop)}, which this run does not score; "
                          "name the rewards to keep instead")
    subset = [r for r in rewards if r not in drop]
    if not subset:
        raise WeightError("the filtered ensemble would keep no reward model")
    return subset


def _lookup(values: dict, rewards: list[str], what: str) -> list[float]:
    missing = [r for r in rewards if r not in values]
    if missing:
        raise WeightError(f"{what} has no value for {', '.join(missing)}; give one per reward ({', '.join(rewards)})")
    out = [float(values[r]) for r in rewards]
    if not all(math.isfinite(v) for v in out):
        raise WeightError(f"{what} must be finite, got {dict(zip(rewards, out))}")
    return out


def linear_weights(judge_scores: dict, rewards: list[str]) -> list[float]:
    """w_m = g_m, the judge score of reward m (must be > 0)."""
    w = _lookup(judge_scores, rewards, "linear weights")
    if any(v <= 0 for v in w):
        raise WeightError(f"linear weights must be > 0, got {dict(zip(rewards, w))}")
    return w


def softmax_weights(judge_scores: dict, rewards: list[str], temperature: float = 1.0) -> list[float]:
    """w = softmax(g / T) (computed stably: the max is subtracted first)."""
    if not temperature > 0:
        raise WeightError(f"softmax temperature must be > 0, got {temperature}")
    g = [v / temperature for v in _lookup(judge_scores, rewards, "softmax judge scores")]
    top = max(g)
    e = [math.exp(v - top) for v in g]
    total = sum(e)
    return [v / total for v in e]


def caen_weights(rewards: list[str], overrides: dict | None = None) -> list[float]:
    """CaEN's official weights for `rewards` (2 for CLIPScore and Perception, 5/7 otherwise), or overrides."""
    if overrides:
        w = _lookup(overrides, rewards, "CaEN weights")
    else:
        w = [CAEN_SPECIAL.get(r, CAEN_OTHER) for r in rewards]
    if any(v < 0 for v in w) or not any(v > 0 for v in w):
        raise WeightError(f"CaEN weights must be >= 0 with one > 0, got {dict(zip(rewards, w))}")
    return w
