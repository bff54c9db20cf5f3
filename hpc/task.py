"""The process a Slurm job script runs: one shard of a stage, or a stage's finalisation.

    python -m hpc.task STAGE --run DIR --shard N [--variant V] [stage options]
    python -m hpc.task STAGE --run DIR --finalize [--variant V] [stage options]
    python -m hpc.task train --run DIR --shard 0 --srun [stage options]   one process per GPU (hpc.multitask)

It logs to stderr (the job script sends both streams to the task's per-attempt log), records the
task's outcome through `fyp.stages.execute_shard`, and requeues itself on the pre-timeout signal.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback

from fyp.run import Run, atomic_write_text
from fyp.stages import execute_shard, get_stage

from . import ledger, multitask, requeue
from .options import add_stage_options, stage_opts

log = logging.getLogger("hpc")


def finalize(stage_name: str, run_dir, variant: str | None, opts: dict) -> None:
    run = Run.open(run_dir)
    stage = get_stage(stage_name)
    start = time.time()
    stage.finalize(run, variant, opts)
    marker = ledger.finalized_marker(run_dir, stage_name, variant)
    # atomic: a kill mid-write must not leave a half marker that counts as finalised
    atomic_write_text(marker, json.dumps(dict(stage=stage_name, variant=variant, time=time.time(),
                                              seconds=time.time() - start)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print("usage: python -m hpc.task STAGE --run DIR (--shard N | --finalize) [--variant V] [options]", file=sys.stderr)
        return 2
    stage = get_stage(argv[0])
    parser = argparse.ArgumentParser(prog=f"python -m hpc.task {stage.name}")
    parser.add_argument("--run", required=True)
    parser.add_argument("--variant", default=None)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--shard", type=int)
    which.add_argument("--finalize", action="store_true")
    parser.add_argument("--srun", action="store_true",
                        help="run the task as one process per Slurm task (srun; train on several GPUs)")
    add_stage_options(parser, stage)
    args = parser.parse_args(argv[1:])
    opts = stage_opts(stage, args)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.finalize:
        finalize(stage.name, args.run, args.variant, opts)
        log.info("%s%s finalised", stage.name, "/" + args.variant if args.variant else "")
        return 0
    if args.srun:
        return multitask.run_task(stage.name, args.run, args.shard, args.variant, opts)
    requeue.install_handler(stage.name)
    try:
        execute_shard(stage.name, args.run, args.shard, args.variant, opts)
    except BaseException as exc:  # noqa: BLE001 - after the pre-timeout signal any ending means: requeue
        if not requeue.signalled():
            if isinstance(exc, Exception):
                traceback.print_exc()
                return 1
            raise
        log.warning("%s: %s", type(exc).__name__, exc)
        return requeue.requeue_task(Run.open(args.run), stage.name, args.shard, args.variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
