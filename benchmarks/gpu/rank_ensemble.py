#!/usr/bin/env python
"""Rank-ensemble kernels on a GPU: Triton vs the PyTorch reference vs torch.compile(reference).

    python benchmarks/gpu/rank_ensemble.py --out DIR [--max-seconds 240] [--ns 10000,100000,1000000]
    python benchmarks/gpu/rank_ensemble.py --tiny --out /tmp/x      # CPU smoke test (Triton interpreted)

Imports only torch, triton and this repository's `kernels` package. Steps, each skipped once the time cap
is near: (1) correctness of Triton against the reference on inputs with ties and NaNs (indices exact,
values to 1e-6) for every mode and variant (rows / loop / tile); (2) the copy bandwidth of the device;
(3) a sweep at the largest N (average ties, then CaPO for rows): rows over num_warps x register cap,
loop and tile over BLOCK_N x num_warps; (4) the timing table for each N and mode with the default
launch (rows: one sample per thread, 4 warps, 96 registers).
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
    """Triton (every variant) vs reference on tie-heavy inputs with NaNs, infs, unusable samples, zero weights,
    and on continuous scores (CaPO's shifted and direct paths)."""
    from kernels.rank_ensemble_triton import rank_ensemble_triton

    lines = []
    g = torch.Generator().manual_seed(1)
    # every distinct (variant, mode, K) compiles once on the GPU (seconds each): rows gets every mode and
    # shape, the older loop variant K = 16 only, tile none (the CPU tests cover both in the interpreter)
    for m, k, scale in ((9, 16, 0), (5, 7, 0), (32, 32, 0), (9, 16, 1.0), (9, 16, 40.0)):
        if scale:  # continuous; 40 puts some rows past CaPO's shifted range (spread > 80)
            s = torch.randn(n, m, k, generator=g) * scale
        else:
            s = torch.randint(0, 4, (n, m, k), generator=g).float()
        s[torch.rand(n, m, k, generator=g) < 0.03] = float("nan")
        s[0] = float("nan")
        s[1] = 2.0
        s[2, 0, 0] = float("inf")
        s = s.to(device)
        w = torch.rand(m, generator=g).to(device)
        w[0] = 0.0
        for mode in MODES if k <= 16 else ("average",):  # K = 32 compiles ~10 s per mode: one is enough
            for weights in (None, w):
                b = ensemble(s, mode, weights, backend="reference", seed=3, sample_offset=17)
                for variant in ("rows", "loop"):
                    if variant == "loop" and (k != 16 or mode not in ("average", "capo")):
                        continue
                    a = rank_ensemble_triton(s, torch.ones(m, device=device) if weights is None else weights,
                                             MODE_IDS[mode], seed_term(3), 17, CAPO_TIE_TOL, variant=variant)
                    same = all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
                    err = (a[0] - b.values).abs().nan_to_num(0.0).max().item()
                    nan_ok = torch.equal(a[0].isnan(), b.values.isnan())
                    ok = same and err <= 1e-6 and nan_ok
                    lines.append(f"{'PASS' if ok else 'FAIL'} {variant} M={m} K={k} scale={scale or 'ties'} mode={mode} "
                                 f"weights={'yes' if weights is not None else 'no'} indices_equal={same} "
                                 f"max_abs_err={err:.2e}")
    return lines


def sweep(device: torch.device, n: int, m: int, k: int, deadline: float, reps: int = 10) -> list[dict]:
    from kernels.rank_ensemble_triton import rank_ensemble_triton

    s = make_scores(n, m, k, str(device))
    w = torch.ones(m, device=device)
    rows = []
    # rows first (the default), then CaPO for it, then the older variants
    configs = [("rows", "average", 32 * wp, wp, reg, pf) for wp in (4, 2) for reg in (96, 80, 128, 0)
               for pf in (False, True)]
    configs += [("rows", "capo", 128, 4, reg, pf) for reg in (96, 128) for pf in (False, True)]
    configs += [("rows", "average", 32 * wp, wp, 96, False) for wp in (8, 1)]
    configs += [("loop", "average", b, wp, 0, False) for b in (16, 32) for wp in (2, 4)]
    configs += [("tile", "average", b, wp, 0, False) for b in (8, 16) for wp in (2, 4)]
    for variant, mode, block_n, warps, maxnreg, prefetch in configs:
        if time.time() > deadline:
            break
        fn = lambda: rank_ensemble_triton(s, w, MODE_IDS[mode], seed_term(0), 0, CAPO_TIE_TOL,  # noqa: E731
                                          block_n=block_n, num_warps=warps, variant=variant, maxnreg=maxnreg,
                                          prefetch=prefetch)
        row = dict(variant=variant, mode=mode, block_n=block_n, num_warps=warps, maxnreg=maxnreg or "",
                   prefetch=int(prefetch))
        try:
            seconds = time_call(fn, device, reps=reps)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is reported, not fatal
            rows.append(dict(row, seconds=None, GB_per_s=None,
                             error=str(exc).replace(",", ";").splitlines()[0][:80] if str(exc) else type(exc).__name__))
            continue
        rows.append(dict(row, seconds=seconds, GB_per_s=traffic_bytes(n, m, k) / seconds / 1e9, error=""))
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

    if not args.no_sweep and time.time() < deadline:
        n_sweep = 64 if args.tiny else max(ns)
        rows = sweep(device, n_sweep, args.m, args.k, deadline, reps=2 if args.tiny else 10)
        path = args.out / "rank_ensemble_sweep.csv"
        fields = ("variant", "mode", "block_n", "num_warps", "maxnreg", "prefetch", "seconds", "GB_per_s", "error")
        path.write_text(",".join(fields) + "\n" + "".join(",".join(str(r[f]) for f in fields) + "\n" for r in rows))
        for r in rows:
            print(f"  {r['variant']:5} {r['mode']:8} BLOCK_N={r['block_n']:<4} warps={r['num_warps']} "
                  f"maxnreg={r['maxnreg'] or '-':<4} prefetch={r['prefetch']} " + (f"{r['seconds'] * 1e3:.3f} ms {r['GB_per_s']:.0f} GB/s"
                                                          if r["seconds"] else f"error {r['error']}"), flush=True)
        for mode in ("average", "capo"):
            ok = [r for r in rows if r["seconds"] and r["mode"] == mode]
            if ok:
                best = min(ok, key=lambda r: r["seconds"])
                print(f"sweep ({mode}, N={n_sweep}): best {best['variant']} BLOCK_N={best['block_n']} "
                      f"num_warps={best['num_warps']} maxnreg={best['maxnreg'] or '-'} prefetch={best['prefetch']} "
                      f"{best['GB_per_s']:.0f} GB/s; "
                      f"all in {path}", flush=True)

    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
