"""Timing of the rank-ensemble kernels: shared by `pytest kernels --benchmark` and benchmarks/gpu/rank_ensemble.py.

Imports only torch (and triton through the kernels), so it runs on the bare GPU machine. Traffic per
call = the scores read once (N M K 4 bytes) + the outputs (values N K 4, winner/loser/used 3 N 4,
status N bytes); GB/s is that over the median time, and %peak compares it with the card's nominal HBM
bandwidth and with a measured device-to-device copy.
"""
from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

import torch

from kernels.rank_ensemble_ops import ensemble
from kernels.rank_ensemble_reference import _ensemble_chunk, check_inputs, rank_ensemble_reference

# Nominal memory bandwidth (bytes/s) by device-name fragment, most specific first.
NOMINAL_BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100-SXM4-80GB", 2.04e12),
                     ("A100 80GB PCIe", 1.94e12), ("A100", 1.555e12), ("L40S", 0.864e12), ("A10", 0.6e12))
GPU_REFERENCE_CHUNK = 1 << 16  # larger chunks than on the CPU: fewer launches, still < 1 GB temporaries


def traffic_bytes(n: int, m: int, k: int) -> int:
    return n * m * k * 4 + n * k * 4 + n * (3 * 4 + 1)


def make_scores(n: int, m: int, k: int, device: str, seed: int = 0) -> torch.Tensor:
    """Continuous scores with some ties (rounded) and 0.1% NaNs, like real reward outputs."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    s = torch.round(torch.randn(n, m, k, generator=g) * 256) / 256
    s[torch.rand(n, m, k, generator=g) < 1e-3] = float("nan")
    return s.to(device)


def nominal_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, value in NOMINAL_BANDWIDTH:
        if fragment in name:
            return value
    return None


def measured_copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float | None:
    """Bytes/s of a device-to-device copy (read + write counted), the practical ceiling."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = time_call(lambda: dst.copy_(src), device, reps=10)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / seconds


def time_call(fn, device: torch.device, reps: int = 5, warmup: int = 1, max_seconds: float | None = None) -> float:
    """Median seconds of fn() (CUDA: events around each call)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    start_all = time.perf_counter()
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start_all > max_seconds:
            break
    return statistics.median(times)


def compiled_reference(mode: str, device: torch.device):
    """torch.compile of the reference's per-chunk function, driven over chunks like the reference."""
    chunk_fn = torch.compile(_ensemble_chunk)  # static first, one dynamic recompile for the last chunk

    def run(scores: torch.Tensor, weights=None):
        w = check_inputs(scores, weights, mode)
        parts = []
        for start in range(0, scores.shape[0], GPU_REFERENCE_CHUNK):
            part = scores[start:start + GPU_REFERENCE_CHUNK]
            index = torch.arange(start, start + part.shape[0], device=scores.device)
            parts.append(chunk_fn(part, w, mode, 0, index))
        return tuple(torch.cat(p) for p in zip(*parts))

    return run


def backend_fn(backend: str, mode: str, device: torch.device):
    if backend == "reference":
        chunk = GPU_REFERENCE_CHUNK if device.type == "cuda" else 4096
        return lambda s: rank_ensemble_reference(s, None, mode, chunk=chunk)
    if backend == "compiled":
        return compiled_reference(mode, device)
    return lambda s: ensemble(s, mode, backend=backend)


def measure(backend: str, mode: str, n: int, m: int, k: int, device: torch.device, reps: int,
            scores: torch.Tensor | None = None, max_seconds: float | None = None) -> dict:
    s = make_scores(n, m, k, str(device)) if scores is None else scores
    fn = backend_fn(backend, mode, device)
    seconds = time_call(lambda: fn(s), device, reps=reps, warmup=1, max_seconds=max_seconds)
    nbytes = traffic_bytes(n, m, k)
    return dict(device=describe(device), backend=backend, mode=mode, N=n, M=m, K=k, seconds=seconds,
                samples_per_s=n / seconds, scores_per_s=n * m * k / seconds, GB_per_s=nbytes / seconds / 1e9)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


def add_ratios(rows: list[dict], peak: float | None = None, copy: float | None = None) -> list[dict]:
    """speedup vs the reference of the same (mode, N), and % of nominal / copy bandwidth."""
    ref = {(r["mode"], r["N"]): r["seconds"] for r in rows if r["backend"] == "reference"}
    for r in rows:
        base = ref.get((r["mode"], r["N"]))
        r["speedup_vs_reference"] = base / r["seconds"] if base else None
        r["pct_nominal_bw"] = 100 * r["GB_per_s"] * 1e9 / peak if peak else None
        r["pct_copy_bw"] = 100 * r["GB_per_s"] * 1e9 / copy if copy else None
    return rows


COLUMNS = ("device", "backend", "mode", "N", "M", "K", "seconds", "samples_per_s", "scores_per_s", "GB_per_s",
           "speedup_vs_reference", "pct_nominal_bw", "pct_copy_bw")


def format_table(rows: list[dict]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    table = [list(COLUMNS)] + [[cell(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table)


def write_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
