"""Fused preference loss (DPO / IPO / CaPO / CaEN) for diffusion models: one pass over the inputs.

Same signature and results as the PyTorch reference `fyp.dpo.losses.preference_loss` (SPEC section 4):

    L(x)   = sum_e (mask * (pred - target))^2 / D          D = elements per sample, or hole size
    inside = -(beta / 2) * ((L_theta(w) - L_ref(w)) - (L_theta(l) - L_ref(l)))
    loss   = mean_b  f_kind(inside_b)

Design (details and numbers in docs/losses.md):
- Forward (`_fused_preference_loss_forward_kernel`), grid (tiles, B): each program streams one tile
  of one sample from the six tensors policy/ref/target x w/l (and the mask, read through its own
  broadcast strides, never expanded), keeps five fp32 accumulators (the four squared-error sums and
  the hole size) and writes them to a [5, B, tiles] partial buffer.
- Stage 2 (`_finalize`) reduces the partials in a fixed order and forms the four per-sample losses,
  the inside term, the per-pair loss, its batch mean and dloss/dL_theta(w) per sample (what the
  backward needs). By default it runs in the forward kernel's last-arriving program (atomic counter),
  so the forward is one launch; `single_launch=False` runs it as a second launch
  (`_fused_preference_loss_finalize_kernel`), bit-identical.
  A two-stage reduction rather than fp32 atomics into [B, 4]: the result is deterministic run to run
  (the trainer's resume test compares loss sequences), and the partial buffer is tiny (FLUX sizes:
  5 x 8 x 128 floats = 20 KB, against 24 MiB of inputs in bf16).
- Backward (`_fused_preference_loss_backward_kernel`): same grid; recomputes (pred - target) from the
  inputs and writes d/d policy_w and d/d policy_l only. Reads 4 tensors, writes 2: no full-size
  intermediate is materialised, in the forward or the backward (non-contiguous inputs are made
  contiguous once).
- All arithmetic in fp32; gradients are stored in the predictions' dtype.

Dispatch: CUDA tensors run the Triton kernels; CPU tensors run them in Triton's interpreter when
TRITON_INTERPRET=1 was set before this module was imported, and the PyTorch reference otherwise.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from fyp.dpo.losses import (PreferenceTerms, check_preference_inputs, preference_terms)

_KIND_CODE = {"dpo": 0, "ipo": 1, "capo": 2, "caen": 2}

# Elements per program per loop step. 2048 elements with 8 warps = 8 contiguous elements a thread:
# one 16-byte load per tensor in bf16, two in fp32. Overridable for the GPU sweep in
# benchmarks/gpu/fused_loss.py.
DEFAULT_BLOCK = 2048
DEFAULT_WARPS = 8
# Stage 2 inside the forward kernel's last program (True) or as a second launch (False).
DEFAULT_SINGLE_LAUNCH = True
# Above this many programs a program loops over several blocks (keeps the partial buffer small).
_TARGET_PROGRAMS = 4096
# The finalize program reduces the [5, B, tiles] partials in [B, _FINALIZE_TILE / B] chunks.
_FINALIZE_TILE = 4096


# --------------------------------------------------------------------------- kernels

@triton.jit
def _mask_offsets(idx, MD1: tl.constexpr, MD2: tl.constexpr, ms0, ms1, ms2):
    # idx runs over a sample's elements in row-major order; the mask is read through its own
    # (collapsed, up to 3-dim) broadcast strides. MD1/MD2 are compile-time so the div/mod become
    # shifts or multiplies (and vanish when they are 1).
    i0 = idx // (MD1 * MD2)
    i1 = (idx // MD2) % MD1
    i2 = idx % MD2
    return i0 * ms0 + i1 * ms1 + i2 * ms2


@triton.jit
def _finalize(
    partial_ptr, ref_loss_w_ptr, ref_loss_l_ptr, margin_ptr,
    loss_ptr, inside_ptr, lw_ptr, ll_ptr, rw_ptr, rl_ptr, dloss_ptr, denom_ptr,
    B, P, N, beta,
    KIND: tl.constexpr, SUM_MASK: tl.constexpr, HAS_REF_W: tl.constexpr, HAS_REF_L: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # Reduce the [5, B, P] partials in a fixed order (deterministic), then the per-pair algebra.
    # .cg loads bypass L1: the partials were written by other programs (other SMs).
    rows = tl.arange(0, BLOCK_B)
    row_ok = rows < B
    sums_pw = tl.zeros([BLOCK_B], dtype=tl.float32)
    sums_pl = tl.zeros([BLOCK_B], dtype=tl.float32)
    sums_rw = tl.zeros([BLOCK_B], dtype=tl.float32)
    sums_rl = tl.zeros([BLOCK_B], dtype=tl.float32)
    sums_m = tl.zeros([BLOCK_B], dtype=tl.float32)
    stride_q = B * P
    for p0 in range(0, P, BLOCK_P):
        cols = p0 + tl.arange(0, BLOCK_P)
        ok = row_ok[:, None] & (cols < P)[None, :]
        ptrs = partial_ptr + rows[:, None] * P + cols[None, :]
        sums_pw += tl.sum(tl.load(ptrs, mask=ok, other=0.0, cache_modifier=".cg"), axis=1)
        sums_pl += tl.sum(tl.load(ptrs + stride_q, mask=ok, other=0.0, cache_modifier=".cg"), axis=1)
        sums_rw += tl.sum(tl.load(ptrs + 2 * stride_q, mask=ok, other=0.0, cache_modifier=".cg"), axis=1)
        sums_rl += tl.sum(tl.load(ptrs + 3 * stride_q, mask=ok, other=0.0, cache_modifier=".cg"), axis=1)
        sums_m += tl.sum(tl.load(ptrs + 4 * stride_q, mask=ok, other=0.0, cache_modifier=".cg"), axis=1)
    if SUM_MASK:
        denom = tl.maximum(sums_m, 1.1754943508222875e-38)  # empty hole: 0 / tiny = 0
    else:
        denom = tl.zeros([BLOCK_B], dtype=tl.float32) + N
    lw = sums_pw / denom
    ll = sums_pl / denom
    if HAS_REF_W:
        rw = sums_rw / denom
    else:
        rw = tl.load(ref_loss_w_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_REF_L:
        rl = sums_rl / denom
    else:
        rl = tl.load(ref_loss_l_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    inside = -(beta / 2) * ((lw - rw) - (ll - rl))
    if KIND == 0:    # dpo: -log sigmoid(x) = max(-x, 0) + log(1 + exp(-|x|))
        per_pair = tl.maximum(-inside, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(inside)))
        dloss_dlw = -tl.sigmoid(-inside) * (-beta / 2)
    elif KIND == 1:  # ipo
        logits = (rw - lw) - (rl - ll)
        centred = logits - 1.0 / (2 * beta)
        per_pair = centred * centred
        dloss_dlw = -2.0 * centred
    else:            # capo / caen
        margin = tl.load(margin_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        gap = margin - inside
        per_pair = gap * gap
        dloss_dlw = -2.0 * gap * (-beta / 2)
    per_pair = tl.where(row_ok, per_pair, 0.0)
    tl.store(loss_ptr, tl.sum(per_pair, axis=0) / B)
    tl.store(inside_ptr + rows, inside, mask=row_ok)
    tl.store(lw_ptr + rows, lw, mask=row_ok)
    tl.store(ll_ptr + rows, ll, mask=row_ok)
    tl.store(rw_ptr + rows, rw, mask=row_ok)
    tl.store(rl_ptr + rows, rl, mask=row_ok)
    tl.store(dloss_ptr + rows, dloss_dlw, mask=row_ok)
    tl.store(denom_ptr + rows, denom, mask=row_ok)


@triton.jit
def _fused_preference_loss_forward_kernel(
    pw_ptr, pl_ptr, rw_ptr, rl_ptr, tw_ptr, tl_ptr, mask_ptr, partial_ptr, counter_ptr,
    ref_loss_w_ptr, ref_loss_l_ptr, margin_ptr,
    loss_ptr, inside_ptr, lw_ptr, ll_ptr, rw_out_ptr, rl_out_ptr, dloss_ptr, denom_ptr,
    N, B, P, msb, ms0, ms1, ms2, beta,
    MD1: tl.constexpr, MD2: tl.constexpr, HAS_MASK: tl.constexpr, SUM_MASK: tl.constexpr,
    HAS_REF_W: tl.constexpr, HAS_REF_L: tl.constexpr, ITERS: tl.constexpr, BLOCK: tl.constexpr,
    KIND: tl.constexpr, SINGLE_LAUNCH: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    tile = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    base = b * N
    acc_pw = tl.zeros([BLOCK], dtype=tl.float32)
    acc_pl = tl.zeros([BLOCK], dtype=tl.float32)
    acc_rw = tl.zeros([BLOCK], dtype=tl.float32)
    acc_rl = tl.zeros([BLOCK], dtype=tl.float32)
    acc_m = tl.zeros([BLOCK], dtype=tl.float32)
    for it in range(ITERS):
        idx = (tile * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        valid = idx < N
        tw = tl.load(tw_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
        tl_ = tl.load(tl_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
        dpw = tl.load(pw_ptr + base + idx, mask=valid, other=0.0).to(tl.float32) - tw
        dpl = tl.load(pl_ptr + base + idx, mask=valid, other=0.0).to(tl.float32) - tl_
        if HAS_MASK:
            m = tl.load(mask_ptr + b * msb + _mask_offsets(idx, MD1, MD2, ms0, ms1, ms2),
                        mask=valid, other=0.0).to(tl.float32)
            m2 = m * m
            if SUM_MASK:
                acc_m += m
        else:
            m2 = 1.0
        acc_pw += m2 * dpw * dpw
        acc_pl += m2 * dpl * dpl
        if HAS_REF_W:
            drw = tl.load(rw_ptr + base + idx, mask=valid, other=0.0).to(tl.float32) - tw
            acc_rw += m2 * drw * drw
        if HAS_REF_L:
            drl = tl.load(rl_ptr + base + idx, mask=valid, other=0.0).to(tl.float32) - tl_
            acc_rl += m2 * drl * drl
    out = partial_ptr + b * P + tile
    stride_q = B * P
    tl.store(out, tl.sum(acc_pw, axis=0))
    tl.store(out + stride_q, tl.sum(acc_pl, axis=0))
    tl.store(out + 2 * stride_q, tl.sum(acc_rw, axis=0))
    tl.store(out + 3 * stride_q, tl.sum(acc_rl, axis=0))
    tl.store(out + 4 * stride_q, tl.sum(acc_m, axis=0))
    if SINGLE_LAUNCH:
        # "Last program finalises": publish the partials (barrier + release), count this program
        # in; the one that counts last (acquire) reduces them all and re-arms the counter. Saves
        # the second launch, which at FLUX sizes in bf16 is a sizeable share of a ~10 us kernel.
        tl.debug_barrier()
        done = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
        if done == B * P - 1:
            tl.atomic_xchg(counter_ptr, 0)
            _finalize(partial_ptr, ref_loss_w_ptr, ref_loss_l_ptr, margin_ptr, loss_ptr,
                      inside_ptr, lw_ptr, ll_ptr, rw_out_ptr, rl_out_ptr, dloss_ptr, denom_ptr,
                      B, P, N, beta, KIND, SUM_MASK, HAS_REF_W, HAS_REF_L, BLOCK_B, BLOCK_P)


@triton.jit
def _fused_preference_loss_finalize_kernel(
    partial_ptr, ref_loss_w_ptr, ref_loss_l_ptr, margin_ptr,
    loss_ptr, inside_ptr, lw_ptr, ll_ptr, rw_ptr, rl_ptr, dloss_ptr, denom_ptr,
    B, P, N, beta,
    KIND: tl.constexpr, SUM_MASK: tl.constexpr, HAS_REF_W: tl.constexpr, HAS_REF_L: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # Stage 2 as its own launch (single_launch=False).
    _finalize(partial_ptr, ref_loss_w_ptr, ref_loss_l_ptr, margin_ptr, loss_ptr, inside_ptr,
              lw_ptr, ll_ptr, rw_ptr, rl_ptr, dloss_ptr, denom_ptr, B, P, N, beta,
              KIND, SUM_MASK, HAS_REF_W, HAS_REF_L, BLOCK_B, BLOCK_P)


@triton.jit
def _fused_preference_loss_backward_kernel(
    pw_ptr, pl_ptr, tw_ptr, tl_ptr, mask_ptr, gpw_ptr, gpl_ptr,
    dloss_ptr, denom_ptr, grad_loss_ptr, grad_inside_ptr, grad_lw_ptr, grad_ll_ptr,
    N, B, msb, ms0, ms1, ms2, beta,
    MD1: tl.constexpr, MD2: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_GRAD_LOSS: tl.constexpr, HAS_GRAD_INSIDE: tl.constexpr, HAS_GRAD_LW: tl.constexpr,
    HAS_GRAD_LL: tl.constexpr, NEED_W: tl.constexpr, NEED_L: tl.constexpr,
    ITERS: tl.constexpr, BLOCK: tl.constexpr,
):
    tile = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    base = b * N
    # Per-sample chain rule, in scalars: d out / d L_theta(w) and d out / d L_theta(l).
    coef_w = 0.0
    if HAS_GRAD_LOSS:
        coef_w = tl.load(grad_loss_ptr).to(tl.float32) / B * tl.load(dloss_ptr + b)
    coef_l = -coef_w  # every kind depends on L_theta(w) - L_theta(l) only
    if HAS_GRAD_INSIDE:
        g_inside = tl.load(grad_inside_ptr + b).to(tl.float32)
        coef_w += g_inside * (-beta / 2)
        coef_l += g_inside * (beta / 2)
    if HAS_GRAD_LW:
        coef_w += tl.load(grad_lw_ptr + b).to(tl.float32)
    if HAS_GRAD_LL:
        coef_l += tl.load(grad_ll_ptr + b).to(tl.float32)
    scale = 2.0 / tl.load(denom_ptr + b)  # d/dp (m (p - t))^2 = 2 m^2 (p - t)
    coef_w = coef_w * scale
    coef_l = coef_l * scale
    for it in range(ITERS):
        idx = (tile * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        valid = idx < N
        if HAS_MASK:
            m = tl.load(mask_ptr + b * msb + _mask_offsets(idx, MD1, MD2, ms0, ms1, ms2),
                        mask=valid, other=0.0).to(tl.float32)
            m2 = m * m
        else:
            m2 = 1.0
        if NEED_W:
            pw = tl.load(pw_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
            tw = tl.load(tw_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
            gw = coef_w * m2 * (pw - tw)
            tl.store(gpw_ptr + base + idx, gw.to(gpw_ptr.dtype.element_ty), mask=valid)
        if NEED_L:
            pl = tl.load(pl_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
            tl_ = tl.load(tl_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
            gl = coef_l * m2 * (pl - tl_)
            tl.store(gpl_ptr + base + idx, gl.to(gpl_ptr.dtype.element_ty), mask=valid)


# --------------------------------------------------------------------------- launcher

def _mask_layout(mask: Tensor, shape: torch.Size):
    """The mask as (tensor, batch stride, [(size, stride)] x 3) read through broadcast strides.

    Size-1 dims are dropped and adjacent dims merged when their strides allow it, so the usual
    layouts need one index dim: [B, 1, h, w] against [B, C, h, w] is (C, 0), (h*w, 1); [B, S, 1]
    against [B, S, C] is (S, 1), (C, 0). More than 3 dims after merging (rare): expand to full
    size once.
    """
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # zero-copy; Triton reads bytes
    full = mask.expand(shape)
    dims: list[list[int]] = []
    for size, stride in zip(full.shape[1:], full.stride()[1:]):
        if size == 1:
            continue
        if dims and dims[-1][1] == stride * size:
            dims[-1] = [dims[-1][0] * size, stride]
        else:
            dims.append([size, stride])
    if len(dims) > 3:
        full = full.contiguous()
        return full, full.stride(0), [(1, 0), (1, 0), (full[0].numel(), 1)]
    dims = [[1, 0]] * (3 - len(dims)) + dims
    return full, full.stride(0), [tuple(d) for d in dims]


_COUNTERS: dict[torch.device, Tensor] = {}


def _counter(device: torch.device) -> Tensor:
    """A per-device arrival counter for single-launch finalisation; the last program re-arms it
    to 0, so it is zeroed once, not per call. Two launches must not run concurrently on different
    streams of one device (not a pattern training uses)."""
    if device not in _COUNTERS:
        _COUNTERS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _COUNTERS[device]


def _tiling(n: int, batch: int, block: int) -> tuple[int, int]:
    """(programs per sample, blocks per program): loop only when the grid would be very large."""
    blocks = triton.cdiv(n, block)
    iters = 1
    while batch * triton.cdiv(blocks, iters) > _TARGET_PROGRAMS and iters < 64:
        iters *= 2
    return triton.cdiv(blocks, iters), iters


def _on(device: torch.device):
    """Launch on the tensors' GPU, not whichever is current."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _prepare(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.detach().contiguous()


class FusedPreferenceLossFunction(torch.autograd.Function):
    """Outputs PreferenceTerms (loss, inside, L_theta(w), L_theta(l), L_ref(w), L_ref(l)).

    Differentiable w.r.t. policy_w and policy_l only (through loss, inside and L_theta).
    """

    @staticmethod
    def forward(ctx, policy_w, policy_l, ref_w, ref_l, target_w, target_l, mask, margin,
                ref_loss_w, ref_loss_l, beta, kind, normalize, block, num_warps, single_launch):
        shape = policy_w.shape
        batch, n = shape[0], policy_w[0].numel()
        pw, pl, rw, rl, tw, tl_ = (_prepare(x) for x in
                                   (policy_w, policy_l, ref_w, ref_l, target_w, target_l))
        device = pw.device
        has_mask = mask is not None
        if has_mask:
            mask_t, msb, ((_, ms0), (md1, ms1), (md2, ms2)) = _mask_layout(mask.detach(), shape)
        else:
            mask_t, msb, ms0, md1, ms1, md2, ms2 = pw, 0, 0, 1, 0, 1, 0
        sum_mask = has_mask and normalize == "mask"
        programs, iters = _tiling(n, batch, block)
        f32 = dict(device=device, dtype=torch.float32)
        partial = torch.empty((5, batch, programs), **f32)
        loss = torch.empty((), **f32)
        inside = torch.empty(batch, **f32)
        losses = [torch.empty(batch, **f32) for _ in range(4)]
        dloss = torch.empty(batch, **f32)
        denom = torch.empty(batch, **f32)
        block_b = triton.next_power_of_2(batch)
        block_p = max(1, min(triton.next_power_of_2(programs), _FINALIZE_TILE // block_b))
        cached = lambda x: partial if x is None else x.detach().float().contiguous()  # noqa: E731
        finalize_args = (cached(ref_loss_w), cached(ref_loss_l), cached(margin), loss, inside,
                         *losses, dloss, denom)
        flags = dict(SUM_MASK=sum_mask, HAS_REF_W=rw is not None, HAS_REF_L=rl is not None,
                     KIND=_KIND_CODE[kind], BLOCK_B=block_b, BLOCK_P=block_p)
        with _on(device):
            _fused_preference_loss_forward_kernel[(programs, batch)](
                pw, pl, rw if rw is not None else pw, rl if rl is not None else pl, tw, tl_,
                mask_t, partial, _counter(device), *finalize_args, n, batch, programs, msb, ms0,
                ms1, ms2, float(beta), MD1=md1, MD2=md2, HAS_MASK=has_mask, ITERS=iters,
                BLOCK=block, SINGLE_LAUNCH=single_launch, num_warps=num_warps, **flags)
            if not single_launch:
                _fused_preference_loss_finalize_kernel[(1,)](
                    partial, *finalize_args, batch, programs, n, float(beta), num_warps=4,
                    **flags)
        ctx.save_for_backward(pw, pl, tw, tl_, mask_t if has_mask else None, dloss, denom)
        ctx.layout = (n, batch, programs, iters, msb, ms0, ms1, ms2, md1, md2)
        ctx.beta, ctx.block, ctx.num_warps = float(beta), block, num_warps
        ctx.set_materialize_grads(False)
        ref_w_loss, ref_l_loss = losses[2], losses[3]
        ctx.mark_non_differentiable(ref_w_loss, ref_l_loss)
        return loss, inside, losses[0], losses[1], ref_w_loss, ref_l_loss

    @staticmethod
    def backward(ctx, grad_loss, grad_inside, grad_lw, grad_ll, _grad_rw, _grad_rl):
        pw, pl, tw, tl_, mask_t, dloss, denom = ctx.saved_tensors
        n, batch, programs, iters, msb, ms0, ms1, ms2, md1, md2 = ctx.layout
        need_w, need_l = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_w or need_l) or all(g is None for g in (grad_loss, grad_inside, grad_lw,
                                                            grad_ll)):
            return (None,) * 16
        gpw = torch.empty_like(pw) if need_w else None
        gpl = torch.empty_like(pl) if need_l else None
        prep = lambda g: None if g is None else g.detach().float().contiguous()  # noqa: E731
        grads = [prep(g) for g in (grad_loss, grad_inside, grad_lw, grad_ll)]
        with _on(pw.device):
            _fused_preference_loss_backward_kernel[(programs, batch)](
                pw, pl, tw, tl_, mask_t if mask_t is not None else pw,
                gpw if gpw is not None else pw, gpl if gpl is not None else pl,
                dloss, denom, *[g if g is not None else dloss for g in grads],
                n, batch, msb, ms0, ms1, ms2, ctx.beta,
                MD1=md1, MD2=md2, HAS_MASK=mask_t is not None,
                HAS_GRAD_LOSS=grads[0] is not None, HAS_GRAD_INSIDE=grads[1] is not None,
                HAS_GRAD_LW=grads[2] is not None, HAS_GRAD_LL=grads[3] is not None,
                NEED_W=need_w, NEED_L=need_l, ITERS=iters, BLOCK=ctx.block,
                num_warps=ctx.num_warps)
        return (gpw, gpl) + (None,) * 14


def _runs_triton(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    # The interpreter is chosen when the kernels are decorated (TRITON_INTERPRET at import time).
    return device.type == "cpu" and type(_fused_preference_loss_forward_kernel).__name__ \
        == "InterpretedFunction"


def fused_preference_terms(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor | None,
                           ref_l: Tensor | None, target_w: Tensor, target_l: Tensor, *,
                           beta: float, kind: str = "dpo", mask: Tensor | None = None,
                           margin: Tensor | None = None, normalize: str = "all",
                           ref_loss_w: Tensor | None = None, ref_loss_l: Tensor | None = None,
                           block: int = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS,
                           single_launch: bool = DEFAULT_SINGLE_LAUNCH) -> PreferenceTerms:
    """`fyp.dpo.losses.preference_terms`, fused; see the module docstring."""
    check_preference_inputs(policy_w, policy_l, ref_w, ref_l, target_w, target_l, beta=beta,
                            kind=kind, mask=mask, margin=margin, normalize=normalize,
                            ref_loss_w=ref_loss_w, ref_loss_l=ref_loss_l)
    if not _runs_triton(policy_w.device):
        return preference_terms(policy_w, policy_l, ref_w, ref_l, target_w, target_l, beta=beta,
                                kind=kind, mask=mask, margin=margin, normalize=normalize,
                                ref_loss_w=ref_loss_w, ref_loss_l=ref_loss_l)
    out = FusedPreferenceLossFunction.apply(policy_w, policy_l, ref_w, ref_l, target_w, target_l,
                                            mask, margin, ref_loss_w, ref_loss_l, float(beta),
                                            kind, normalize, block, num_warps, single_launch)
    return PreferenceTerms(*out)


def fused_preference_loss(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor | None,
                          ref_l: Tensor | None, target_w: Tensor, target_l: Tensor, *,
                          beta: float, kind: str = "dpo", mask: Tensor | None = None,
                          margin: Tensor | None = None, normalize: str = "all",
                          ref_loss_w: Tensor | None = None,
                          ref_loss_l: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The preference loss (scalar) and inside term [B]: `fyp.dpo.losses.preference_loss`, fused."""
    terms = fused_preference_terms(policy_w, policy_l, ref_w, ref_l, target_w, target_l,
                                   beta=beta, kind=kind, mask=mask, margin=margin,
                                   normalize=normalize, ref_loss_w=ref_loss_w,
                                   ref_loss_l=ref_loss_l)
    return terms.loss, terms.inside
