"""Write cost per group of samples of the score stage vs the shard size: layout 1 vs layout 2.

    python benchmarks/cpu/score_writes.py --out out/score-writes [--sizes 3906 15625 62500] [--k 16] [--group 4]

The score stage scores a shard in groups of `--group` samples (batch_size / K). Layout 1 wrote the
shard's whole slice of scores/<reward>/value and done after every group (chunks of one shard: each
write re-encodes the shard's chunk, so the cost per group grows with the shard). Layout 2 writes each
block once, when it is complete, through fyp.store.BlockWriter (the class the score stage uses). Both
write real Zarr arrays on local disk; the scoring itself is left out. Prints a table, writes
score_writes.csv.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from fyp.store import BlockWriter, RunStore, Shape


def layout1(folder: Path, size: int, k: int, group: int) -> tuple[float, int]:
    g = zarr.open_group(folder / "v1.zarr", mode="w-", zarr_format=3)
    value = g.create_array("value", shape=(size, k), chunks=(size, k), dtype="float32", fill_value=float("nan"))
    done_arr = g.create_array("done", shape=(size,), chunks=(size,), dtype="bool", fill_value=False)
    values, done = np.full((size, k), np.nan, np.float32), np.zeros(size, bool)
    rng = np.random.default_rng(0)
    start, writes = time.perf_counter(), 0
    for first in range(0, size, group):
        rows = slice(first, min(size, first + group))
        values[rows] = rng.random((rows.stop - rows.start, k), dtype=np.float32)
        done[rows] = True
        value[0:size] = values  # what score_shard did: the shard's slice, after every group
        done_arr[0:size] = done
        writes += 1
    return time.perf_counter() - start, writes


def layout2(folder: Path, size: int, k: int, group: int) -> tuple[float, int, int]:
    store = RunStore.create(folder / "v2", Shape(size, k, 2, 2, 1), ["r"])
    scores = store.scores("r")
    span = store.shard_slice(0)
    values, done = np.full((size, k), np.nan, np.float32), np.zeros(size, bool)
    writer = BlockWriter(store, span, [scores.value, scores.done], [values, done], np.ones(size, bool))
    rng = np.random.default_rng(0)
    start, groups = time.perf_counter(), 0
    for first in range(0, size, group):
        local = np.arange(first, min(size, first + group))
        values[local] = rng.random((local.size, k), dtype=np.float32)
        done[local] = True
        writer.finish(local)
        groups += 1
    seconds = time.perf_counter() - start
    assert not writer.left and np.array_equal(scores.done[:], done)  # every block written, once
    return seconds, groups, store.shape.block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/score-writes"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[3906, 15625, 62500])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="score-writes-"))
        try:
            s1, groups = layout1(work, size, args.k, args.group)
            s2, _, block = layout2(work, size, args.k, args.group)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(dict(shard_size=size, groups=groups, block=block, layout1_ms_per_group=round(1e3 * s1 / groups, 3),
                         layout2_ms_per_group=round(1e3 * s2 / groups, 3), layout1_s=round(s1, 2), layout2_s=round(s2, 2)))
    with (args.out / "score_writes.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{'shard size':>10} {'groups':>7} {'block':>5} {'layout 1 ms/group':>17} {'layout 2 ms/group':>17}")
    for r in rows:
        print(f"{r['shard_size']:>10} {r['groups']:>7} {r['block']:>5} {r['layout1_ms_per_group']:>17} "
              f"{r['layout2_ms_per_group']:>17}")
    print(f"wrote {args.out / 'score_writes.csv'}")


if __name__ == "__main__":
    main()
