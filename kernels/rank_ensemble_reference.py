"""Pure-PyTorch reference of the rank-ensemble kernels (SPEC section 3), vectorised over samples.

This file is the executable definition the C++ and Triton kernels are tested against; the naive
per-sample loops in tests/ensemble/test_ensemble.py check it against the SPEC's words.

Input `scores [N, M, K]` (higher = better). Per sample, a model is *usable* when all K of its scores
are finite and its weight is > 0; unusable models are left out of that sample. Per usable model m the
per-candidate value v[m, k] is:

    min      1 + #{i : s_i > s_k}                                (competition rank, 1 = best)
    average  #{i : s_i > s_k} + (#{i : s_i == s_k} + 1) / 2      (fractional rank; the count includes k)
    dense    1 + #{distinct values > s_k}                        (first occurrences of values above s_k)
    caen     #{i : s_i < s_k}                                    (CaEN's indicator wins)
    capo     sum_i sigmoid(s_k - s_i) - 1/2                      (sum over all i incl. k: sigmoid(0) = 1/2
                                                                  is removed exactly; tied candidates then
                                                                  sum identical terms in the same order)

The sums S[k] = sum_m w_m v[m, k] and W = sum_m w_m run over usable models in model order, one
multiply and one add per step (no fused multiply-add), so every implementation produces the same bits
for the rank methods and CaEN. Values: E = S / W (ranks, lower = better) or R = S / (W (K - 1))
(win rates, higher = better).

Selection (winner = best, loser = worst) compares S (ranks: lower is better; win rates: higher is
better). Candidates whose S equals the best are tied: exactly for the rank methods and CaEN (their S is
exact arithmetic on half-integers and weights), within CAPO_TIE_TOL of R for CaPO (sigmoid sums differ
in their last bits between implementations). A tie is broken by a seeded hash of (seed, global sample
index, candidate index): the winner is the tied best candidate with the smallest `tie_priority`, the
loser the tied worst one with the largest (a repeated priority falls back to the candidate index), so
winner != loser whenever K >= 2, and the choice does not depend on chunking, sharding or device.

Status per sample: 0 = a pair, 1 = no usable model (NaN values, winner = loser = -1), 2 = every
candidate tied (winner/loser still chosen by the rule, but the pair carries no preference).
"""
from __future__ import annotations

import torch

MODES = ("min", "average", "dense", "caen", "capo")
RANK_MODES = ("min", "average", "dense")
MODE_IDS = {name: i for i, name in enumerate(MODES)}
CAPO_TIE_TOL = 1e-5  # in units of R (a win rate in [0, 1]); cross-implementation error is ~1e-7
MAX_CANDIDATES = 1024  # tie codes pack (priority << 10) | k
STATUS_OK, STATUS_NO_MODEL, STATUS_ALL_TIED = 0, 1, 2
STATUS_NAMES = {STATUS_OK: "ok", STATUS_NO_MODEL: "no usable reward model", STATUS_ALL_TIED: "all candidates tied"}

_M32 = 0xFFFFFFFF
# Multiplicative constants of the tie hash (golden ratio, murmur3's fmix32); shared with C++ and Triton.
HASH_SEED, HASH_SAMPLE, HASH_CANDIDATE = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
FMIX_1, FMIX_2 = 0x85EBCA6B, 0xC2B2AE35


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2^32 for int64 `a` in [0, 2^32), without int64 overflow (split c in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (a * lo + (((a * hi) & 0xFFFF) << 16)) & _M32


def seed_term(seed: int) -> int:
    """The seed's contribution to the tie hash, (seed * HASH_SEED) mod 2^32 (computed once on the host)."""
    return ((seed & _M32) * HASH_SEED) & _M32


def tie_priority(seed: int, sample_index: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] int64 in [0, 2^32): murmur3's finaliser of seed, global sample index and candidate index."""
    n = sample_index.to(torch.int64).reshape(-1, 1) & _M32
    cand = torch.arange(k, dtype=torch.int64, device=n.device).reshape(1, -1)
    h = (seed_term(seed) + _mul32(n, HASH_SAMPLE) + _mul32(cand, HASH_CANDIDATE)) & _M32
    h = h ^ (h >> 16)
    h = _mul32(h, FMIX_1)
    h = h ^ (h >> 13)
    h = _mul32(h, FMIX_2)
    return h ^ (h >> 16)


def check_inputs(scores: torch.Tensor, weights, mode: str) -> torch.Tensor:
    """Validate shapes and options; return the weights as a float32 [M] tensor on the scores' device."""
    if mode not in MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; valid: {', '.join(MODES)}")
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
        raise ValueError(f"scores must be a [N, M, K] tensor, got {getattr(scores, 'shape', type(scores))}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    n, m, k = scores.shape
    if k > MAX_CANDIDATES:
        raise ValueError(f"at most {MAX_CANDIDATES} candidates per sample, got K = {k}")
    if mode in ("caen", "capo") and k < 2:
        raise ValueError(f"{mode} win rates need K >= 2 candidates, got K = {k}")
    if weights is None:
        return torch.ones(m, dtype=torch.float32, device=scores.device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=scores.device).reshape(-1)
    if w.numel() != m:
        raise ValueError(f"{w.numel()} weights for {m} reward models")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    return w


def per_model_values(s: torch.Tensor, mode: str) -> torch.Tensor:
    """[n, M, K] float32 per-model values v[m, k] (see the module docstring) by pairwise comparison."""
    a = s.unsqueeze(-1)  # candidate k on dim -2
    b = s.unsqueeze(-2)  # the others, i, on dim -1
    if mode == "capo":
        return torch.sigmoid(a - b).sum(-1) - 0.5
    if mode == "caen":
        return (b < a).sum(-1, dtype=torch.int32).to(torch.float32)
    greater = b > a
    if mode == "min":
        return 1.0 + greater.sum(-1, dtype=torch.int32).to(torch.float32)
    if mode == "average":
        equal = (b == a).sum(-1, dtype=torch.int32)  # includes k itself
        return greater.sum(-1, dtype=torch.int32).to(torch.float32) + (equal + 1).to(torch.float32) * 0.5
    k = s.shape[-1]
    before = torch.ones(k, k, dtype=torch.bool, device=s.device).triu(1)  # [j, i]: j < i
    duplicate = ((b == a) & before).any(-2)  # value of i already seen at some j < i
    return 1.0 + (greater & ~duplicate.unsqueeze(-2)).sum(-1, dtype=torch.int32).to(torch.float32)


def _ensemble_chunk(s, w, mode, seed, index):
    n, m, k = s.shape
    usable = torch.isfinite(s).all(-1) & (w > 0)  # [n, M]
    values = per_model_values(s, mode)
    total = torch.zeros(n, k, dtype=torch.float32, device=s.device)
    weight = torch.zeros(n, dtype=torch.float32, device=s.device)
    for j in range(m):  # model order, one multiply and one add per step: the bits every kernel matches
        use = usable[:, j]
        total = torch.where(use[:, None], total + w[j] * values[:, j], total)
        weight = torch.where(use, weight + w[j], weight)

    rank_like = mode in RANK_MODES
    scale = weight if rank_like else weight * (k - 1)
    out = total / scale[:, None]
    key = total if rank_like else -total  # lower key = better
    tol = (CAPO_TIE_TOL * scale)[:, None] if mode == "capo" else torch.zeros(n, 1, device=s.device)
    best = key.min(-1, keepdim=True).values
    worst = key.max(-1, keepdim=True).values
    code = (tie_priority(seed, index, k) << 10) | torch.arange(k, device=s.device)
    big = torch.iinfo(torch.int64).max
    winner = torch.where(key <= best + tol, code, big).min(-1).values & 1023
    loser = torch.where(key >= worst - tol, code, -1).max(-1).values & 1023

    no_model = weight == 0
    status = torch.where((worst - best).squeeze(-1) <= tol.squeeze(-1), STATUS_ALL_TIED, STATUS_OK)
    status = torch.where(no_model, STATUS_NO_MODEL, status).to(torch.int8)
    out = torch.where(no_model[:, None], float("nan"), out)
    winner = torch.where(no_model, -1, winner).to(torch.int32)
    loser = torch.where(no_model, -1, loser).to(torch.int32)
    return out, winner, loser, usable.sum(-1).to(torch.int32), status


def rank_ensemble_reference(scores: torch.Tensor, weights=None, mode: str = "average", seed: int = 0,
                            sample_offset: int = 0, chunk: int = 4096):
    """(values [N, K] f32, winner [N] i32, loser [N] i32, models_used [N] i32, status [N] i8).

    `sample_offset` is the global index of scores[0] (it seeds the tie-break); `chunk` bounds the
    [chunk, M, K, K] pairwise temporaries.
    """
    w = check_inputs(scores, weights, mode)
    s = scores.to(torch.float32)
    n = s.shape[0]
    parts = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        index = torch.arange(sample_offset + start, sample_offset + stop, device=s.device)
        parts.append(_ensemble_chunk(s[start:stop], w, mode, seed, index))
    if not parts:
        k = s.shape[2]
        empty = torch.empty(0, dtype=torch.int32, device=s.device)
        return (torch.empty(0, k, device=s.device), empty, empty.clone(), empty.clone(),
                torch.empty(0, dtype=torch.int8, device=s.device))
    return tuple(torch.cat(items) for items in zip(*parts))
