"""Entry point of a score task in a reward's own Python environment:

    <python> -m fyp.rewards.stage_worker --run DIR --shard N --reward NAME

It scores the shard in-process (fyp.rewards.stage.score_shard) and prints its counts as the last stdout line,
prefixed by COUNTS_MARKER, for the parent task to record. Logs go to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..run import Run
from .stage import COUNTS_MARKER, score_shard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fyp.rewards.stage_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run directory")
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--reward", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    run = Run.open(args.run)
    counts = score_shard(run, args.shard, run.config.reward(args.reward))
    print(COUNTS_MARKER + json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
