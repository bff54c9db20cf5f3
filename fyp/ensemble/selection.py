"""Preference pairs from scores: winner = best candidate, loser = worst, for every method of SPEC 3.

Methods and the ensemble they run:

    ensemble   mean rank over all rewards, w = 1 (Algorithm 1, "vanilla")
    filtered   mean rank over a subset (default: all but VQAScore, as the paper)
    linear     mean rank, w_m = judge score g_m (default: the paper's GPT-4 column for the base model)
    softmax    mean rank, w = softmax(g / T)
    capo       CaPO sigmoid win rate, w = 1 unless given; margin = R(w) - R(l)
    caen       CaEN indicator win rate, official weights unless given; margin = R(w) - R(l)
    single     one reward model's ranking (the paper's single-reward baselines)
    random     two distinct candidates drawn by the seeded hash (Random baseline)

Tie-break (documented in docs/ensemble.md): candidates tied for best (worst) are ordered by a seeded
hash of (seed, global sample index, candidate index); the winner is the tied best with the smallest
hash, the loser the tied worst with the largest. Random takes the smallest and largest hash over all
candidates, a uniformly random ordered pair of distinct candidates. A sample whose candidates all tie
gives no pair (it carries no preference), nor does one with no usable reward model.

Candidate scaling: `candidates=k'` keeps the first k' candidates and ranks them among themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import numpy as np
import torch

from kernels.rank_ensemble_reference import STATUS_NAMES, STATUS_OK, tie_priority

from ..config import PairsMethod
from .core import as_scores, run_ensemble
from .weights import PAPER_JUDGE_SCORES, caen_weights, filtered_subset, linear_weights, softmax_weights

METHODS = get_args(PairsMethod)  # the allowed values live in fyp.config
WEIGHTED_METHODS = ("linear", "softmax", "capo", "caen")  # the methods that take `weights`
MARGIN_METHODS = ("capo", "caen")


@dataclass
class PairSelection:
    winner: np.ndarray  # [N] int32, -1 where no pair
    loser: np.ndarray  # [N] int32, -1 where no pair
    margin: np.ndarray  # [N] float32, R(w) - R(l) for capo/caen, NaN otherwise
    valid: np.ndarray  # [N] bool
    status: np.ndarray  # [N] int8: 0 pair, 1 no usable model, 2 all candidates tied
    models_used: np.ndarray  # [N] int32
    method: str
    mode: str  # the kernel mode: a tie method, capo, caen or random
    rewards: list[str]  # the rewards the method used, in score order
    weights: list[float]  # one per entry of `rewards`
    candidates: int  # k'
    seed: int
    left_out: dict = field(default_factory=dict)  # reward -> samples it was left out of (missing scores)

    def counts(self) -> dict:
        out = {"samples": int(self.valid.size), "pairs": int(self.valid.sum())}
        for code, name in STATUS_NAMES.items():
            if code != STATUS_OK:
                out[name] = int((self.status == code).sum())
        return out


def method_plan(method: str, rewards: list[str], *, ties: str = "average", weights: dict | None = None,
                temperature: float = 1.0, keep: list[str] | None = None, reward: str | None = None,
                base_model: str = "flux-fill") -> tuple[list[str], list[float], str]:
    """(rewards used, their weights, kernel mode) of a method; eager errors for bad combinations."""
    if method not in METHODS:
        raise ValueError(f"unknown pairs method {method!r}; valid: {', '.join(METHODS)}")
    if weights and method not in WEIGHTED_METHODS:
        raise ValueError(f"method {method!r} takes no weights (weighted methods: {', '.join(WEIGHTED_METHODS)})")
    if method == "random":
        return [], [], "random"
    if method == "single":
        if not reward:
            raise ValueError(f"method 'single' needs a reward model (one of: {', '.join(rewards)})")
        if reward not in rewards:
            raise ValueError(f"reward {reward!r} is not scored in this run; scored: {', '.join(rewards)}")
        return [reward], [1.0], ties
    used = filtered_subset(rewards, keep) if method == "filtered" or keep else list(rewards)
    if not used:
        raise ValueError("no reward models to ensemble")
    if method in ("ensemble", "filtered"):
        return used, [1.0] * len(used), ties
    judge = weights or PAPER_JUDGE_SCORES.get(base_model)
    if method == "linear":
        return used, linear_weights(judge or {}, used), ties
    if method == "softmax":
        return used, softmax_weights(judge or {}, used, temperature), ties
    if method == "caen":
        return used, caen_weights(used, weights), "caen"
    # capo: the SPEC's plain mean (w = 1) unless weights are given (validated like CaEN's)
    return used, (caen_weights(used, weights) if weights else [1.0] * len(used)), "capo"


def random_pairs(n: int, k: int, seed: int, sample_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct candidates per sample: smallest and largest tie hash (a uniform ordered pair)."""
    if k < 2:
        raise ValueError(f"random pairs need K >= 2 candidates, got {k}")
    index = torch.arange(sample_offset, sample_offset + n)
    code = (tie_priority(seed, index, k) << 10) | torch.arange(k)
    return ((code.min(-1).values & 1023).to(torch.int32).numpy(),
            (code.max(-1).values & 1023).to(torch.int32).numpy())


def select_pairs(scores, rewards: list[str], method: str = "ensemble", *, ties: str = "average",
                 weights: dict | None = None, temperature: float = 1.0, keep: list[str] | None = None,
                 reward: str | None = None, candidates: int = 0, seed: int = 0, sample_offset: int = 0,
                 base_model: str = "flux-fill", backend: str = "reference") -> PairSelection:
    """Winner/loser per sample of scores [N, M, K] (M = len(rewards)); see the module docstring."""
    used, w, mode = method_plan(method, rewards, ties=ties, weights=weights, temperature=temperature, keep=keep,
                                reward=reward, base_model=base_model)
    return pairs_from_plan(scores, rewards, method, used, w, mode, candidates=candidates, seed=seed,
                           sample_offset=sample_offset, backend=backend)


def pairs_from_plan(scores, rewards: list[str], method: str, used: list[str], weights: list[float], mode: str, *,
                    candidates: int = 0, seed: int = 0, sample_offset: int = 0,
                    backend: str = "reference") -> PairSelection:
    """select_pairs after method_plan: the rewards `used` (a subset of `rewards`), their weights, the mode."""
    s = as_scores(scores)
    n, m, k_all = s.shape
    if m != len(rewards):
        raise ValueError(f"scores have {m} reward models but {len(rewards)} reward names were given")
    k = candidates or k_all
    if not 2 <= k <= k_all:
        raise ValueError(f"candidates (k') must be in 2..{k_all}, got {candidates}")
    if mode == "random":
        winner, loser = random_pairs(n, k, seed, sample_offset)
        return PairSelection(winner, loser, np.full(n, np.nan, np.float32), np.ones(n, bool),
                             np.zeros(n, np.int8), np.zeros(n, np.int32), method, mode, [], [], k, seed)
    columns = [rewards.index(r) for r in used]
    # all rewards, all candidates: the scores themselves (a fancy-indexed copy is 576 MB at 1e6 x 9 x 16)
    sub = s if columns == list(range(m)) and k == k_all else s[:, columns, :k]
    result = run_ensemble(sub, mode, weights, seed=seed, sample_offset=sample_offset, backend=backend)
    status = result.status.cpu().numpy()
    valid = status == STATUS_OK
    winner = np.where(valid, result.winner.cpu().numpy(), -1).astype(np.int32)
    loser = np.where(valid, result.loser.cpu().numpy(), -1).astype(np.int32)
    margin = np.full(n, np.nan, np.float32)
    if method in MARGIN_METHODS and valid.any():
        values = result.values.cpu().numpy()
        rows = np.nonzero(valid)[0]
        margin[rows] = values[rows, winner[rows]] - values[rows, loser[rows]]
    unusable = ~torch.isfinite(sub).all(-1).cpu().numpy()  # [N, M'] a missing score: left out
    left_out = {r: int(unusable[:, j].sum()) for j, r in enumerate(used)}
    return PairSelection(winner, loser, margin, valid, status, result.models_used.cpu().numpy(), method, mode,
                         list(used), [float(v) for v in weights], k, seed, left_out)
