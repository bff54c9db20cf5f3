"""Custom kernels, each with a pure-PyTorch reference beside it.

Exports are resolved lazily (PEP 562): importing `kernels` imports nothing heavy, and one kernel that
fails to import (a missing compiler, an old Triton) never breaks another. Add an export by adding one
line to `_EXPORTS`: public name -> "module:attribute".
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # rank ensemble (fyp.ensemble's accelerated path): Triton on CUDA, C++/OpenMP on CPU
    "rank_ensemble": "kernels.rank_ensemble_ops:rank_ensemble",
    "calibrated_reward": "kernels.rank_ensemble_ops:calibrated_reward",
    "EnsembleResult": "kernels.rank_ensemble_ops:EnsembleResult",
    # preference loss (fyp.dpo's fused path): Triton on CUDA / interpreter, PyTorch reference otherwise
    "fused_preference_loss": "kernels.fused_preference_loss_ops:fused_preference_loss",
    "fused_preference_terms": "kernels.fused_preference_loss_ops:fused_preference_terms",
    "FusedPreferenceLossFunction": "kernels.fused_preference_loss_ops:FusedPreferenceLossFunction",
}


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
