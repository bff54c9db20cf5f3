"""Public entry points of the rank-ensemble kernels: `rank_ensemble` and `calibrated_reward`.

Backends: "triton" (CUDA tensors, or CPU under TRITON_INTERPRET=1), "cpp" (CPU tensors, the C++/OpenMP
extension built on first use), "reference" (pure PyTorch, any device). "auto" picks Triton for CUDA
tensors and C++ for CPU tensors. All of them compute the definition in
kernels/rank_ensemble_reference.py and agree with it: indices exactly, values to 1e-6.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .rank_ensemble_reference import (CAPO_TIE_TOL, MODE_IDS, check_inputs, rank_ensemble_reference,
                                      seed_term)

BACKENDS = ("auto", "reference", "cpp", "triton")
TIES = ("min", "average", "dense")
KINDS = ("capo", "caen")


class EnsembleResult(NamedTuple):
    values: torch.Tensor  # [N, K] float32: mean rank (lower = better) or win rate (higher = better); NaN row = no model
    winner: torch.Tensor  # [N] int32 candidate index, -1 when no model was usable
    loser: torch.Tensor  # [N] int32
    models_used: torch.Tensor  # [N] int32 usable models of each sample
    status: torch.Tensor  # [N] int8: 0 pair, 1 no usable model, 2 all candidates tied


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "cpp"
    if backend == "cpp" and device.type != "cpu":
        raise ValueError(f"backend 'cpp' runs on CPU tensors, got a {device.type} tensor")
    return backend


def ensemble(scores: torch.Tensor, mode: str, weights=None, *, seed: int = 0, sample_offset: int = 0,
             backend: str = "auto") -> EnsembleResult:
    """The shared implementation of both entry points; `mode` is a tie method or a win-rate kind."""
    w = check_inputs(scores, weights, mode)
    backend = _resolve_backend(backend, scores.device)
    if backend == "reference":
        out = rank_ensemble_reference(scores, w, mode, seed=seed, sample_offset=sample_offset)
    else:
        s = scores.to(torch.float32).contiguous()
        args = (s, w, MODE_IDS[mode], seed_term(seed), int(sample_offset), CAPO_TIE_TOL)
        if backend == "cpp":
            from .rank_ensemble_cpp import rank_ensemble_cpp
            out = rank_ensemble_cpp(*args)
        else:
            from .rank_ensemble_triton import rank_ensemble_triton
            out = rank_ensemble_triton(*args)
    return EnsembleResult(*out)


def rank_ensemble(scores: torch.Tensor, weights=None, ties: str = "average", *, seed: int = 0,
                  sample_offset: int = 0, backend: str = "auto", return_pairs: bool = False):
    """Weighted mean per-model rank [N, K] (1 = best) of scores [N, M, K] (higher = better, NaN = missing).

    With return_pairs=True, an EnsembleResult with the winner (lowest mean rank) and loser (highest)
    chosen by the seeded tie-break; `sample_offset` is the global index of scores[0].
    """
    if ties not in TIES:
        raise ValueError(f"unknown tie method {ties!r}; valid: {', '.join(TIES)}")
    result = ensemble(scores, ties, weights, seed=seed, sample_offset=sample_offset, backend=backend)
    return result if return_pairs else result.values


def calibrated_reward(scores: torch.Tensor, kind: str = "capo", weights=None, *, seed: int = 0,
                      sample_offset: int = 0, backend: str = "auto", return_pairs: bool = False):
    """CaPO (sigmoid) or CaEN (indicator) win rate [N, K] in [0, 1], weighted over the usable models.

    With return_pairs=True, an EnsembleResult: winner = highest win rate, loser = lowest.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown calibrated reward {kind!r}; valid: {', '.join(KINDS)}")
    result = ensemble(scores, kind, weights, seed=seed, sample_offset=sample_offset, backend=backend)
    return result if return_pairs else result.values
