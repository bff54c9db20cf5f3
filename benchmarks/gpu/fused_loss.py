#!/usr/bin/env python
"""Fused preference loss on one GPU: correctness at full size, then speed and memory.

    python benchmarks/gpu/fused_loss.py --out results/fused_loss --max-seconds 200
    python benchmarks/gpu/fused_loss.py --tiny --out /tmp/fl     # CPU smoke test (interpreter)

Imports torch, triton and this repository's `kernels` (+ `fyp.dpo.losses`, torch only) — nothing else.
Shapes: FLUX.1 Fill packed latents, 8 pairs x 4096 tokens x 64 channels (512 px), bf16 and fp32.

1. correctness: fused vs the PyTorch reference (loss, inside, both gradients) for DPO/IPO/CaPO,
   with and without masks, normalize all/mask, single- and two-launch finalize; PASS/FAIL per row.
2. speed: fused vs eager vs torch.compile of the reference, forward and forward+backward. Times are
   device times from CUDA-graph replays (no Python launch overhead; a training step hides that
   behind the 12B model) with the inputs rotated over enough copies that none is still in L2.
   Bytes moved = the minimum traffic (forward: read 6 tensors + the mask; backward: read 4 + mask,
   write 2), the same for every implementation, so GB/s is effective bandwidth. Peak extra memory =
   peak allocated during forward+backward minus what was allocated before, minus the two gradients.
3. sweep: block size x warps x finalize mode of the fused kernel (bf16, masked).
Writes correctness.csv, speed.csv, sweep.csv under --out and prints tables. Stops starting new
measurements after --max-seconds.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SPEC_BANDWIDTH = {  # bytes/s, vendor figures; matched against torch.cuda.get_device_name()
    "H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
    "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12,
    "L40S": 0.864e12, "A10": 0.6e12,
}
L2_BYTES = 60e6  # >= H100/H200's 50 MB; inputs are rotated over >= 3x this


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the CSV files")
    p.add_argument("--max-seconds", type=float, default=200.0)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: small shapes, interpreter")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--beta", type=float, default=2000.0)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-sweep", action="store_true")
    args = p.parse_args()
    if args.tiny:
        args.batch, args.tokens, args.channels = 2, 64, 16
    return args


ARGS = parse_args()
import torch  # noqa: E402

if not torch.cuda.is_available():
    if not ARGS.tiny:
        sys.exit("no CUDA device: run with --tiny for a CPU smoke test")
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import triton  # noqa: E402

from fyp.dpo.losses import preference_terms  # noqa: E402
from kernels.fused_preference_loss_ops import fused_preference_terms  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
START = time.monotonic()


def out_of_time() -> bool:
    return time.monotonic() - START > ARGS.max_seconds


# --------------------------------------------------------------------------- inputs

def make_set(dtype, mask_kind, kind, seed):
    shape = (ARGS.batch, ARGS.tokens, ARGS.channels)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    rand = lambda: torch.randn(shape, generator=gen, device=DEVICE)  # noqa: E731
    ref_w, ref_l, tgt_w, tgt_l = rand(), rand(), rand(), rand()
    pol_w, pol_l = ref_w + 1e-2 * rand(), ref_l + 1e-2 * rand()
    tensors = [t.to(dtype) for t in (pol_w, pol_l, ref_w, ref_l, tgt_w, tgt_l)]
    mask = {"none": None,
            "token": (torch.rand(shape[:2] + (1,), generator=gen, device=DEVICE) > 0.5).to(dtype),
            "full": (torch.rand(shape, generator=gen, device=DEVICE) > 0.5).to(dtype)}[mask_kind]
    margin = torch.rand(shape[0], generator=gen, device=DEVICE) if kind == "capo" else None
    return tensors, mask, margin


def min_bytes(tensors, mask, passes):
    size = tensors[0].numel() * tensors[0].element_size()
    mask_bytes = 0 if mask is None else mask.numel() * mask.element_size()
    fwd, bwd = 6 * size + mask_bytes, 6 * size + mask_bytes
    return {"fwd": fwd, "fwd+bwd": fwd + bwd}[passes]


def implementations(with_compile):
    impls = {
        "fused": lambda *a, **k: fused_preference_terms(*a, **k),
        "fused-2launch": lambda *a, **k: fused_preference_terms(*a, single_launch=False, **k),
        "eager": preference_terms,
    }
    if with_compile:
        impls["compile"] = torch.compile(preference_terms, dynamic=False)
    return impls


def make_call(fn, tensors, mask, margin, kind, passes, **extra):
    pw, pl = (t.detach().clone().requires_grad_(passes != "fwd") for t in tensors[:2])
    rest = tensors[2:]

    def call():
        terms = fn(pw, pl, *rest, beta=ARGS.beta, kind=kind, mask=mask, margin=margin, **extra)
        if passes == "fwd":
            return terms.loss
        return torch.autograd.grad(terms.loss, (pw, pl))
    return call


# --------------------------------------------------------------------------- timing

def time_call_ms(calls) -> tuple[float, str]:
    """Median device time of one call; CUDA graph of calls rotated over input copies."""
    if not CUDA:
        for c in calls:
            c()
        times = []
        for i in range(5):
            t0 = time.perf_counter()
            calls[i % len(calls)]()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), "cpu-wall"
    reps = 4 * len(calls)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for c in calls * 2:
                c()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for r in range(reps):
                calls[r % len(calls)]()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / reps)
        del graph
        return statistics.median(times), "cuda-graph"
    except Exception as err:  # noqa: BLE001 - fall back, and say so in the table
        torch.cuda.synchronize()
        ms = triton.testing.do_bench(calls[0], warmup=10, rep=50, return_mode="median")
        return ms, f"events+L2flush ({type(err).__name__})"


def peak_extra_mib(call, grads_bytes) -> float:
    if not CUDA:
        return float("nan")
    call()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return (peak - grads_bytes) / 2**20


def copy_bandwidth() -> float:
    """Measured device-to-device copy bandwidth (bytes/s), 1 GiB each way."""
    if not CUDA:
        return float("nan")
    src = torch.empty(2**30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=5, rep=30, return_mode="median")
    del src, dst
    return 2 * 2**30 / (ms * 1e-3)


def spec_bandwidth() -> tuple[str, float]:
    if not CUDA:
        return "cpu", float("nan")
    name = torch.cuda.get_device_name()
    for key, value in SPEC_BANDWIDTH.items():
        if key in name:
            return name, value
    return name, float("nan")


# --------------------------------------------------------------------------- sections

def float64_terms(pw, pl, rw, rl, tw, tl, *, beta, kind, mask, margin, normalize):
    """SPEC section 4 in float64: the truth both fp32 implementations are measured against."""
    def denoise(pred, target):
        diff = pred.double() - target.double()
        hole = torch.ones_like(diff) if mask is None else mask.double().expand(diff.shape)
        size = diff[0].numel() if normalize == "all" else hole.flatten(1).sum(1)
        return (hole * diff).square().flatten(1).sum(1) / size
    lw, ll = denoise(pw, tw), denoise(pl, tl)
    ref_w, ref_l = denoise(rw, tw).detach(), denoise(rl, tl).detach()
    inside = -(beta / 2) * ((lw - ref_w) - (ll - ref_l))
    if kind == "dpo":
        per_pair = -torch.nn.functional.logsigmoid(inside)
    elif kind == "ipo":
        per_pair = ((ref_w - lw) - (ref_l - ll) - 1 / (2 * beta)).square()
    else:
        per_pair = (margin.double() - inside).square()
    return per_pair.mean(), inside


# The training configuration first (DPO, token mask, normalize all: the kernels the speed rows
# reuse), then one case per other kind/mask/normalize; EXTRA_CASES only when time is left.
CORE_CASES = [(k, m, n, d, True, 10.0) for d in DTYPES for k, m, n in (
    ("dpo", "token", "all"), ("capo", "full", "mask"), ("ipo", "none", "all"))]
CORE_CASES += [("dpo", "token", "all", d, True, ARGS.beta) for d in DTYPES]
CORE_CASES += [("dpo", "token", "all", "bf16", False, 10.0)]
EXTRA_CASES = [(k, m, n, d, True, 10.0) for d in DTYPES for k in ("dpo", "ipo", "capo")
               for m, n in (("none", "all"), ("token", "mask"), ("full", "all"))]


def correctness(rows, cases):
    """Fused and eager (both fp32 math) against float64, relative max errors of loss, inside and
    the two gradients. At beta = 10: every error < 1e-4 (bf16 gradients: + one bf16 rounding).
    At the paper's beta (2000) inside = beta/2 x a difference of nearly equal losses, so fp32
    summation noise (~1e-7 of the losses) is amplified ~1000x in both implementations: there the
    fused error must stay within 4x the eager one or the expected noise 2e-6 x beta x L."""
    for kind, mask_kind, normalize, dname, single, beta in cases:
        if out_of_time():
            print("correctness: out of time, stopped")
            return
        tensors, mask, margin = make_set(DTYPES[dname], mask_kind, kind, seed=1)
        got = []
        for fn in (float64_terms, preference_terms, fused_preference_terms):
            extra = {"single_launch": single} if fn is fused_preference_terms else {}
            pw, pl = (t.detach().clone().requires_grad_() for t in tensors[:2])
            out = fn(pw, pl, *tensors[2:], beta=beta, kind=kind, mask=mask, margin=margin,
                     normalize=normalize, **extra)
            loss, inside = out[0], out[1]
            gw, gl = torch.autograd.grad(loss, (pw, pl))
            got.append((loss.detach().double(), inside.detach().double(), gw.double(),
                        gl.double()))
        truth = got[0]
        grad_scale = max(truth[2].abs().max().item(), truth[3].abs().max().item(), 1e-30)
        scales = (1 + truth[0].abs().item(), 1 + truth[1].abs().max().item(), grad_scale,
                  grad_scale)

        def errors(result):  # relative max errors of loss, inside, grad_w, grad_l
            return [(r - t).abs().max().item() / sc for r, t, sc in zip(result, truth, scales)]
        eager, fused = errors(got[1]), errors(got[2])
        grad_round = 0.0 if dname == "fp32" else 8e-3  # bf16 gradients: one rounding (2^-8)
        if beta <= 10:
            tols = [1e-4, 1e-4, 1e-4 + grad_round, 1e-4 + grad_round]
        else:
            loss_scale = float(tensors[0].float().sub(tensors[4].float()).square().mean())
            noise = 2e-6 * beta * loss_scale
            tols = [noise, noise, noise + grad_round, noise + grad_round]
        ok = all(f <= max(4 * e, tol) for f, e, tol in zip(fused, eager, tols))
        rows.add(dict(kind=kind, mask=mask_kind, normalize=normalize, dtype=dname,
                      beta=beta, single_launch=single,
                         **{f"fused_{k}": f"{v:.1e}" for k, v in zip(
                             ("loss", "inside", "gw", "gl"), fused)},
                         **{f"eager_{k}": f"{v:.1e}" for k, v in zip(
                             ("loss", "inside", "gw", "gl"), eager)},
                         result="PASS" if ok else "FAIL"))


def race_check(rows, repeats=200):
    """The single-launch finalize hands partials between programs through an atomic counter: run it
    many times and require every result to equal, bit for bit, the two-launch result."""
    for dname in DTYPES:
        if out_of_time():
            return
        tensors, mask, _ = make_set(DTYPES[dname], "token", "dpo", seed=2)
        kw = dict(beta=ARGS.beta, mask=mask)
        want = fused_preference_terms(*tensors, single_launch=False, **kw)
        losses = torch.stack([fused_preference_terms(*tensors, **kw).loss
                              for _ in range(repeats)])
        insides = torch.stack([fused_preference_terms(*tensors, **kw).inside
                               for _ in range(repeats // 4)])
        mismatches = int((losses != want.loss).sum()) + int((insides != want.inside).any(1).sum())
        rows.add(dict(kind="dpo", mask="token", normalize="all", dtype=dname, beta=ARGS.beta,
                      single_launch=f"x{repeats} vs 2-launch", result="PASS" if mismatches == 0
                      else f"FAIL ({mismatches} differ)"))


def speed(rows, spec_bw, copy_bw, jobs):
    """jobs: (dtype, mask kind, implementation name); fwd and fwd+bwd for each."""
    impls = implementations(with_compile=not ARGS.no_compile)
    cache = {}
    for dname, mask_kind, name in jobs:
        if name not in impls:
            continue
        if name == "compile" and ARGS.max_seconds - (time.monotonic() - START) < 40:
            print(f"speed: skipped torch.compile {dname}/{mask_kind} (a compile takes ~20-40 s)")
            continue
        if (dname, mask_kind) not in cache:
            cache.clear()  # one input family in memory at a time
            sets = [make_set(DTYPES[dname], mask_kind, "dpo", seed=0)]
            n_sets = max(2, math.ceil(3 * L2_BYTES / min_bytes(sets[0][0], sets[0][1], "fwd"))) \
                if CUDA else 2
            sets += [make_set(DTYPES[dname], mask_kind, "dpo", seed=s) for s in range(1, n_sets)]
            cache[(dname, mask_kind)] = sets
        sets = cache[(dname, mask_kind)]
        grads_bytes = 2 * sets[0][0][0].numel() * sets[0][0][0].element_size()
        for passes in ("fwd", "fwd+bwd"):
            if out_of_time():
                print("speed: out of time, stopped")
                return
            nbytes = min_bytes(sets[0][0], sets[0][1], passes)
            calls = [make_call(impls[name], t, m, g, "dpo", passes) for t, m, g in sets]
            try:
                ms, how = time_call_ms(calls)
                extra = peak_extra_mib(calls[0], 0 if passes == "fwd" else grads_bytes)
            except Exception as err:  # noqa: BLE001 - e.g. compile missing a compiler
                rows.add(dict(dtype=dname, mask=mask_kind, impl=name, passes=passes,
                              error=f"{type(err).__name__}: {str(err)[:120]}"))
                continue
            finally:
                del calls
            gbps = nbytes / (ms * 1e-3) / 1e9
            rows.add(dict(dtype=dname, mask=mask_kind, impl=name, passes=passes,
                          us=f"{ms * 1e3:.1f}", bytes=nbytes, GBps=f"{gbps:.0f}",
                          pct_spec=f"{100 * gbps * 1e9 / spec_bw:.0f}",
                          pct_copy=f"{100 * gbps * 1e9 / copy_bw:.0f}",
                          peak_extra_MiB=f"{extra:.2f}", timing=how))


def sweep(rows, spec_bw):
    sets = [make_set(torch.bfloat16, "token", "dpo", seed=0)]
    n_sets = max(2, math.ceil(3 * L2_BYTES / min_bytes(sets[0][0], sets[0][1], "fwd"))) \
        if CUDA else 2
    sets += [make_set(torch.bfloat16, "token", "dpo", seed=s) for s in range(1, n_sets)]
    for block in (1024, 2048, 4096):
        for warps in (4, 8):
            for single in (True, False):
                for passes in ("fwd", "fwd+bwd"):
                    if out_of_time():
                        print("sweep: out of time, stopped")
                        return
                    calls = [make_call(fused_preference_terms, t, m, g, "dpo", passes, block=block,
                                       num_warps=warps, single_launch=single) for t, m, g in sets]
                    ms, how = time_call_ms(calls)
                    nbytes = min_bytes(sets[0][0], sets[0][1], passes)
                    gbps = nbytes / (ms * 1e-3) / 1e9
                    rows.add(dict(block=block, warps=warps, single_launch=single, passes=passes,
                                  us=f"{ms * 1e3:.1f}", GBps=f"{gbps:.0f}",
                                  pct_spec=f"{100 * gbps * 1e9 / spec_bw:.0f}", timing=how))
                    del calls


class Table(list):
    """Rows that are printed and written to CSV as they come (a time cap may kill the run)."""

    def __init__(self, path: Path, title: str):
        super().__init__()
        self.path, self.title = path, title

    def add(self, row: dict):
        self.append(row)
        print(f"[{self.title}] " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        keys = list(dict.fromkeys(k for r in self for k in r))
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self)

    def show(self):
        if not self:
            return
        keys = list(dict.fromkeys(k for r in self for k in r))
        widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in self)) for k in keys}
        print(f"\n== {self.title} ({self.path})")
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for r in self:
            print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))


def main():
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    name, spec_bw = spec_bandwidth()
    copy_bw = copy_bandwidth()
    print(f"device: {name}; torch {torch.__version__}, triton {triton.__version__}; spec bandwidth "
          f"{spec_bw / 1e9:.0f} GB/s, measured copy {copy_bw / 1e9:.0f} GB/s; shape "
          f"[{ARGS.batch}, {ARGS.tokens}, {ARGS.channels}] x 6 tensors, beta {ARGS.beta}", flush=True)
    if not CUDA:
        print("CPU smoke test: Triton runs in the interpreter, times mean nothing")
    checks = Table(out / "correctness.csv", "correctness")
    speeds = Table(out / "speed.csv", "speed")
    sweeps = Table(out / "sweep.csv", "sweep")
    # most important first: every step stops starting new work after --max-seconds
    correctness(checks, CORE_CASES)
    race_check(checks, repeats=200 if CUDA else 4)
    speed(speeds, spec_bw, copy_bw, [(d, "token", i) for d in ("bf16", "fp32")
                                     for i in ("fused", "eager")])
    speed(speeds, spec_bw, copy_bw, [(d, "token", "fused-2launch") for d in ("bf16", "fp32")]
          + [(d, "none", i) for d in ("bf16", "fp32") for i in ("fused", "eager")])
    speed(speeds, spec_bw, copy_bw, [(d, "token", "compile") for d in ("bf16", "fp32")])
    if not ARGS.no_sweep:
        sweep(sweeps, spec_bw)
    correctness(checks, EXTRA_CASES)
    for table in (checks, speeds, sweeps):
        table.show()
    for row in speeds:
        if row.get("impl") == "fused" and row.get("mask") == "token" and "us" in row:
            bw_ok = CUDA and float(row["pct_spec"]) >= 70
            mem_ok = CUDA and float(row["peak_extra_MiB"]) < 1.0
            print(f"target {row['dtype']} {row['passes']}: {row['pct_spec']}% of spec bandwidth "
                  f"(>= 70%: {'MET' if bw_ok else 'NOT MET'}), peak extra "
                  f"{row['peak_extra_MiB']} MiB (< 1 MiB: {'MET' if mem_ok else 'NOT MET'})")
    failed = [r for r in checks if r["result"] != "PASS"]
    print(f"\n{len(checks) - len(failed)}/{len(checks)} correctness checks passed; "
          f"{time.monotonic() - START:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
