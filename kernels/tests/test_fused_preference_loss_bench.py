"""Benchmarks of the preference loss: `pytest kernels --benchmark` (skipped otherwise).

On a CUDA machine: the fused Triton kernel vs the eager PyTorch reference vs torch.compile of it,
forward+backward at FLUX sizes (8 pairs x 4096 tokens x 64 channels, bf16), with bytes moved, GB/s
and peak extra memory in each benchmark's extra_info. pytest-benchmark times wall clock, Python
launch overhead included; device-only times (CUDA graphs, L2 rotated out) and the 70%-of-HBM check
are in `benchmarks/gpu/fused_loss.py`.

On a CPU the Triton kernel could only run in the interpreter, whose times mean nothing: there the
benchmarks compare the reference eager vs torch.compile only, at a smaller shape.
"""
from __future__ import annotations

import pytest
import torch

from fyp.dpo.losses import preference_terms

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SHAPE = (8, 4096, 64) if CUDA else (8, 1024, 64)
DTYPE = torch.bfloat16 if CUDA else torch.float32
BETA = 2000.0

pytestmark = pytest.mark.benchmark


def _inputs():
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    tensors = [torch.randn(SHAPE, generator=gen, device=DEVICE).to(DTYPE) for _ in range(6)]
    mask = (torch.rand(SHAPE[:2] + (1,), generator=gen, device=DEVICE) > 0.5).to(DTYPE)
    return tensors, mask


def _implementations():
    impls = {"eager": preference_terms,
             "compile": torch.compile(preference_terms, dynamic=False)}
    if CUDA:
        from kernels import fused_preference_terms
        impls["fused"] = fused_preference_terms
    return impls


def _step(fn, tensors, mask):
    pw, pl = (t.detach().clone().requires_grad_() for t in tensors[:2])

    def step():
        terms = fn(pw, pl, *tensors[2:], beta=BETA, mask=mask)
        grads = torch.autograd.grad(terms.loss, (pw, pl))
        if CUDA:
            torch.cuda.synchronize()
        return grads
    return step


@pytest.mark.parametrize("impl", ["fused", "eager", "compile"])
def test_bench_forward_backward(benchmark, impl):
    impls = _implementations()
    if impl not in impls:
        pytest.skip("the fused Triton kernel is benchmarked on CUDA only (interpreter on CPU)")
    tensors, mask = _inputs()
    step = _step(impls[impl], tensors, mask)
    grads = step()  # warm-up: compiles Triton / Inductor
    step()
    nbytes = 12 * tensors[0].numel() * tensors[0].element_size() + 2 * mask.numel() * \
        mask.element_size()
    extra_mib = float("nan")
    if CUDA:
        grads_bytes = sum(g.numel() * g.element_size() for g in grads)
        del grads
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        kept = step()
        extra_mib = (torch.cuda.max_memory_allocated() - base - grads_bytes) / 2**20
        del kept
    benchmark.pedantic(step, rounds=20 if CUDA else 5, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(device=str(DEVICE), shape=list(SHAPE), dtype=str(DTYPE),
                                min_bytes=nbytes, GBps=nbytes / seconds / 1e9,
                                peak_extra_MiB=extra_mib)
    if CUDA and impl == "fused":
        # no full-size intermediate: one [B, S, C] tensor in bf16 is 4 MiB at FLUX sizes
        assert extra_mib < 1.0, f"fused loss allocated {extra_mib:.2f} MiB beyond its gradients"
