"""Rank ensemble of reward models and preference-pair selection (SPEC section 3)."""
from .agreement import AGREEMENT_SAMPLES, agreement_subset, kendall_tau_matrix
from .core import KINDS, TIES, calibrated_reward, mean_rank, run_ensemble
from .selection import METHODS, PairSelection, method_plan, pairs_from_plan, random_pairs, select_pairs
from .weights import (CAEN_OTHER, CAEN_SPECIAL, PAPER_JUDGE_SCORES, WeightError, caen_weights, filtered_subset,
                      linear_weights, softmax_weights)

__all__ = ["mean_rank", "calibrated_reward", "run_ensemble", "select_pairs", "pairs_from_plan", "method_plan", "random_pairs",
           "PairSelection", "METHODS", "TIES", "KINDS", "kendall_tau_matrix", "agreement_subset", "AGREEMENT_SAMPLES", "filtered_subset", "linear_weights",
           "softmax_weights", "caen_weights", "PAPER_JUDGE_SCORES", "CAEN_SPECIAL", "CAEN_OTHER", "WeightError"]
