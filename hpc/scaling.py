"""`python -m hpc.submit scaling plan|launch|plot`: the scaling sweeps of fyp.evaluation.scaling, launched.

fyp.evaluation.scaling plans the sweeps (pairs + train + eval per scale) and plots them; launching them is
scheduling, so it lives here: every step is one `hpc.submit` command, run in order (with `--wait` on a Slurm
cluster, so a step starts after the one it needs); a done step says "nothing to do", and the first step that
fails stops the launch with its exit code (launch again after fixing it: the done steps are skipped).
"""
from __future__ import annotations

import sys

from fyp.evaluation.scaling import main as sweeps


def launch(steps: list[list[str]], cluster: str = "local", dry_run: bool = False) -> int:
    """Run the steps in order through the `hpc.submit` CLI; stop at the first that fails, with its exit code."""
    from .submit import main as submit

    for number, step in enumerate(steps, 1):
        argv = step + ["--cluster", cluster] + (["--dry-run"] if dry_run else []) + \
            (["--wait"] if cluster != "local" and not dry_run else [])
        print(f"scaling step {number}/{len(steps)}: python -m hpc.submit " + " ".join(argv), flush=True)
        code = submit(argv)
        if code != 0:
            print(f"scaling: stopped at step {number}/{len(steps)} (python -m hpc.submit {' '.join(step)}), exit code "
                  f"{code}; fix it and launch again (done steps are skipped)", file=sys.stderr, flush=True)
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    return sweeps(argv, launch=launch, prog="python -m hpc.submit scaling")


if __name__ == "__main__":
    sys.exit(main())
