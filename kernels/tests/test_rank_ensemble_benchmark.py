"""`pytest kernels --benchmark`: speed of the rank-ensemble kernels (skipped without --benchmark).

CPU: the vectorised PyTorch reference vs the C++/OpenMP kernel for N = 1e4, 1e5, 1e6 (M = 9, K = 16).
GPU (when CUDA is present): the reference, torch.compile(reference) and the Triton kernel, with GB/s
against the card's bandwidth. A table is printed at the end of the module and written as CSV to
$RANK_ENSEMBLE_BENCH_OUT (default .benchmarks/rank_ensemble/, git-ignored).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kernels.benchmarks.rank_ensemble_bench import (add_ratios, format_table, make_scores, measure,
                                                    measured_copy_bandwidth, nominal_bandwidth, write_csv)

M, K = 9, 16
NS = (10_000, 100_000, 1_000_000)
MODES = ("average", "capo")
ROWS: dict[str, list[dict]] = {"cpu": [], "cuda": []}
_SCORES: dict = {}


def scores_for(n: int, device: str) -> torch.Tensor:
    key = (n, device)
    if key not in _SCORES:
        _SCORES.clear()  # keep one input alive at a time (1e6 x 9 x 16 floats = 576 MB)
        _SCORES[key] = make_scores(n, M, K, device)
    return _SCORES[key]


def reps_for(backend: str, n: int) -> int:
    return 1 if backend == "reference" and n >= 1_000_000 else 3


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    out = Path(os.environ.get("RANK_ENSEMBLE_BENCH_OUT") or Path(__file__).parents[2] / ".benchmarks" / "rank_ensemble")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    for device, rows in ROWS.items():
        if not rows:
            continue
        dev = torch.device(device)
        add_ratios(rows, nominal_bandwidth(dev), measured_copy_bandwidth(dev))
        path = write_csv(rows, out / f"rank_ensemble_{device}.csv")
        with capture.global_and_fixture_disabled():
            print(f"\nrank ensemble, {device}:\n{format_table(rows)}\n(csv: {path})")


@pytest.mark.benchmark
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_cpu_benchmark(benchmark, backend, mode, n):
    from kernels.rank_ensemble_ops import ensemble

    s = scores_for(n, "cpu")
    run = lambda: ensemble(s, mode, backend=backend)  # noqa: E731
    ensemble(s[:8], mode, backend=backend)  # build/load outside the timing
    benchmark.pedantic(run, rounds=reps_for(backend, n), iterations=1)
    seconds = benchmark.stats.stats.median
    row = dict(device=f"cpu x{torch.get_num_threads()} threads", backend=backend, mode=mode, N=n, M=M, K=K,
               seconds=seconds, samples_per_s=n / seconds, scores_per_s=n * M * K / seconds,
               GB_per_s=(n * M * K * 4 + n * K * 4 + n * 13) / seconds / 1e9)
    ROWS["cpu"].append(row)


@pytest.mark.benchmark
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["reference", "compiled", "triton"])
def test_gpu_benchmark(benchmark, backend, mode, n):
    s = scores_for(n, "cuda")
    row = measure(backend, mode, n, M, K, torch.device("cuda"), reps=10, scores=s)
    benchmark.extra_info.update(row)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # timing is CUDA-event based, in `measure`
    ROWS["cuda"].append(row)
