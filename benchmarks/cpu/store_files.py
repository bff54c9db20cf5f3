"""Files and directories a run store creates, and the most entries in one directory, vs the number of samples.

    python benchmarks/cpu/store_files.py --out out/store-files [--n 512 8192] [--shards 8] [--k 16] [--rewards 9]

For each N it creates a real store with `RunStore.create` (layout 2, latents on, `--rewards` reward
arrays) and writes every block of every array the sharded stages write (prepare, sample, score), as
they write them: one assignment per block. File counts do not depend on the image size, so the images
are 8x8 here. The same N is also written in layout 1 (emulated: one chunk per sample for images, masks
and latents, one per shard for the rest, zarr's default nested chunk keys), the layout before blocks.
A fit files = a * N/B + c over the measured points extrapolates to N = 1M (block size of a 1M run:
`block_size(1_000_000, 256)`). Prints a table, writes store_files.csv.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from fyp.store import RunStore, Shape, block_size


def count(folder: Path) -> tuple[int, int, int]:
    """(files, directories, most entries in one directory) under folder."""
    files = dirs = widest = 0
    for _, dirnames, filenames in os.walk(folder):
        files += len(filenames)
        dirs += len(dirnames)
        widest = max(widest, len(filenames) + len(dirnames))
    return files, dirs, widest


def fill_v2(store: RunStore) -> None:
    """Write every block of every sharded-stage array once (zeros: write_empty_chunks keeps a file each)."""
    arrays = [store.samples[a] for a in ("image", "mask", "prompt", "id", "valid", "reason", "done")]
    arrays += [store.candidates[a] for a in ("image", "seed", "done", "latent")]
    for reward in store.rewards:
        arrays += [store.scores(reward).value, store.scores(reward).done]
    for shard in range(store.shape.shards):
        for block in store.blocks(store.shard_slice(shard)):
            for array in arrays:
                size = block.stop - block.start
                fill = "" if array.dtype.kind in "OTU" else 1
                array[block] = np.full((size, *array.shape[1:]), fill, dtype=object if fill == "" else array.dtype)


def fill_v1(path: Path, n: int, k: int, res: int, shards: int, rewards: int, latent: tuple) -> None:
    """Layout 1 as it was: per-sample chunks for images/masks/latents, per-shard chunks for the rest."""
    s = math.ceil(n / shards)
    g = zarr.open_group(path, mode="w-", zarr_format=3)
    specs = [("samples/image", (n, res, res, 3), (1, res, res, 3)), ("samples/mask", (n, res, res), (1, res, res)),
             ("candidates/image", (n, k, res, res, 3), (1, k, res, res, 3)),
             ("candidates/latent", (n, k, *latent), (1, k, *latent))]
    specs += [(f"samples/{a}", (n,), (s,)) for a in ("prompt", "id", "valid", "reason", "done")]
    specs += [("candidates/seed", (n, k), (s, k)), ("candidates/done", (n,), (s,))]
    for r in range(rewards):
        specs += [(f"scores/r{r}/value", (n, k), (s, k)), (f"scores/r{r}/done", (n,), (s,))]
    for name, shape, chunks in specs:
        a = g.create_array(name, shape=shape, chunks=chunks, dtype="uint8", fill_value=0)
        a[...] = np.ones(shape, np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/store-files"))
    parser.add_argument("--n", type=int, nargs="+", default=[512, 8192])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rewards", type=int, default=9)
    parser.add_argument("--skip-v1", action="store_true", help="measure layout 2 only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    res, latent = 8, (4, 2, 2)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="store-files-"))
    try:
        for n in args.n:
            for layout in ("1", "2") if not args.skip_v1 else ("2",):
                folder = work / f"v{layout}-{n}"
                start = time.time()
                if layout == "2":
                    store = RunStore.create(folder, Shape(n, args.k, res, res, args.shards),
                                            [f"r{r}" for r in range(args.rewards)], latent_shape=latent)
                    fill_v2(store)
                    block, path = store.shape.block, store.path
                else:
                    path = folder / "store.zarr"
                    fill_v1(path, n, args.k, res, args.shards, args.rewards, latent)
                    block = 1
                files, dirs, widest = count(path)
                rows.append(dict(layout=layout, n=n, shards=args.shards, block=block, files=files, dirs=dirs,
                                 inodes=files + dirs, inodes_per_sample=round((files + dirs) / n, 3),
                                 widest_dir=widest, seconds=round(time.time() - start, 1), kind="measured"))
                shutil.rmtree(folder)
                print(rows[-1], file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Extrapolate: inodes = a * blocks + c per layout (blocks = N / B; layout 1: B = 1 for the per-sample
    # arrays, and per-shard chunks, which do not grow with N, fall into c).
    big = 1_000_000
    for layout in sorted({r["layout"] for r in rows}):
        pts = [r for r in rows if r["layout"] == layout]
        if len(pts) < 2:
            continue
        (b0, i0, w0), (b1, i1, w1) = [(math.ceil(r["n"] / r["block"]), r["inodes"], r["widest_dir"]) for r in pts[:2]]
        a = (i1 - i0) / (b1 - b0)
        c = i0 - a * b0
        block = block_size(big, 256) if layout == "2" else 1
        blocks = math.ceil(big / block)
        rows.append(dict(layout=layout, n=big, shards=256, block=block, files="", dirs="",
                         inodes=int(a * blocks + c), inodes_per_sample=round((a * blocks + c) / big, 3),
                         widest_dir=blocks + (w1 - b1), seconds="", kind="extrapolated"))
    fields = list(rows[0])
    with (args.out / "store_files.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{'layout':>6} {'N':>9} {'block':>5} {'files':>8} {'dirs':>7} {'inodes':>9} {'per sample':>10} "
          f"{'widest dir':>10}  kind")
    for r in rows:
        print(f"{r['layout']:>6} {r['n']:>9} {r['block']:>5} {r['files']!s:>8} {r['dirs']!s:>7} {r['inodes']:>9} "
              f"{r['inodes_per_sample']:>10} {r['widest_dir']:>10}  {r['kind']}")
    print(f"wrote {args.out / 'store_files.csv'}")


if __name__ == "__main__":
    main()
