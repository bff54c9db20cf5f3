"""Agreement between reward models: mean Kendall tau-b of their candidate rankings, per sample.

For a sample, tau-b(a, b) = sum_{i<j} sign(a_i - a_j) sign(b_i - b_j) / sqrt(n_a n_b), with n_a the
pairs model a does not tie (this is scipy.stats.kendalltau's default). The matrix entry is the mean
over samples where both models are usable (all K scores finite) and tau-b is defined (neither model
ties every candidate); the count of such samples is returned beside it.

Per sample the M x M concordances are one small matrix product of the models' sign vectors over all
K^2 ordered candidate pairs (integers: exact in float32); its diagonal is each model's untied count.

Large runs report the mean over a seeded random subset of samples (`agreement_subset`): at N = 1e6
the full matrix took most of the pairs stage's time (more than the ensemble kernel and reading the
scores together). A per-sample tau-b lies in [-1, 1], so the mean over 20,000 samples has a standard
error of at most 1 / sqrt(20000) = 0.007 (about 0.002 at a typical spread of 0.25): enough for the
report's two decimals and heatmap.
"""
from __future__ import annotations

import numpy as np
import torch

AGREEMENT_SAMPLES = 20_000  # the pairs report's default subset size (all samples when fewer)


def agreement_subset(candidates: np.ndarray, limit: int = AGREEMENT_SAMPLES, seed: int = 0) -> np.ndarray:
    """Sorted indices: all of `candidates` when at most `limit`, else `limit` of them drawn without
    replacement by numpy's PCG64 seeded with `seed` (the same run and seed give the same subset)."""
    candidates = np.asarray(candidates)
    if limit <= 0 or candidates.size <= limit:
        return candidates
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=limit, replace=False))


def kendall_tau_matrix(scores, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(mean tau [M, M], samples counted [M, M]) for scores [N, M, K]."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    n, m, k = s.shape
    total = torch.zeros(m, m, dtype=torch.float64)
    count = torch.zeros(m, m, dtype=torch.int64)
    for start in range(0, n, chunk):
        part = s[start:start + chunk]
        usable = torch.isfinite(part).all(-1)  # [n, M]
        # Every ordered pair (i, j): each unordered pair counts twice, which cancels in tau-b's ratio, and
        # a broadcast subtraction replaces gathering the K (K - 1) / 2 pairs (most of the old cost).
        sign = torch.sign(part[..., :, None] - part[..., None, :]).nan_to_num_(0.0).reshape(*part.shape[:2], k * k)
        # integer-valued sums of at most K^2 terms: exact in float32; the diagonal is each model's untied count
        concordance = torch.bmm(sign, sign.transpose(1, 2)).double()  # [n, M, M]
        untied = concordance.diagonal(dim1=1, dim2=2)  # [n, M]
        defined = usable & (untied > 0)
        both = defined[:, :, None] & defined[:, None, :]
        denom = torch.sqrt(untied[:, :, None] * untied[:, None, :])
        total += torch.where(both, concordance / denom.clamp_min(1), 0.0).sum(0)
        count += both.sum(0)
    mean = torch.where(count > 0, total / count.clamp_min(1), float("nan"))
    return mean.numpy(), count.numpy()
