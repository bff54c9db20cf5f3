"""The fused preference loss and its PyTorch reference against a naive implementation of SPEC section 4.

On a CPU the Triton kernels run in the interpreter (kernels/conftest.py sets TRITON_INTERPRET=1), so
shapes stay small; the same tests run the compiled kernels on a CUDA machine.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import kernels.fused_preference_loss_ops as fpl
from fyp.dpo.losses import denoising_loss, preference_loss, preference_terms
from fyp.dpo.metrics import implicit_accuracy, preference_metrics
from kernels import fused_preference_loss, fused_preference_terms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, SHAPE = 3, (5, 7, 13)  # odd on purpose: no dim is a multiple of a block
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}
MASKS = {  # name -> mask shape for predictions [B, 5, 7, 13]
    "none": None,
    "latent": (B, 1, 7, 13),     # one hole per sample, broadcast over channels
    "tokens": (B, 5, 7, 1),      # broadcast over the innermost dim (packed tokens x channels)
    "shared": (1, 5, 1, 13),     # one mask for the whole batch, two broadcast dims
    "full": (B, 5, 7, 13),
}


# --------------------------------------------------------------------------- the naive spec

def naive_preference_loss(pw, pl, rw, rl, tw, tl, *, beta, kind, mask, margin, normalize):
    """SPEC section 4 written out per sample, in float64, no shared code with fyp.dpo.losses."""
    def denoise(pred, target, b):
        diff = pred[b].double() - target[b].double()
        hole = (torch.ones_like(diff) if mask is None
                else mask.double().expand(pred.shape)[b])
        size = diff.numel() if normalize == "all" else hole.sum()
        return ((hole * diff) ** 2).sum() / size

    losses, insides = [], []
    for b in range(pw.shape[0]):
        lw, ll = denoise(pw, tw, b), denoise(pl, tl, b)
        ref_lw, ref_ll = denoise(rw, tw, b).detach(), denoise(rl, tl, b).detach()
        inside = -(beta / 2) * ((lw - ref_lw) - (ll - ref_ll))
        if kind == "dpo":
            loss = -torch.nn.functional.logsigmoid(inside)  # -log sigmoid, finite at |x| >> 40
        elif kind == "ipo":
            logits = (ref_lw - lw) - (ref_ll - ll)
            loss = (logits - 1 / (2 * beta)) ** 2
        else:
            loss = ((margin[b].double()) - inside) ** 2
        losses.append(loss)
        insides.append(inside)
    return torch.stack(losses).mean(), torch.stack(insides)


def make_inputs(kind, mask_name, dtype, seed=0, shape=(B, *SHAPE)):
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=gen).to(DEVICE, dtype) for _ in range(6)]
    # the policy a little off the reference so inside is O(1) with beta = 3
    tensors[0] = (tensors[2].float() + 0.3 * torch.randn(shape, generator=gen).to(DEVICE)).to(dtype)
    tensors[1] = (tensors[3].float() + 0.3 * torch.randn(shape, generator=gen).to(DEVICE)).to(dtype)
    mshape = MASKS[mask_name]
    mask = None if mshape is None else (torch.rand(mshape, generator=gen) > 0.4).to(DEVICE)
    margin = torch.rand(shape[0], generator=gen).to(DEVICE) if kind in ("capo", "caen") else None
    return tensors, mask, margin


def leaves(tensors):
    return [t.detach().clone().requires_grad_(i < 2) for i, t in enumerate(tensors)]


def run(fn, tensors, **kw):
    x = leaves(tensors)
    loss, inside = fn(*x, **kw)
    loss.backward()
    return loss.detach(), inside.detach(), x[0].grad, x[1].grad


def assert_close(a, b, dtype, what):
    torch.testing.assert_close(a.double().cpu(), b.double().cpu(), **TOL[dtype], msg=what)


def assert_matches(got, want):
    """(loss, inside, grad_w, grad_l) of two fp32 implementations: inside is a beta-scaled
    difference of differences, so its error is absolute (~1e-5); gradients are ~1/numel."""
    for g, w, atol in zip(got, want, (1e-5, 1e-5, 1e-7, 1e-7)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=atol)


# --------------------------------------------------------------------------- correctness

def test_the_triton_kernel_is_what_runs():
    """Without this, a CPU run whose TRITON_INTERPRET came too late would silently compare the
    reference with itself (the fused op falls back to it)."""
    assert fpl._runs_triton(torch.device(DEVICE)), (
        "Triton kernels are not interpreted: TRITON_INTERPRET=1 must be set before "
        "kernels.fused_preference_loss_ops is imported (kernels/conftest.py does it)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("normalize", ["all", "mask"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("kind", ["dpo", "ipo", "capo", "caen"])
def test_matches_naive_spec(kind, mask_name, normalize, dtype):
    tensors, mask, margin = make_inputs(kind, mask_name, dtype)
    kw = dict(beta=3.0, kind=kind, mask=mask, margin=margin, normalize=normalize)
    n_loss, n_inside, n_gw, n_gl = run(naive_preference_loss, tensors, **kw)
    for name, fn in (("reference", preference_loss), ("fused", fused_preference_loss)):
        loss, inside, gw, gl = run(fn, tensors, **kw)
        assert loss.dtype == torch.float32 and inside.shape == (B,)
        assert gw.dtype == dtype and gw.shape == tensors[0].shape
        assert_close(loss, n_loss, dtype, f"{name} loss")
        assert_close(inside, n_inside, dtype, f"{name} inside")
        # gradients are ~1/numel: compare relative to their scale
        scale = n_gw.abs().max().item() + n_gl.abs().max().item()
        assert_close(gw / scale, n_gw / scale, dtype, f"{name} d/d policy_w")
        assert_close(gl / scale, n_gl / scale, dtype, f"{name} d/d policy_l")
        assert torch.count_nonzero(gw) > 0 and torch.count_nonzero(gl) > 0


@pytest.mark.parametrize("kind", ["dpo", "ipo", "capo"])
def test_fused_equals_reference_tightly(kind):
    """Both do fp32 math on the same inputs: they agree to rounding, not just to tolerance."""
    tensors, mask, margin = make_inputs(kind, "latent", torch.float32, seed=3)
    kw = dict(beta=100.0, kind=kind, mask=mask, margin=margin, normalize="mask")
    ref = run(preference_loss, tensors, **kw)
    fused = run(fused_preference_loss, tensors, **kw)
    for r, f in zip(ref, fused):
        torch.testing.assert_close(f, r, rtol=2e-5, atol=1e-6)


def test_all_outputs_and_their_gradients_match_reference():
    """Every output of the terms (inside, the policy MSEs) back-propagates like the reference."""
    tensors, mask, margin = make_inputs("capo", "tokens", torch.float32, seed=5)
    kw = dict(beta=3.0, kind="capo", mask=mask, margin=margin, normalize="all")
    grads, outs = [], []
    for fn in (preference_terms, fused_preference_terms):
        x = leaves(tensors)
        terms = fn(*x, **kw)
        weights = torch.linspace(0.5, 1.5, B, device=DEVICE)
        total = (terms.loss + (weights * terms.inside).sum() + (weights * terms.policy_loss_w).sum()
                 - 2 * terms.policy_loss_l.sum())
        total.backward()
        grads.append((x[0].grad, x[1].grad))
        outs.append(terms)
    for r, f in zip(*outs):
        torch.testing.assert_close(f.detach(), r.detach(), rtol=1e-5, atol=1e-6)
    for r, f in zip(*grads):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-7)


def test_reference_and_targets_get_no_gradient():
    tensors, mask, _ = make_inputs("dpo", "latent", torch.float32)
    for fn in (preference_loss, fused_preference_loss):
        x = [t.detach().clone().requires_grad_() for t in tensors]
        fn(*x, beta=3.0, mask=mask)[0].backward()
        assert x[0].grad is not None and x[1].grad is not None
        assert all(t.grad is None for t in x[2:])


@pytest.mark.parametrize("cached_sides", ["both", "winner"])
def test_precomputed_reference_losses(cached_sides):
    """The trainer's reference-loss cache: ref_loss_w/ref_loss_l [B] instead of predictions."""
    tensors, mask, margin = make_inputs("capo", "latent", torch.float32, seed=7)
    kw = dict(beta=3.0, kind="capo", mask=mask, margin=margin, normalize="mask")
    expected = run(preference_loss, tensors, **kw)
    pw, pl, rw, rl, tw, tl = tensors
    ref_loss_w = denoising_loss(rw, tw, mask, "mask")
    ref_loss_l = denoising_loss(rl, tl, mask, "mask") if cached_sides == "both" else None
    cached_rl = None if cached_sides == "both" else rl
    for fn in (preference_loss, fused_preference_loss):
        x = leaves([pw, pl])
        loss, inside = fn(x[0], x[1], None, cached_rl, tw, tl, ref_loss_w=ref_loss_w,
                          ref_loss_l=ref_loss_l, **kw)
        loss.backward()
        assert_matches((loss.detach(), inside.detach(), x[0].grad, x[1].grad), expected)


def test_paper_beta_and_saturated_dpo_stay_finite():
    """beta = 2000 (the paper's FLUX setting) drives |inside| far past where sigmoid saturates."""
    tensors, mask, _ = make_inputs("dpo", "none", torch.float32, seed=11)
    tensors[0] = tensors[0] + 2.0  # policy far worse on the winner: inside << 0
    naive = run(naive_preference_loss, tensors, beta=2000.0, kind="dpo", mask=None, margin=None,
                normalize="all")
    for fn in (preference_loss, fused_preference_loss):
        got = run(fn, tensors, beta=2000.0)
        assert all(torch.isfinite(g).all() for g in got)
        torch.testing.assert_close(got[0].double().cpu(), naive[0].cpu(), rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(got[1].double().cpu(), naive[1].cpu(), rtol=1e-5, atol=1e-3)


def test_empty_hole_gives_zero_loss_term_and_zero_gradient():
    tensors, _, _ = make_inputs("dpo", "none", torch.float32)
    mask = torch.ones(B, 1, 7, 13, device=DEVICE)
    mask[1] = 0  # sample 1 has no hole
    for fn in (preference_terms, fused_preference_terms):
        x = leaves(tensors)
        terms = fn(*x, beta=3.0, mask=mask, normalize="mask")
        terms.loss.backward()
        assert terms.policy_loss_w[1] == 0 and terms.ref_loss_l[1] == 0 and terms.inside[1] == 0
        assert torch.isfinite(x[0].grad).all() and (x[0].grad[1] == 0).all()
        assert (x[0].grad[0] != 0).any()


def test_non_contiguous_inputs_and_float_mask():
    tensors, _, _ = make_inputs("ipo", "none", torch.float32, shape=(B, 13, 7, 5))
    tensors = [t.transpose(1, 3) for t in tensors]  # [B, 5, 7, 13], not contiguous
    mask = torch.rand(B, 1, 7, 13, generator=torch.Generator().manual_seed(3)).to(DEVICE)  # a soft mask
    kw = dict(beta=3.0, kind="ipo", mask=mask, normalize="mask")
    ref = run(preference_loss, tensors, **kw)
    fused = run(fused_preference_loss, tensors, **kw)
    assert_matches(fused, ref)


def test_multi_block_programs_and_looped_finalize(monkeypatch):
    """Force several blocks per program and a finalize loop over many partials."""
    monkeypatch.setattr(fpl, "_TARGET_PROGRAMS", 8)
    monkeypatch.setattr(fpl, "_FINALIZE_TILE", 8)
    tensors, mask, margin = make_inputs("caen", "shared", torch.float32, seed=13)
    kw = dict(beta=3.0, kind="caen", mask=mask, margin=margin, normalize="mask")
    assert fpl._tiling(SHAPE[0] * SHAPE[1] * SHAPE[2], B, 16)[1] > 1
    ref = run(preference_loss, tensors, **kw)
    x = leaves(tensors)
    terms = fused_preference_terms(*x, block=16, num_warps=1, **kw)
    terms.loss.backward()
    assert_matches((terms.loss.detach(), terms.inside.detach(), x[0].grad, x[1].grad), ref)


@pytest.mark.parametrize("mask_name", ["none", "latent"])
def test_two_launch_finalize_equals_single_launch(mask_name):
    """Stage 2 in the last program or as a second launch: the same reduction order, equal bits."""
    tensors, mask, margin = make_inputs("caen", mask_name, torch.float32, seed=19)
    kw = dict(beta=3.0, kind="caen", mask=mask, margin=margin, normalize="mask")
    results = []
    for single in (True, False):
        x = leaves(tensors)
        terms = fused_preference_terms(*x, block=64, single_launch=single, **kw)
        terms.loss.backward()
        results.append([t.detach() for t in terms] + [x[0].grad, x[1].grad])
        assert fpl._counter(torch.device(DEVICE)).item() == 0  # re-armed for the next call
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_flux_packed_token_mask():
    """FLUX packs 2x2 latent patches into 64 channels ordered (c, ph, pw): the hole at latent
    resolution is [B, S, 1, 4] against predictions viewed as [B, S, 16, 4] (3 index dims)."""
    gen = torch.Generator().manual_seed(23)
    tensors = [torch.randn(2, 6, 16, 4, generator=gen).to(DEVICE) for _ in range(6)]
    mask = (torch.rand(2, 6, 1, 4, generator=gen) > 0.5).to(DEVICE)
    assert len([d for d in fpl._mask_layout(mask, tensors[0].shape)[2] if d[0] > 1]) == 3
    kw = dict(beta=3.0, mask=mask, normalize="mask")
    naive = run(naive_preference_loss, tensors, kind="dpo", margin=None, **kw)
    fused = run(fused_preference_loss, tensors, **kw)
    for f, n in zip(fused, naive):
        assert_close(f, n, torch.float32, "packed-token mask")


def test_deterministic():
    tensors, mask, _ = make_inputs("dpo", "latent", torch.float32, seed=17)
    first = run(fused_preference_loss, tensors, beta=3.0, mask=mask)
    second = run(fused_preference_loss, tensors, beta=3.0, mask=mask)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cpu_without_interpreter_uses_reference():
    """Without TRITON_INTERPRET a CPU call must not touch Triton: it runs the reference."""
    code = (
        "import torch, kernels.fused_preference_loss_ops as f\n"
        "from fyp.dpo.losses import preference_loss\n"
        "assert not f._runs_triton(torch.device('cpu'))\n"
        "x = [torch.randn(2, 3, 4) for _ in range(6)]\n"
        "a = f.fused_preference_loss(*x, beta=5.0)\n"
        "b = preference_loss(*x, beta=5.0)\n"
        "assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("fn", [preference_loss, fused_preference_loss], ids=["ref", "fused"])
@pytest.mark.parametrize("change, message", [
    (dict(kind="capo"), "needs margin"),
    (dict(margin=torch.zeros(B)), "margin is used only"),
    (dict(kind="kto"), "kind='kto'"),
    (dict(normalize="hole"), "normalize='hole'"),
    (dict(beta=0.0), "beta must be"),
    (dict(beta=math.nan), "beta must be"),
    (dict(mask=torch.ones(7, 13)), "same number of dims"),
    (dict(mask=torch.ones(B, 2, 7, 13)), "does not broadcast"),
    (dict(ref_loss_w=torch.zeros(B)), "exactly one of ref_w"),
    (dict(margin=torch.zeros(B + 1), kind="capo"), "margin must be a [B]"),
])
def test_bad_input_is_refused_with_a_clear_message(fn, change, message):
    tensors, _, _ = make_inputs("dpo", "none", torch.float32)
    kw = dict(beta=3.0)
    kw.update({k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in change.items()})
    with pytest.raises((ValueError, TypeError), match=__import__("re").escape(message)):
        fn(*tensors, **kw)


def test_shape_and_dtype_mismatch_refused():
    tensors, _, _ = make_inputs("dpo", "none", torch.float32)
    with pytest.raises(ValueError, match="target_l has shape"):
        fused_preference_loss(*tensors[:5], tensors[5][:, :2], beta=1.0)
    with pytest.raises(TypeError, match="policy_l must be a floating-point"):
        preference_loss(tensors[0], tensors[1].long(), *tensors[2:], beta=1.0)
    with pytest.raises(ValueError, match="give exactly one of ref_l"):
        preference_loss(tensors[0], tensors[1], tensors[2], None, *tensors[4:], beta=1.0)


# --------------------------------------------------------------------------- metrics

def test_metrics():
    inside = torch.tensor([2.0, -1.0, 0.0, 3.0])
    assert implicit_accuracy(inside).item() == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    tensors, mask, _ = make_inputs("dpo", "latent", torch.float32)
    terms = preference_terms(*tensors, beta=3.0, mask=mask)
    metrics = preference_metrics(terms)
    assert set(metrics) == {"loss", "implicit_accuracy", "mse_policy_w", "mse_policy_l",
                            "mse_ref_w", "mse_ref_l", "reward_margin"}
    assert metrics["mse_ref_w"].item() == pytest.approx(
        denoising_loss(tensors[2], tensors[4], mask).mean().item(), rel=1e-6)
    assert metrics["reward_margin"].item() == pytest.approx(terms.inside.mean().item(), rel=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
