"""Triton rank-ensemble kernels: per-model ranking, weighting and winner/loser selection in one pass.

`rank_ensemble_triton` launches one of three variants. "rows" (kernels/rank_ensemble_triton_rows.py,
the default for K <= 32) gives each thread one sample and compares registers. This file holds the
other two, one kernel with a constexpr switch, where a program owns BLOCK_N samples spread over lanes:
for each model it loads the [BLOCK_N, K] score tile once, compares every candidate with every other one
(no sort), turns the counts into the model's value (rank or win rate) and adds it to the weighted sum.
LOOP walks the other candidate i and updates [BLOCK_N, K] counters element-wise (the default above
K = 32, up to 128); the tile variant forms a [BLOCK_N, K, K] broadcast and reduces it (cross-lane
reductions). After the last model it divides, picks winner and loser with the seeded tie-break, and
writes values [N, K] f32 plus four [N] vectors. On an H200 the loop variant was issue-bound (~9 SASS
instructions per compared pair; 0.85 ms at N = 1e6, M = 9, K = 16), which is why rows exists.

Semantics, bit for bit for the rank methods and CaEN: kernels/rank_ensemble_reference.py. The launch
passes enable_fp_fusion=False so `total + w * v` is not contracted into an FMA (the reference rounds
the product and the sum separately). Under TRITON_INTERPRET=1 (CPU tests) the same code runs in
numpy; no libdevice, no autotune (both fail in the interpreter).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .rank_ensemble_reference import HASH_CANDIDATE, HASH_SAMPLE, FMIX_1, FMIX_2

if hasattr(triton, "constexpr_function"):
    from .rank_ensemble_triton_rows import MAX_ROWS_CANDIDATES, rank_ensemble_rows_kernel
else:  # an older Triton: the loop variant only
    MAX_ROWS_CANDIDATES, rank_ensemble_rows_kernel = 0, None

MAX_TRITON_CANDIDATES = 128  # the [BLOCK_N, K, K] tile must fit in registers
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _model_values_loop(row_ptrs, s, cols, row_ok, K, MODE: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """One model's v [BLOCK_N, BLOCK_K] by a loop over the compared-with candidate i: each step loads
    s_i of every sample (an L1 hit: the tile was just read) and updates [BLOCK_N, K] counters element-wise,
    with no cross-lane reductions (dense needs one per step for its first-occurrence test)."""
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    count = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    equal = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    for i in range(K):
        c = tl.load(row_ptrs + i, mask=row_ok, other=0.0)[:, None]
        if MODE == 4:
            acc += tl.sigmoid(s - c)  # i in index order, self included (sigmoid(0) = 1/2)
        elif MODE == 3:
            count += tl.where(c < s, 1, 0)
        elif MODE == 2:
            dup = tl.sum(tl.where((s == c) & (cols[None, :] < i), 1, 0), axis=1)  # s_i seen at some j < i
            count += tl.where((c > s) & (dup == 0)[:, None], 1, 0)
        else:
            count += tl.where(c > s, 1, 0)
            if MODE == 1:
                equal += tl.where(c == s, 1, 0)
    if MODE == 4:
        v = acc - 0.5
    elif MODE == 3:
        v = count.to(tl.float32)
    elif MODE == 1:
        v = count.to(tl.float32) + (equal + 1).to(tl.float32) * 0.5
    else:
        v = 1.0 + count.to(tl.float32)
    return v


@triton.jit(do_not_specialize=["seed_term", "sample_offset"])
def _rank_ensemble_forward_kernel(
    scores_ptr, weights_ptr, values_ptr, winner_ptr, loser_ptr, used_ptr, status_ptr,
    N, M, K, seed_term, sample_offset, capo_tol,
    MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LOOP: tl.constexpr,
    H_SAMPLE: tl.constexpr, H_CAND: tl.constexpr, H_FMIX1: tl.constexpr, H_FMIX2: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    col_ok = cols < K
    tile_ok = row_ok[:, None] & col_ok[None, :]
    other_ok = col_ok[None, None, :]  # the compared-with candidate i (axis 2) exists
    base = rows.to(tl.int64) * M * K

    total = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    weight = tl.zeros([BLOCK_N], dtype=tl.float32)
    used = tl.zeros([BLOCK_N], dtype=tl.int32)
    for m in range(M):
        w = tl.load(weights_ptr + m)
        s = tl.load(scores_ptr + base[:, None] + m * K + cols[None, :], mask=tile_ok, other=0.0)
        finite = (s == s) & (tl.abs(s) != float("inf"))
        missing = tl.sum(tl.where(tile_ok & ~finite, 1, 0), axis=1)
        usable = (missing + tl.where(w > 0, 0, 1)) == 0  # every score finite and a positive weight

        if LOOP:
            v = _model_values_loop(scores_ptr + base + m * K, s, cols, row_ok, K, MODE, BLOCK_N, BLOCK_K)
        else:
            a = s[:, :, None]  # candidate k (axis 1)
            b = s[:, None, :]  # candidate i (axis 2)
            if MODE == 4:  # capo: sum_i sigmoid(s_k - s_i) - 1/2
                v = tl.sum(tl.where(other_ok, tl.sigmoid(a - b), 0.0), axis=2) - 0.5
            elif MODE == 3:  # caen: #{i : s_i < s_k}
                v = tl.sum(tl.where((b < a) & other_ok, 1, 0), axis=2).to(tl.float32)
            else:
                greater = tl.sum(tl.where((b > a) & other_ok, 1, 0), axis=2)
                if MODE == 0:  # min
                    v = 1.0 + greater.to(tl.float32)
                elif MODE == 1:  # average: #greater + (#equal incl. k + 1) / 2
                    equal = tl.sum(tl.where((b == a) & other_ok, 1, 0), axis=2)
                    v = greater.to(tl.float32) + (equal + 1).to(tl.float32) * 0.5
                else:  # dense: count only first occurrences (no equal value at a lower index)
                    j_before_i = cols[None, :, None] < cols[None, None, :]
                    dup = tl.sum(tl.where((a == b) & j_before_i & col_ok[None, :, None], 1, 0), axis=1)  # [BN, i]
                    first = (dup == 0)[:, None, :]
                    v = 1.0 + tl.sum(tl.where((b > a) & first & other_ok, 1, 0), axis=2).to(tl.float32)
        term = w * v
        total = tl.where(usable[:, None], total + term, total)
        weight = tl.where(usable, weight + w, weight)
        used += usable.to(tl.int32)

    if MODE <= 2:
        scale = weight
        key = total
    else:
        scale = weight * (K - 1).to(tl.float32)
        key = -total
    no_model = used == 0
    # IEEE round-to-nearest division: plain `/` lowers to the approximate div.full.f32 on NVIDIA GPUs,
    # 2 ulp off the reference (seen on an H200: 1.9e-6 at ranks ~9).
    values = tl.math.div_rn(total, scale[:, None])
    values = tl.where(no_model[:, None], float("nan"), values)
    tl.store(values_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], values, mask=tile_ok)

    if MODE == 4:
        tol = capo_tol * scale
    else:
        tol = tl.zeros([BLOCK_N], dtype=tl.float32)
    best = tl.min(tl.where(col_ok[None, :], key, float("inf")), axis=1)
    worst = tl.max(tl.where(col_ok[None, :], key, -float("inf")), axis=1)

    # seeded tie-break: murmur3 fmix32 of (seed, global sample index, candidate), uint32 wrap-around
    sample = (sample_offset + rows).to(tl.uint32)
    h = seed_term.to(tl.uint32) + sample[:, None] * H_SAMPLE + cols.to(tl.uint32)[None, :] * H_CAND
    h = h ^ (h >> 16)
    h = h * H_FMIX1
    h = h ^ (h >> 13)
    h = h * H_FMIX2
    h = h ^ (h >> 16)
    code = (h.to(tl.int64) << 10) | cols[None, :].to(tl.int64)
    win_code = tl.min(tl.where(col_ok[None, :] & (key <= (best + tol)[:, None]), code, 1 << 62), axis=1)
    lose_code = tl.max(tl.where(col_ok[None, :] & (key >= (worst - tol)[:, None]), code, -1), axis=1)
    winner = tl.where(no_model, -1, (win_code & 1023).to(tl.int32))
    loser = tl.where(no_model, -1, (lose_code & 1023).to(tl.int32))
    status = tl.where(no_model, 1, tl.where(worst - best <= tol, 2, 0)).to(tl.int8)
    tl.store(winner_ptr + rows, winner, mask=row_ok)
    tl.store(loser_ptr + rows, loser, mask=row_ok)
    tl.store(used_ptr + rows, used, mask=row_ok)
    tl.store(status_ptr + rows, status, mask=row_ok)


VARIANTS = ("rows", "loop", "tile")
HASH_CONSTANTS = dict(H_SAMPLE=HASH_SAMPLE, H_CAND=HASH_CANDIDATE, H_FMIX1=FMIX_1, H_FMIX2=FMIX_2)


def default_variant(k: int) -> str:
    """rows (one sample per thread) up to K = 32; beyond, its unrolled K^2 code and 3 K registers per
    thread grow too large, and the loop variant takes over (also on a Triton without rows: limit 0)."""
    return "rows" if k <= MAX_ROWS_CANDIDATES else "loop"


def default_maxnreg(k: int) -> int:
    """The rows kernel's register cap: ptxas takes ~175 registers at K = 16 unless capped; 96 compiles
    without spills and lets 5 instead of 2 blocks of 4 warps share an SM. K = 32 needs 128."""
    return 96 if triton.next_power_of_2(k) <= 16 else 128


def default_block_n(k: int, variant: str = "loop", num_warps: int = 4) -> int:
    """Samples per program. rows: one per thread. loop: [BLOCK_N, K] tiles of ~256 elements (H200 sweep
    at N=1e6, M=9, K=16: BLOCK_N=16 x 2 warps best, 770 GB/s vs 571 at 64 x 4). tile: a [BLOCK_N, K, K]
    comparison tile of ~8192 elements. benchmarks/gpu/rank_ensemble.py sweeps all three."""
    block_k = triton.next_power_of_2(max(k, 1))
    if variant == "rows":
        return 32 * num_warps
    if variant == "loop":
        return max(1, min(256, 256 // block_k))
    return max(1, min(128, 8192 // (block_k * block_k)))


def runtime_sizes(variant: str, n: int, m: int, k: int) -> tuple[int, ...]:
    """The size arguments after the output pointers: rows takes K as a constexpr, the others at run time."""
    return (n, m) if variant == "rows" else (n, m, k)


def kernel_and_constants(variant: str, k: int, mode_id: int, block_n: int, *, fast_rcp: bool,
                         prefetch: bool = False):
    """The jitted kernel of `variant` and its constexpr arguments (shared by the launcher and the SASS
    report, so the report compiles exactly what runs)."""
    block_k = triton.next_power_of_2(k)
    if variant == "rows":
        return rank_ensemble_rows_kernel, dict(
            K=k, MODE=mode_id, BLOCK_N=block_n, BLOCK_K=block_k, LOG_K=block_k.bit_length() - 1,
            FAST_RCP=fast_rcp, PREFETCH=prefetch, **HASH_CONSTANTS)
    return _rank_ensemble_forward_kernel, dict(MODE=mode_id, BLOCK_N=block_n, BLOCK_K=block_k,
                                               LOOP=variant == "loop", **HASH_CONSTANTS)


def rank_ensemble_triton(scores: torch.Tensor, weights: torch.Tensor, mode_id: int, seed_term: int,
                         sample_offset: int, capo_tol: float, block_n: int | None = None, num_warps: int | None = None,
                         variant: str | None = None, maxnreg: int | None = None, prefetch: bool = False):
    """Launch a kernel. `variant` picks how candidates are compared: "rows" (one sample per thread,
    registers only; default for K <= 32), "loop" (a loop over the compared-with candidate with [BLOCK_N, K]
    element-wise updates; default above 32) or "tile" (one [BLOCK_N, K, K] broadcast with reductions).
    `maxnreg` caps registers per thread (rows default: 96 for K <= 16, 128 above; 0 = no cap); `prefetch`
    (rows) loads the next model's tile before comparing the current one: +10% instructions, better
    latency hiding; off until a GPU sweep says otherwise."""
    n, m, k = scores.shape
    if k > MAX_TRITON_CANDIDATES:
        raise ValueError(f"the Triton rank-ensemble kernel handles K <= {MAX_TRITON_CANDIDATES}, got K = {k}; "
                         "use backend='reference'")
    variant = variant or default_variant(k)
    if variant not in VARIANTS:
        raise ValueError(f"unknown Triton variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if variant == "rows" and rank_ensemble_rows_kernel is None:
        raise ValueError(f"the rows variant needs Triton >= 3.5 (this is {triton.__version__}); use variant='loop'")
    if variant == "rows" and k > MAX_ROWS_CANDIDATES:
        raise ValueError(f"the rows variant handles K <= {MAX_ROWS_CANDIDATES}, got K = {k}; use variant='loop'")
    scores = scores.contiguous()
    weights = weights.contiguous()
    device = scores.device
    values = torch.empty(n, k, dtype=torch.float32, device=device)
    winner = torch.empty(n, dtype=torch.int32, device=device)
    loser = torch.empty(n, dtype=torch.int32, device=device)
    used = torch.empty(n, dtype=torch.int32, device=device)
    status = torch.empty(n, dtype=torch.int8, device=device)
    if n == 0:
        return values, winner, loser, used, status
    num_warps = num_warps or (4 if variant == "rows" else 2)
    block_n = block_n or default_block_n(k, variant, num_warps)
    grid = (triton.cdiv(n, block_n),)
    seed_i32 = seed_term - (1 << 32) if seed_term >= (1 << 31) else seed_term  # same bits, an i32 argument
    launch = {} if _INTERPRET else {"num_warps": num_warps, "enable_fp_fusion": False}
    if variant == "rows":
        maxnreg = default_maxnreg(k) if maxnreg is None else maxnreg
        if maxnreg and not _INTERPRET:
            launch["maxnreg"] = maxnreg
    kernel, constants = kernel_and_constants(variant, k, mode_id, block_n, fast_rcp=not _INTERPRET, prefetch=prefetch)
    kernel[grid](scores, weights, values, winner, loser, used, status, *runtime_sizes(variant, n, m, k),
                 seed_i32, sample_offset, capo_tol, **constants, **launch)
    return values, winner, loser, used, status
    _rank_ensemble_forward_kernel[grid](
        scores, weights, values, winner, loser, used, status,
        n, m, k, seed_i32, sample_offset, capo_tol,
        MODE=mode_id, BLOCK_N=block_n, BLOCK_K=triton.next_power_of_2(k), LOOP=variant == "loop", **hashes, **launch,
    )
    return values, winner, loser, used, status
