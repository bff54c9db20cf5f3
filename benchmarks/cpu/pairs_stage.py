"""Time the pairs stage at scale: reading the scores, the C++ ensemble, the agreement report, the writes.

    python benchmarks/cpu/pairs_stage.py --n 100000 1000000 --out DIR [--full-agreement-max 100000]

For each N it builds a real run store (M = 9 rewards of the tiny preset, K = 16 candidates, scores with
ties and 0.1% NaNs, 16 shards), runs the stage's task in this process (backend cpp) and reads its own
phase timings; separately it times the C++ kernel alone on the scores in memory. Target (issue 12): the
whole stage within 2x of (kernel + reading the scores). With --full-agreement-max, the old full Kendall
matrix over every valid sample is timed too for N up to that value. Prints a table, writes pairs_stage.csv.
1e6 x 9 x 16 float32 is 576 MB in memory (about 1.5 GB peak with the kernel's outputs and the store I/O).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fyp.config import load_preset  # noqa: E402
from fyp.ensemble import AGREEMENT_SAMPLES, kendall_tau_matrix, pairs_from_plan  # noqa: E402
from fyp.pairs.stage import PairsStage, read_scores  # noqa: E402
from fyp.run import Run  # noqa: E402
from fyp.store import RunStore, Shape  # noqa: E402
from kernels.benchmarks.rank_ensemble_bench import make_scores  # noqa: E402

K, SHARDS = 16, 16
COLUMNS = ("machine", "N", "M", "K", "read_s", "ensemble_s", "write_arrays_s", "agreement_s", "report_s",
           "stage_s", "kernel_only_s", "target_s", "stage_over_kernel_plus_read", "agreement_pct",
           "agreement_samples", "full_agreement_s")


def build_run(root: Path, n: int) -> Run:
    cfg = load_preset("tiny", {"shards": SHARDS, "sampling": {"candidates": K}})
    run = Run.create(root / f"run-{n}", cfg)
    store = RunStore.create(run.dir, Shape(n, K, 16, 16, SHARDS), cfg.reward_names)
    store.samples.valid[:] = np.ones(n, bool)
    store.samples.done[:] = True
    store.candidates.done[:] = True
    for j, reward in enumerate(cfg.reward_names):  # one reward at a time: 64 MB each at N = 1e6
        store.scores(reward).value[:] = make_scores(n, 1, K, "cpu", seed=j)[:, 0].numpy()
        store.scores(reward).done[:] = True
    return run


def measure(root: Path, n: int, machine: str, full_max: int) -> dict:
    t0 = time.perf_counter()
    run = build_run(root, n)
    print(f"N={n}: store built in {time.perf_counter() - t0:.1f}s", flush=True)
    stage = PairsStage()
    opts = {o.dest: None for o in stage.options}
    opts["backend"] = "cpp"
    start = time.perf_counter()
    stage.run_shard(run, 0, None, opts)
    total = time.perf_counter() - start
    laps = stage.last_timings
    store = run.store(mode="r")
    rewards = list(store.rewards)
    scores = read_scores(store, rewards, n, K)
    pairs_from_plan(scores[:64], rewards, "ensemble", rewards, [1.0] * len(rewards), "average", backend="cpp")
    start = time.perf_counter()
    pairs_from_plan(scores, rewards, "ensemble", rewards, [1.0] * len(rewards), "average", backend="cpp")
    kernel = time.perf_counter() - start
    full = None
    if n <= full_max:
        start = time.perf_counter()
        kendall_tau_matrix(scores)
        full = time.perf_counter() - start
    del scores
    target = 2 * (kernel + laps["read"])
    row = dict(machine=machine, N=n, M=len(rewards), K=K, read_s=laps["read"], ensemble_s=laps["ensemble"],
               write_arrays_s=laps["write arrays"], agreement_s=laps["agreement"], report_s=laps["report"],
               stage_s=total, kernel_only_s=kernel, target_s=target,
               stage_over_kernel_plus_read=total / (kernel + laps["read"]),
               agreement_pct=100 * laps["agreement"] / total,
               agreement_samples=min(n, AGREEMENT_SAMPLES),
               full_agreement_s=full)
    shutil.rmtree(run.dir)
    return row


def table(rows: list[dict]) -> str:
    def cell(v):
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    grid = [list(COLUMNS[1:])] + [[cell(r[c]) for c in COLUMNS[1:]] for r in rows]
    widths = [max(len(g[i]) for g in grid) for i in range(len(grid[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(g, widths)) for g in grid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/pairs_stage"))
    parser.add_argument("--machine", default=f"{os.cpu_count()}-core CPU dev box, shared")
    parser.add_argument("--full-agreement-max", type=int, default=100_000,
                        help="also time the full Kendall matrix (every valid sample) up to this N")
    parser.add_argument("--tmp", type=Path, default=None, help="where the run stores go (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in args.n:
            rows.append(measure(Path(tmp), n, args.machine, args.full_agreement_max))
            print(table(rows[-1:]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "pairs_stage.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\npairs stage, {args.machine} (load average {os.getloadavg()[0]:.1f}):\n{table(rows)}\n(csv: {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
