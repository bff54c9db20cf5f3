"""Batch-invariant linear layers: a row's result must not depend on the other rows of its batch.

A candidate must come out bit-identical whether it is generated alone or among the K candidates of its
sample. Plain `F.linear` folds the batch into the rows of one matrix product, and BLAS picks a
different kernel for a different row count (on this CPU, 1 row vs 4 rows of the timestep embedder
already differ by 1 ulp; after two steps one pixel differs by 1). Inside `batch_invariant(model)`,
every `nn.Linear` of the model on an input [B, ..., D] runs as one product of the same shape per batch
element (`mm` per element on a CPU, `bmm` over B on CUDA), so each element's arithmetic is the same
whatever B is. Measured on the 2-core CPU dev box:
the tiny transformer gives bit-identical latents for batches of 1, 3 and 7, at 1 and 2 threads, for
about 1.3x its plain run time. Attention (SDPA), norms and element-wise ops were already per-row
invariant there. On CUDA the mode applies too; cuBLAS may still pick a batch-count-dependent kernel,
which has not been measured (see docs/sampling.md).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def batch_invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed per leading-dim element, each with a product of the same shape.

    On a CPU: one `mm` per element. A single `bmm` is not enough there: MKL's batched product picks its
    kernel by the batch count on AVX2 CPUs (measured with MKL_ENABLE_INSTRUCTIONS=AVX2: batches of 5 vs
    1 differ; on AVX-512 they did not). On CUDA: one `bmm` (one launch; see the module's note).
    """
    if x.ndim < 2:
        return F.linear(x, weight, bias)
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])
    wt = weight.t()
    if x.device.type == "cpu":
        out = torch.stack([torch.mm(row, wt) for row in x3.unbind(0)])
    else:
        out = torch.bmm(x3, wt.unsqueeze(0).expand(x3.shape[0], -1, -1))
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _linear_forward(layer: torch.nn.Linear):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return batch_invariant_linear(x, layer.weight, layer.bias)
    return forward


@contextlib.contextmanager
def batch_invariant(module: torch.nn.Module):
    """Inside, every `nn.Linear` of `module` runs batch-invariantly; restored on exit.

    Implemented by giving each layer an instance-level `forward` (no per-op dispatch cost, unlike a
    TorchFunctionMode, whose Python hook on every op cost ~15% of a small forward). Layers that already
    carry an instance-level forward (e.g. accelerate's offload hooks) are left as they are.
    """
    patched = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and "forward" not in m.__dict__]
    for layer in patched:
        layer.forward = _linear_forward(layer)
    try:
        yield module
    finally:
        for layer in patched:
            del layer.forward
