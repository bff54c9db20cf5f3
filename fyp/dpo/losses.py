"""The preference losses of SPEC section 4, one implementation for DPO, IPO, CaPO and CaEN.

Per pair (w = winner, l = loser), with the per-sample denoising loss

    L(x)   = sum over latent elements of (mask * (pred - target))^2 / D
             D = number of elements per sample  (normalize="all", the paper's mean)
             D = sum of the mask broadcast to the prediction (normalize="mask", the hole's size)
    inside = -(beta / 2) * ((L_theta(w) - L_ref(w)) - (L_theta(l) - L_ref(l)))

    dpo:         loss = -log sigmoid(inside)
    ipo:         loss = (logits - 1 / (2 beta))^2,  logits = (L_ref(w) - L_theta(w)) - (L_ref(l) - L_theta(l))
    capo, caen:  loss = (margin - inside)^2,        margin = R(w) - R(l)  (per pair, from the ensemble)

and the returned loss is the batch mean. Gradients flow to the policy predictions only: the reference
predictions, the targets, the mask and the margin are constants (detached here, no gradient from the
fused kernel either). All arithmetic is fp32 whatever the input dtype.

This module is the PyTorch reference that `kernels.fused_preference_loss` is tested against; both share
`check_preference_inputs` so they accept and refuse exactly the same arguments. `loss_backend` picks one
of the two for the trainer (`train.loss_backend`).
"""
from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Loss, LossBackend, Normalize

KINDS = get_args(Loss)  # the allowed values live in fyp.config
MARGIN_KINDS = ("capo", "caen")
NORMALIZE = get_args(Normalize)
LOSS_BACKENDS = get_args(LossBackend)


class PreferenceTerms(NamedTuple):
    """Everything one loss evaluation knows; per-sample tensors are [B] fp32."""

    loss: Tensor            # scalar, the batch mean of the per-pair loss
    inside: Tensor          # [B], SPEC's inside term (the implicit reward margin)
    policy_loss_w: Tensor   # [B], L_theta(w)
    policy_loss_l: Tensor   # [B], L_theta(l)
    ref_loss_w: Tensor      # [B], L_ref(w) (constant)
    ref_loss_l: Tensor      # [B], L_ref(l) (constant)


def denoising_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None,
                   normalize: str = "all") -> Tensor:
    """Per-sample masked MSE `L(x)` [B] in fp32 (see the module docstring for D).

    `mask` (1 = hole) has the predictions' number of dims and broadcasts to them, e.g. [B, 1, h, w]
    against [B, C, h, w] latents or [B, S, 1] against packed [B, S, C] tokens. An empty hole with
    normalize="mask" gives L = 0; with no mask, "mask" equals "all" (the hole is everything). Use
    this same function to fill a reference-loss cache.
    """
    _check_normalize(normalize)
    _check_mask(mask, pred)
    diff = pred.float() - target.float()
    if mask is not None:
        diff = mask.float() * diff
    total = diff.square().flatten(1).sum(1)
    return total / _denominator(pred, mask, normalize)


def preference_terms(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor | None,
                     ref_l: Tensor | None, target_w: Tensor, target_l: Tensor, *, beta: float,
                     kind: str = "dpo", mask: Tensor | None = None, margin: Tensor | None = None,
                     normalize: str = "all", ref_loss_w: Tensor | None = None,
                     ref_loss_l: Tensor | None = None) -> PreferenceTerms:
    """`preference_loss` with every intermediate: the four per-sample losses and the inside term.

    The reference side is given either as predictions (`ref_w`, `ref_l`, [B, ...]) or as precomputed
    per-sample losses (`ref_loss_w`, `ref_loss_l`, [B], e.g. from a reference-loss cache filled with
    `denoising_loss` under the same mask and normalize); pass None for the predictions then.
    """
    check_preference_inputs(policy_w, policy_l, ref_w, ref_l, target_w, target_l, beta=beta,
                            kind=kind, mask=mask, margin=margin, normalize=normalize,
                            ref_loss_w=ref_loss_w, ref_loss_l=ref_loss_l)
    target_w, target_l = target_w.detach(), target_l.detach()
    mask = None if mask is None else mask.detach()
    loss_w = denoising_loss(policy_w, target_w, mask, normalize)
    loss_l = denoising_loss(policy_l, target_l, mask, normalize)
    with torch.no_grad():
        ref_w_loss = (denoising_loss(ref_w, target_w, mask, normalize) if ref_loss_w is None
                      else ref_loss_w.detach().float())
        ref_l_loss = (denoising_loss(ref_l, target_l, mask, normalize) if ref_loss_l is None
                      else ref_loss_l.detach().float())
    inside = -(beta / 2) * ((loss_w - ref_w_loss) - (loss_l - ref_l_loss))
    if kind == "dpo":
        per_pair = F.softplus(-inside)  # = -log sigmoid(inside), without overflow
    elif kind == "ipo":
        logits = (ref_w_loss - loss_w) - (ref_l_loss - loss_l)
        per_pair = (logits - 1 / (2 * beta)).square()
    else:  # capo, caen
        per_pair = (margin.detach().float() - inside).square()
    return PreferenceTerms(per_pair.mean(), inside, loss_w, loss_l, ref_w_loss, ref_l_loss)


def preference_loss(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor | None, ref_l: Tensor | None,
                    target_w: Tensor, target_l: Tensor, *, beta: float, kind: str = "dpo",
                    mask: Tensor | None = None, margin: Tensor | None = None,
                    normalize: str = "all", ref_loss_w: Tensor | None = None,
                    ref_loss_l: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The preference loss (scalar, batch mean) and the inside term [B]; see the module docstring."""
    terms = preference_terms(policy_w, policy_l, ref_w, ref_l, target_w, target_l, beta=beta,
                             kind=kind, mask=mask, margin=margin, normalize=normalize,
                             ref_loss_w=ref_loss_w, ref_loss_l=ref_loss_l)
    return terms.loss, terms.inside


def loss_backend(name: str, device: torch.device) -> tuple[str, Callable[..., PreferenceTerms]]:
    """(resolved name, `preference_terms`-compatible function) of `train.loss_backend` on `device`.

    "auto": the fused Triton kernel on CUDA, this module otherwise. "triton" on a CPU runs the kernels
    in Triton's interpreter, which must be chosen before they are imported (TRITON_INTERPRET=1 in the
    environment); without it the kernel module would silently fall back to this one, so that is refused.
    """
    from ..config import ConfigError

    if name not in LOSS_BACKENDS:
        raise ConfigError(f"train.loss_backend must be one of {', '.join(LOSS_BACKENDS)}, got {name!r}")
    device = torch.device(device)
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return "torch", preference_terms
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"train.loss_backend=triton runs on CUDA (or a CPU under TRITON_INTERPRET=1), "
                          f"not on {device.type}; use train.loss_backend=torch")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("train.loss_backend=triton on a CPU needs TRITON_INTERPRET=1 in the environment "
                          "(Triton's interpreter); use train.loss_backend=torch or auto there")
    from kernels.fused_preference_loss_ops import _runs_triton, fused_preference_terms

    if not _runs_triton(device):  # imported before TRITON_INTERPRET was set: it would run this module instead
        raise ConfigError("train.loss_backend=triton: the Triton kernels were imported without the "
                          "interpreter; set TRITON_INTERPRET=1 before the process starts")
    return "triton", fused_preference_terms


# --------------------------------------------------------------------------- validation

def check_preference_inputs(policy_w, policy_l, ref_w, ref_l, target_w, target_l, *, beta, kind,
                            mask, margin, normalize, ref_loss_w, ref_loss_l) -> None:
    """Raise a one-line ValueError/TypeError naming the first argument that is wrong."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    _check_normalize(normalize)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) \
            or beta <= 0:
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    named = {"policy_w": policy_w, "policy_l": policy_l, "target_w": target_w,
             "target_l": target_l, "ref_w": ref_w, "ref_l": ref_l}
    shape, device = policy_w.shape if isinstance(policy_w, Tensor) else None, None
    for name, value in named.items():
        if value is None and name in ("ref_w", "ref_l"):
            continue
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{getattr(value, 'dtype', type(value).__name__)}")
        if value.shape != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, expected policy_w's "
                             f"{tuple(shape)}")
        if value.dim() < 1 or value.shape[0] == 0 or value.numel() == 0:
            raise ValueError(f"{name} must be [B, ...] with B >= 1 and at least one element per "
                             f"sample, got {tuple(value.shape)}")
        device = device or value.device
        if value.device != device:
            raise ValueError(f"{name} is on {value.device}, expected {device}")
    batch = shape[0]
    for side, pred, cached in (("w", ref_w, ref_loss_w), ("l", ref_l, ref_loss_l)):
        if (pred is None) == (cached is None):
            raise ValueError(f"give exactly one of ref_{side} (predictions) and ref_loss_{side} "
                             f"(precomputed per-sample losses [B])")
        if cached is not None:
            _check_per_sample(f"ref_loss_{side}", cached, batch, device)
    _check_mask(mask, policy_w)
    if mask is not None and mask.device != device:
        raise ValueError(f"mask is on {mask.device}, expected {device}")
    if kind in MARGIN_KINDS:
        if margin is None:
            raise ValueError(f"kind={kind!r} needs margin=R(w)-R(l) as a [B] tensor")
        _check_per_sample("margin", margin, batch, device)
    elif margin is not None:
        raise ValueError(f"margin is used only by {MARGIN_KINDS}; kind={kind!r} takes none")


def _check_per_sample(name: str, value, batch: int, device) -> None:
    if not isinstance(value, Tensor) or value.shape != (batch,):
        raise ValueError(f"{name} must be a [B] = [{batch}] tensor, got "
                         f"{tuple(value.shape) if isinstance(value, Tensor) else type(value)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device}, expected {device}")


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZE}")


def _check_mask(mask: Tensor | None, pred: Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor or None, got {type(mask).__name__}")
    if mask.dim() != pred.dim():
        raise ValueError(f"mask has {mask.dim()} dims, predictions {pred.dim()}: give the mask "
                         f"the same number of dims (size-1 dims broadcast)")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, pred.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != pred.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to the predictions "
                         f"{tuple(pred.shape)}")


def _denominator(pred: Tensor, mask: Tensor | None, normalize: str) -> Tensor | float:
    per_sample = pred[0].numel()
    if normalize == "all" or mask is None:
        return float(per_sample)
    # sum of the broadcast mask without materialising it: each mask element repeats
    # numel(pred[0]) / numel(mask[0]) times; a mask with batch dim 1 is shared by every sample.
    repeats = per_sample / mask[0].numel()
    hole = mask.float().flatten(1).sum(1) * repeats
    hole = hole.expand(pred.shape[0])
    return hole.clamp_min(torch.finfo(torch.float32).tiny)
