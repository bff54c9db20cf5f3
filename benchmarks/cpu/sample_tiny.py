"""Candidates per second of the tiny preset's sample stage on this machine (not a timed test).

    python benchmarks/cpu/sample_tiny.py [--samples 8] [--candidates 4] [--batch-size 4] [--out DIR]

Prepares a tiny run in a temporary folder, then times: building the pipeline, and the sample stage of
one shard (generation, store writes included; the first repeat includes warm-up). Prints a table and
writes sample_tiny.csv to --out, with the 1-minute load average (the dev box is shared).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

from fyp.data.stage import create_run
from fyp.run import Run
from fyp.sampling import stage as sample_stage
from fyp.stages import execute_shard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="sample the run this many times (fresh store each)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="FYP_SAMPLE_CPU_THREADS for generation")
    parser.add_argument("--out", type=Path, default=None, help="folder for sample_tiny.csv")
    args = parser.parse_args()

    os.environ["FYP_SAMPLE_CPU_THREADS"] = str(args.cpu_threads)
    overrides = {"sampling": {"candidates": args.candidates, "batch_size": args.batch_size},
                 "data": {"resolution": args.resolution}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            run_dir = Path(tmp) / f"run{repeat}"
            create_run(run_dir, "tiny", overrides=overrides, samples=args.samples, shards=1)
            execute_shard("prepare", run_dir, 0)
            start = time.perf_counter()
            sample_stage._pipeline(Run.open(run_dir))  # built once per process, then cached
            build = time.perf_counter() - start
            start = time.perf_counter()
            counts = execute_shard("sample", run_dir, 0)
            seconds = time.perf_counter() - start
            rows.append(dict(repeat=repeat, samples=args.samples, candidates=counts["candidates"],
                             batch_size=args.batch_size, resolution=args.resolution,
                             build_s=round(build, 3), sample_s=round(seconds, 3),
                             candidates_per_s=round(counts["candidates"] / seconds, 3),
                             cpu_threads=args.cpu_threads, cpus=os.cpu_count(),
                             load_avg_1min=round(os.getloadavg()[0], 2),
                             machine=platform.processor() or platform.machine()))
    print(f"{'repeat':>6} {'samples':>7} {'cands':>5} {'batch':>5} {'build s':>8} {'sample s':>9} {'cand/s':>8}")
    for r in rows:
        print(f"{r['repeat']:>6} {r['samples']:>7} {r['candidates']:>5} {r['batch_size']:>5} {r['build_s']:>8.2f} "
              f"{r['sample_s']:>9.2f} {r['candidates_per_s']:>8.2f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "sample_tiny.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out / 'sample_tiny.csv'}")


if __name__ == "__main__":
    main()
