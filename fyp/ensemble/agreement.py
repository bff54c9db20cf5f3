"""Agreement between reward models: mean Kendall tau-b of their candidate rankings, per sample.

For a sample, tau-b(a, b) = sum_{i<j} sign(a_i - a_j) sign(b_i - b_j) / sqrt(n_a n_b), with n_a the
pairs model a does not tie (this is scipy.stats.kendalltau's default). The matrix entry is the mean
over samples where both models are usable (all K scores finite) and tau-b is defined (neither model
ties every candidate); the count of such samples is returned beside it.
"""
from __future__ import annotations

import numpy as np
import torch


def kendall_tau_matrix(scores, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(mean tau [M, M], samples counted [M, M]) for scores [N, M, K]."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    n, m, k = s.shape
    total = torch.zeros(m, m, dtype=torch.float64)
    count = torch.zeros(m, m, dtype=torch.int64)
    i, j = torch.triu_indices(k, k, 1)
    for start in range(0, n, chunk):
        part = s[start:start + chunk]
        usable = torch.isfinite(part).all(-1)  # [n, M]
        sign = torch.sign(part[..., i] - part[..., j]).nan_to_num(0.0)  # [n, M, P]
        sign = sign * usable[..., None]
        concordance = torch.einsum("nap,nbp->nab", sign, sign).double()
        untied = (sign != 0).sum(-1).double()  # [n, M]
        denom = torch.sqrt(untied[:, :, None] * untied[:, None, :])
        defined = (denom > 0) & usable[:, :, None] & usable[:, None, :]
        tau = torch.where(defined, concordance / denom.clamp_min(1), 0.0)
        total += tau.sum(0)
        count += defined.sum(0)
    mean = torch.where(count > 0, total / count.clamp_min(1), float("nan"))
    return mean.numpy(), count.numpy()
