"""Check a dataset before a run: `python -m fyp.data --kind brushdata --path /data/brushdata --limit 200`.

Reads the first `--limit` items (0 = all) through the same reader the prepare stage uses and prints
how many are valid, the invalid ones counted by reason kind, and the first few reasons.
"""
from __future__ import annotations

import argparse
import collections
import sys

from ..config import DataConfig
from .base import ReaderError
from .registry import READERS, build_reader
from .sample import reason_kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fyp.data", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, choices=sorted(READERS))
    parser.add_argument("--path", default=None)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--split", default="train")
    parser.add_argument("--prompt-kind", default="mask-simple")
    parser.add_argument("--mask-kind", default="inpainting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=100, help="items to read (0 = all)")
    parser.add_argument("--show", type=int, default=5, help="invalid reasons to print")
    args = parser.parse_args(argv)
    cfg = DataConfig(kind=args.kind, path=args.path, resolution=args.resolution, split=args.split,
                     prompt_kind=args.prompt_kind, mask_kind=args.mask_kind)
    try:
        reader = build_reader(cfg, args.seed)
    except ReaderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    count = len(reader) if args.limit == 0 else min(args.limit, len(reader))
    kinds: collections.Counter = collections.Counter()
    shown = []
    for index in range(count):
        sample = reader[index]
        if not sample.valid:
            kinds[reason_kind(sample.reason)] += 1
            if len(shown) < args.show:
                shown.append(f"  {sample.id}: {sample.reason}")
    invalid = sum(kinds.values())
    print(f"{args.kind}: {len(reader)} items; read {count}: {count - invalid} valid, {invalid} invalid")
    for kind, n in sorted(kinds.items()):
        print(f"  {kind}: {n}")
    if shown:
        print("first invalid items:")
        print("\n".join(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
