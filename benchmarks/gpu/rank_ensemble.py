#!/usr/bin/env python
"""Rank-ensemble kernels on a GPU: Triton vs the PyTorch reference vs torch.compile(reference).

    python benchmarks/gpu/rank_ensemble.py --out DIR [--max-seconds 240] [--ns 10000,100000,1000000]
    python benchmarks/gpu/rank_ensemble.py --tiny --out /tmp/x      # CPU smoke test (Triton interpreted)

Imports only torch, triton and this repository's `kernels` package. Steps, each skipped once the time cap
is near: (1) correctness of Triton against the reference on inputs with ties and NaNs (indices exact,
values to 1e-6) for every mode; (2) the copy bandwidth of the device; (3) a BLOCK_N x num_warps sweep
of both Triton variants (loop / tile) at the largest N (average ties); (4) the timing table for each N
and mode, with the default launch (loop variant, default BLOCK_N, 4 warps).
Writes DIR/rank_ensemble_gpu.csv, DIR/rank_ensemble_sweep.csv, DIR/rank_ensemble_check.txt and prints
every table. Target: Triton >= 50% of HBM bandwidth at N = 1e6 (M = 9, K = 16) on an H100.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `kernels`

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # --tiny on a CPU: run the Triton kernel in numpy

from kernels.benchmarks.rank_ensemble_bench import (add_ratios, format_table, make_scores, measure,  # noqa: E402
                                                    measured_copy_bandwidth, nominal_bandwidth, traffic_bytes,
                                                    write_csv, time_call)
from kernels.rank_ensemble_ops import CAPO_TIE_TOL, MODE_IDS, ensemble, seed_term  # noqa: E402
from kernels.rank_ensemble_reference import MODES  # noqa: E402


def check(device: torch.device, n: int) -> list[str]:
    """Triton (both variants) vs reference on tie-heavy inputs with NaNs, infs, unusable samples, zero weights."""
    from kernels.rank_ensemble_triton import rank_ensemble_triton

    lines = []
    g = torch.Generator().manual_seed(1)
    for m, k in ((9, 16), (5, 7), (3, 4)):
        s = torch.randint(0, 4, (n, m, k), generator=g).float()
        s[torch.rand(n, m, k, generator=g) < 0.03] = float("nan")
        s[0] = float("nan")
        s[1] = 2.0
        s[2, 0, 0] = float("inf")
        s = s.to(device)
        w = torch.rand(m, generator=g).to(device)
        w[0] = 0.0
        for mode in MODES:
            for weights in (None, w):
                b = ensemble(s, mode, weights, backend="reference", seed=3, sample_offset=17)
                for variant in ("loop", "tile"):
                    a = rank_ensemble_triton(s, torch.ones(m, device=device) if weights is None else weights,
                                             MODE_IDS[mode], seed_term(3), 17, CAPO_TIE_TOL, loop=variant == "loop")
                    same = all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
                    err = (a[0] - b.values).abs().nan_to_num(0.0).max().item()
                    nan_ok = torch.equal(a[0].isnan(), b.values.isnan())
                    ok = same and err <= 1e-6 and nan_ok
                    lines.append(f"{'PASS' if ok else 'FAIL'} {variant} M={m} K={k} mode={mode} "
                                 f"weights={'yes' if weights is not None else 'no'} indices_equal={same} "
                                 f"max_abs_err={err:.2e}")
    return lines


def sweep(device: torch.device, n: int, m: int, k: int, deadline: float, reps: int = 10) -> list[dict]:
    from kernels.rank_ensemble_triton import rank_ensemble_triton

    s = make_scores(n, m, k, str(device))
    w = torch.ones(m, device=device)
    rows = []
    configs = [("loop", b, wp) for b in (16, 32, 64, 128, 256) for wp in (2, 4, 8)]
    configs += [("tile", b, wp) for b in (8, 16, 32, 64) for wp in (2, 4, 8)]
    for variant, block_n, warps in configs:
        if time.time() > deadline:
            break
        fn = lambda: rank_ensemble_triton(s, w, MODE_IDS["average"], seed_term(0), 0, CAPO_TIE_TOL,  # noqa: E731
                                          block_n=block_n, num_warps=warps, loop=variant == "loop")
        try:
            seconds = time_call(fn, device, reps=reps)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is reported, not fatal
            rows.append(dict(variant=variant, block_n=block_n, num_warps=warps, seconds=None, GB_per_s=None,
                             error=str(exc).replace(",", ";").splitlines()[0][:80] if str(exc) else type(exc).__name__))
            continue
        rows.append(dict(variant=variant, block_n=block_n, num_warps=warps, seconds=seconds,
                         GB_per_s=traffic_bytes(n, m, k) / seconds / 1e9, error=""))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the CSV files")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="stop starting new measurements after this")
    parser.add_argument("--ns", default="10000,100000,1000000", help="comma-separated N")
    parser.add_argument("--modes", default="average,capo", help="comma-separated modes (min average dense caen capo)")
    parser.add_argument("--backends", default="reference,compiled,triton")
    parser.add_argument("--m", type=int, default=9)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny N, interpreted Triton")
    parser.add_argument("--no-sweep", action="store_true", help="skip the BLOCK_N x num_warps sweep")
    args = parser.parse_args(argv)
    start = time.time()
    deadline = start + args.max_seconds
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ns = [int(float(x)) for x in args.ns.split(",")]
    backends = args.backends.split(",")
    if args.tiny:
        ns = [64, 256]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}",
          flush=True)

    lines = check(device, 16 if args.tiny else 4096)
    (args.out / "rank_ensemble_check.txt").write_text("\n".join(lines) + "\n")
    failed = [x for x in lines if x.startswith("FAIL")]
    print(f"correctness: {len(lines) - len(failed)}/{len(lines)} PASS", *failed, sep="\n", flush=True)

    peak, copy = nominal_bandwidth(device), measured_copy_bandwidth(device)
    if device.type == "cuda":
        print(f"bandwidth: nominal {peak / 1e9 if peak else float('nan'):.0f} GB/s, "
              f"measured copy {copy / 1e9:.0f} GB/s", flush=True)

    if not args.no_sweep and time.time() < deadline:
        n_sweep = 64 if args.tiny else max(ns)
        rows = sweep(device, n_sweep, args.m, args.k, start + args.max_seconds * 0.4, reps=2 if args.tiny else 10)
        path = args.out / "rank_ensemble_sweep.csv"
        path.write_text("variant,block_n,num_warps,seconds,GB_per_s,error\n" + "".join(
            f"{r['variant']},{r['block_n']},{r['num_warps']},{r['seconds']},{r['GB_per_s']},{r['error']}\n"
            for r in rows))
        ok = [r for r in rows if r["seconds"]]
        if ok:
            best = min(ok, key=lambda r: r["seconds"])
            print(f"sweep (average, N={n_sweep}): best {best['variant']} BLOCK_N={best['block_n']} num_warps={best['num_warps']} "
                  f"{best['GB_per_s']:.0f} GB/s; all in {path}", flush=True)

    results = []
    for n in ns:
        scores = make_scores(n, args.m, args.k, str(device)) if time.time() < deadline else None
        for mode in args.modes.split(","):
            for backend in backends:
                if time.time() > deadline:
                    print(f"time cap reached: skipping {backend}/{mode}/N={n} and later", flush=True)
                    break
                reps = 3 if args.tiny or (backend != "triton" and n >= 1_000_000) else 10
                try:
                    results.append(measure(backend, mode, n, args.m, args.k, device, reps=reps, scores=scores,
                                           max_seconds=max(1.0, deadline - time.time())))
                except Exception as exc:  # noqa: BLE001 - OOM or a compile failure: report it, measure the rest
                    print(f"{backend}/{mode}/N={n}: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}",
                          flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    add_ratios(results, peak, copy)
    path = write_csv(results, args.out / f"rank_ensemble_{'gpu' if device.type == 'cuda' else 'cpu-tiny'}.csv")
    print(format_table(results), f"(csv: {path}; {time.time() - start:.0f} s)", sep="\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
