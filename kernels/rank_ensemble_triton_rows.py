"""Triton rank-ensemble kernel, one sample per thread ("rows" variant; the default for K <= 32).

Why a second kernel: the loop/tile kernel in rank_ensemble_triton.py spreads a sample's K candidates
over lanes, so each of the K^2 comparisons per model costs a load or a cross-lane step plus a
compare-and-select, about 9 SASS instructions per (candidate, compared-with) pair on sm_90. On an H200
it ran at 0.85 ms for N = 1e6, M = 9, K = 16: issue-bound, not HBM-bound. Here each thread owns one
sample: per model it loads the [BLOCK_N, K] tile coalesced, splits it into K per-thread columns (the
compiler turns the split tree into one shared-memory transpose), and compares registers. Each
unordered pair (a < b) is compared once and credited to both candidates, written in one canonical
form (`c[a] op c[b]`) so the compiler shares it between the two:

    average   d_k = sum_i sign(c_i - c_k), v = (K + 1 + d_k) / 2   (= #greater + (#equal + 1) / 2)
    min       v = 1 + #{i : c_i > c_k}
    dense     as min, counting only first occurrences of each value
    caen      v = #{i : c_i < c_k}
    capo      v = sum_i sigmoid(c_k - c_i) - 1/2, with e_i = exp(c_i - max) and
              sigmoid(c_k - c_i) = e_k / (e_k + e_i): v = e_k sum_{i != k} 1 / (e_k + e_i),
              one reciprocal per unordered pair

Counts are float sums of 0/1 (exact), so ranks, CaEN, weighted sums, winners and losers are bit-identical
to kernels/rank_ensemble_reference.py; CaPO agrees to ~1e-7 (ties within CAPO_TIE_TOL). A block whose
rows span more than 80 in one model (e^-80 is still a normal float) takes the direct sigmoid for that
model. The weighted sums stay in K registers per thread across models; values go back to a [BLOCK_N, K]
tile only for the store. Static SASS size and the issue-bound estimate: kernels/benchmarks/sass_report.py.
"""
from __future__ import annotations

import triton
import triton.language as tl

MAX_ROWS_CANDIDATES = 32  # K^2 / 2 unrolled comparisons and 3 K live registers per thread


@triton.constexpr_function
def _bit_reversed(j, bits):
    """Position of column j in the split tree's output (each split halves by the lowest index bit)."""
    r = 0
    for b in range(bits):
        r = r * 2 + ((j >> b) & 1)
    return r


@triton.jit
def _columns(tile, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LOG_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K] tile -> tuple of BLOCK_K [BLOCK_N] columns, in column order."""
    parts = (tile,)
    for level in tl.static_range(LOG_K):
        halves = ()
        for p in tl.static_range(1 << level):
            even, odd = tl.split(tl.reshape(parts[p], [BLOCK_N, BLOCK_K >> (level + 1), 2]))
            halves = halves + (even, odd)
        parts = halves
    cols = ()
    for j in tl.static_range(BLOCK_K):
        cols = cols + (tl.reshape(parts[_bit_reversed(j, LOG_K)], [BLOCK_N]),)
    return cols


@triton.jit
def _tile(cols, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LOG_K: tl.constexpr):
    """The inverse of _columns: BLOCK_K [BLOCK_N] columns -> [BLOCK_N, BLOCK_K] tile."""
    parts = ()
    for p in tl.static_range(BLOCK_K):
        parts = parts + (tl.reshape(cols[_bit_reversed(p, LOG_K)], [BLOCK_N, 1]),)
    for level in tl.static_range(LOG_K):
        pairs = ()
        for p in tl.static_range(BLOCK_K >> (level + 1)):
            pairs = pairs + (tl.reshape(tl.join(parts[2 * p], parts[2 * p + 1]), [BLOCK_N, 2 << level]),)
        parts = pairs
    return parts[0]


@triton.jit
def _above(c, i: tl.constexpr, k: tl.constexpr):
    """1.0 where c_i > c_k, in the canonical form c[min] op c[max] shared with the mirrored pair."""
    if i < k:
        return tl.where(c[i] > c[k], 1.0, 0.0)
    else:
        return tl.where(c[k] < c[i], 1.0, 0.0)


@triton.jit
def _below(c, i: tl.constexpr, k: tl.constexpr):
    """1.0 where c_i < c_k (canonical form, see _above)."""
    if i < k:
        return tl.where(c[i] < c[k], 1.0, 0.0)
    else:
        return tl.where(c[k] > c[i], 1.0, 0.0)


@triton.jit
def _sign(c, lo: tl.constexpr, hi: tl.constexpr):
    """sign(c_lo - c_hi) in {-1, 0, 1} for lo < hi: one expression per unordered pair, added for one
    candidate and subtracted for the other (a negated operand, no extra instruction)."""
    return tl.where(c[lo] > c[hi], 1.0, 0.0) - tl.where(c[lo] < c[hi], 1.0, 0.0)


@triton.jit
def _first_occurrences(c, BLOCK_N: tl.constexpr, K: tl.constexpr):
    """Tuple of K [BLOCK_N] booleans: no lower-index candidate has the same score (dense ranks)."""
    first = ()
    for i in tl.static_range(K):
        dup = tl.zeros([BLOCK_N], dtype=tl.float32)
        for j in tl.static_range(i):
            dup += tl.where(c[j] == c[i], 1.0, 0.0)
        first = first + (dup == 0.0,)
    return first


@triton.jit
def _capo_direct(c, BLOCK_N: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """sum_i sigmoid(c_k - c_i) - 1/2 over i in index order (self term exactly 1/2), one sigmoid per pair."""
    v = ()
    for k in tl.static_range(BLOCK_K):
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        if k < K:
            for i in tl.static_range(K):
                if i == k:
                    acc += 0.5
                else:
                    acc += tl.sigmoid(c[k] - c[i])
        v = v + (acc - 0.5,)
    return v


@triton.jit
def _reciprocal(x, FAST_RCP: tl.constexpr):
    """1 / x. On the GPU one rcp.approx (1 ulp): `/` would add range fix-ups for huge and subnormal x that
    cost 8 more instructions, and x = e_lo + e_hi lies in [2 e^-80, 2]. The interpreter has no inline
    assembly and divides exactly."""
    if FAST_RCP:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def _capo_shifted(c, hi, BLOCK_N: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr, FAST_RCP: tl.constexpr):
    """The same sums with e_i = exp(c_i - hi): sigmoid(c_k - c_i) = e_k / (e_k + e_i), so
    v_k = e_k * sum_{i != k} 1 / (e_k + e_i): K exponentials, one reciprocal per unordered pair (written
    1 / (e_lo + e_hi) so both candidates share it) and two adds."""
    e = ()
    for j in tl.static_range(K):
        e = e + (tl.exp(c[j] - hi),)
    v = ()
    for k in tl.static_range(BLOCK_K):
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        if k < K:
            for i in tl.static_range(K):
                if i < k:
                    acc += _reciprocal(e[i] + e[k], FAST_RCP)
                elif i > k:
                    acc += _reciprocal(e[k] + e[i], FAST_RCP)
            v = v + (e[k] * acc,)
        else:
            v = v + (acc,)
    return v


@triton.jit
def _capo_values(c, finite, BLOCK_N: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr, FAST_RCP: tl.constexpr):
    """CaPO per-candidate values; the shifted form unless a usable row of the block spans more than 80
    (e^(c - max) would leave the normal range): one branch per block, taken for all its rows."""
    hi = c[0]
    lo = c[0]
    for j in tl.static_range(1, K):
        hi = tl.maximum(hi, c[j])
        lo = tl.minimum(lo, c[j])
    v = ()
    for k in tl.static_range(BLOCK_K):
        v = v + (tl.zeros([BLOCK_N], dtype=tl.float32),)
    if tl.max(tl.where(finite, hi - lo, 0.0)) > 80.0:
        v = _capo_direct(c, BLOCK_N, K, BLOCK_K)
    else:
        v = _capo_shifted(c, hi, BLOCK_N, K, BLOCK_K, FAST_RCP)
    return v


@triton.jit
def _model_values(c, finite, MODE: tl.constexpr, BLOCK_N: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr,
                  FAST_RCP: tl.constexpr):
    """One model's per-candidate values for every sample of the block (tuple of BLOCK_K [BLOCK_N])."""
    if MODE == 4:
        v = _capo_values(c, finite, BLOCK_N, K, BLOCK_K, FAST_RCP)
    else:
        if MODE == 2:
            first = _first_occurrences(c, BLOCK_N, K)
        v = ()
        for k in tl.static_range(BLOCK_K):
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            if k < K:
                for i in tl.static_range(K):
                    if i != k:
                        if MODE == 1:  # sum_i sign(c_i - c_k)
                            if i < k:
                                acc += _sign(c, i, k)
                            else:
                                acc -= _sign(c, k, i)
                        elif MODE == 3:
                            acc += _below(c, i, k)
                        elif MODE == 2:
                            acc += tl.where(first[i], _above(c, i, k), 0.0)
                        else:
                            acc += _above(c, i, k)
            if MODE == 1:
                v = v + ((acc + (K + 1)) * 0.5,)
            elif MODE == 3:
                v = v + (acc,)
            else:
                v = v + (acc + 1.0,)
    return v


@triton.jit(do_not_specialize=["seed_term", "sample_offset"])
def rank_ensemble_rows_kernel(
    scores_ptr, weights_ptr, values_ptr, winner_ptr, loser_ptr, used_ptr, status_ptr,
    N, M, seed_term, sample_offset, capo_tol,
    K: tl.constexpr, MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LOG_K: tl.constexpr,
    FAST_RCP: tl.constexpr, PREFETCH: tl.constexpr,
    H_SAMPLE: tl.constexpr, H_CAND: tl.constexpr, H_FMIX1: tl.constexpr, H_FMIX2: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    tile_ok = row_ok[:, None] & (cols < K)[None, :]
    base = rows.to(tl.int64) * M * K

    total = ()
    for k in tl.static_range(BLOCK_K):
        total = total + (tl.zeros([BLOCK_N], dtype=tl.float32),)
    weight = tl.zeros([BLOCK_N], dtype=tl.float32)
    used = tl.zeros([BLOCK_N], dtype=tl.int32)
    tile_ptrs = scores_ptr + base[:, None] + cols[None, :]
    if PREFETCH:  # model m + 1's tile is in flight while model m is compared (16 more registers)
        tile = tl.load(tile_ptrs, mask=tile_ok & (M > 0), other=0.0)
    for m in range(M):
        w = tl.load(weights_ptr + m)
        if PREFETCH:
            current = tile
            tile = tl.load(tile_ptrs + (m + 1) * K, mask=tile_ok & (m + 1 < M), other=0.0)
        else:
            current = tl.load(tile_ptrs + m * K, mask=tile_ok, other=0.0)
        c = _columns(current, BLOCK_N, BLOCK_K, LOG_K)
        probe = tl.zeros([BLOCK_N], dtype=tl.float32)  # x * 0 is NaN exactly when x is NaN or inf
        for j in tl.static_range(K):
            probe = tl.fma(c[j], 0.0, probe)
        finite = probe == 0.0
        usable = finite & (tl.zeros([BLOCK_N], dtype=tl.float32) + w > 0)  # a [BLOCK_N] test (interpreter)
        v = _model_values(c, finite, MODE, BLOCK_N, K, BLOCK_K, FAST_RCP)
        summed = ()
        if MODE == 4:  # v may be NaN on an unusable row: select
            for k in tl.static_range(BLOCK_K):
                summed = summed + (tl.where(usable, total[k] + w * v[k], total[k]),)
        else:  # v is a finite count: adding 0 * v to a sum >= +0 leaves its bits (one instruction less)
            w_used = tl.where(usable, w, 0.0)
            for k in tl.static_range(BLOCK_K):
                summed = summed + (total[k] + w_used * v[k],)
        total = summed
        weight = tl.where(usable, weight + w, weight)
        used += usable.to(tl.int32)

    no_model = used == 0
    if MODE <= 2:
        scale = weight
    else:
        scale = weight * (K - 1)
    values = ()
    for k in tl.static_range(BLOCK_K):
        # IEEE division: plain `/` lowers to the approximate div.full.f32 (2 ulp off the reference)
        values = values + (tl.where(no_model, float("nan"), tl.math.div_rn(total[k], scale)),)
    tile = _tile(values, BLOCK_N, BLOCK_K, LOG_K)
    tl.store(values_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], tile, mask=tile_ok)

    # selection on the sums S (ranks: lower is better; win rates: higher is better, so key = -S)
    key = ()
    for k in tl.static_range(K):
        if MODE <= 2:
            key = key + (total[k],)
        else:
            key = key + (-total[k],)
    best = key[0]
    worst = key[0]
    for k in tl.static_range(1, K):
        best = tl.minimum(best, key[k])
        worst = tl.maximum(worst, key[k])
    if MODE == 4:
        tol = capo_tol * scale
    else:
        tol = tl.zeros([BLOCK_N], dtype=tl.float32)

    # seeded tie-break: murmur3 fmix32 of (seed, global sample index, candidate), uint32 wrap-around.
    # Winner: the tied best with the smallest priority (then the smallest index); loser: the tied worst
    # with the largest priority (then the largest index) -- the reference's min / max of (h << 10) | k.
    sample_term = seed_term.to(tl.uint32) + (sample_offset + rows).to(tl.uint32) * H_SAMPLE
    win = tl.full([BLOCK_N], -1, tl.int32)
    lose = tl.full([BLOCK_N], -1, tl.int32)
    win_h = tl.zeros([BLOCK_N], dtype=tl.uint32)
    lose_h = tl.zeros([BLOCK_N], dtype=tl.uint32)
    for k in tl.static_range(K):
        h = sample_term + tl.full([BLOCK_N], k, tl.uint32) * H_CAND
        h = h ^ (h >> 16)
        h = h * H_FMIX1
        h = h ^ (h >> 13)
        h = h * H_FMIX2
        h = h ^ (h >> 16)
        take_win = (key[k] <= best + tol) & ((win < 0) | (h < win_h))
        take_lose = (key[k] >= worst - tol) & ((lose < 0) | (h >= lose_h))
        win = tl.where(take_win, k, win)
        win_h = tl.where(take_win, h, win_h)
        lose = tl.where(take_lose, k, lose)
        lose_h = tl.where(take_lose, h, lose_h)
    winner = tl.where(no_model, -1, win)
    loser = tl.where(no_model, -1, lose)
    status = tl.where(no_model, 1, tl.where(worst - best <= tol, 2, 0)).to(tl.int8)
    tl.store(winner_ptr + rows, winner, mask=row_ok)
    tl.store(loser_ptr + rows, loser, mask=row_ok)
    tl.store(used_ptr + rows, used, mask=row_ok)
    tl.store(status_ptr + rows, status, mask=row_ok)
