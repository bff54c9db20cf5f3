"""Training metrics of a preference loss evaluation (one batch).

From `PreferenceTerms` (returned by `fyp.dpo.losses.preference_terms` or
`kernels.fused_preference_terms`). The implicit reward of a sample is
`r(x) = -(beta / 2) * (L_theta(x) - L_ref(x))`, so `inside = r(w) - r(l)` is the reward margin.
Values are detached fp32 0-dim tensors (batch means) so a distributed trainer can all-reduce them
before calling `.item()`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fyp.dpo.losses import PreferenceTerms


def implicit_accuracy(inside: Tensor) -> Tensor:
    """Fraction of pairs the policy already prefers (inside > 0); a tie counts 1/2."""
    inside = inside.detach().float()
    return ((inside > 0).float() + 0.5 * (inside == 0).float()).mean()


def preference_metrics(terms: PreferenceTerms) -> dict[str, Tensor]:
    """loss, implicit accuracy, the four MSEs and the reward margin, as batch means."""
    inside = terms.inside.detach().float()
    return {
        "loss": terms.loss.detach().float(),
        "implicit_accuracy": implicit_accuracy(inside),
        "mse_policy_w": terms.policy_loss_w.detach().float().mean(),
        "mse_policy_l": terms.policy_loss_l.detach().float().mean(),
        "mse_ref_w": terms.ref_loss_w.detach().float().mean(),
        "mse_ref_l": terms.ref_loss_l.detach().float().mean(),
        "reward_margin": inside.mean(),
    }


METRIC_NAMES = ("loss", "implicit_accuracy", "mse_policy_w", "mse_policy_l", "mse_ref_w",
                "mse_ref_l", "reward_margin")
