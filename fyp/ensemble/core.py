"""Mean rank and calibrated win rates over scores [N, M, K] (SPEC section 3).

scores[n, m, k]: reward model m's score of candidate k of sample n; higher = better; NaN (or +-inf) =
missing. A model with any missing score for a sample is left out of that sample; a sample with no
usable model gets a NaN row. The arithmetic lives in one place, kernels/rank_ensemble_reference.py
(the PyTorch reference the C++ and Triton kernels are tested against); these wrappers accept numpy or
torch and give back the same kind. `backend="auto"` uses the compiled kernels (C++ on CPU, Triton on
CUDA); the default, "reference", needs no compiler.
"""
from __future__ import annotations

from typing import get_args

import numpy as np
import torch

from kernels.rank_ensemble_ops import EnsembleResult, ensemble

from ..config import Ties

TIES = get_args(Ties)  # the allowed values live in fyp.config
KINDS = ("capo", "caen")


def as_scores(scores) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    if t.dim() != 3:
        raise ValueError(f"scores must be [N, M, K] (samples, reward models, candidates), got shape {tuple(t.shape)}")
    return t.to(torch.float32)


def _like(result: torch.Tensor, scores):
    return result if isinstance(scores, torch.Tensor) else result.cpu().numpy()


def run_ensemble(scores, mode: str, weights=None, *, seed: int = 0, sample_offset: int = 0,
                 backend: str = "reference") -> EnsembleResult:
    """The full result (values, winner, loser, models_used, status) as torch tensors."""
    return ensemble(as_scores(scores), mode, weights, seed=seed, sample_offset=sample_offset, backend=backend)


def mean_rank(scores, weights=None, ties: str = "average", *, backend: str = "reference"):
    """[N, K] weighted mean per-model rank (1 = best) over each sample's usable models."""
    if ties not in TIES:
        raise ValueError(f"unknown tie method {ties!r}; valid: {', '.join(TIES)}")
    return _like(run_ensemble(scores, ties, weights, backend=backend).values, scores)


def calibrated_reward(scores, kind: str = "capo", weights=None, *, backend: str = "reference"):
    """[N, K] CaPO (sigmoid) or CaEN (indicator) win rate in [0, 1], weighted over the usable models."""
    if kind not in KINDS:
        raise ValueError(f"unknown calibrated reward {kind!r}; valid: {', '.join(KINDS)}")
    return _like(run_ensemble(scores, kind, weights, backend=backend).values, scores)
