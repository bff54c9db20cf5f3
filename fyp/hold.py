"""Test hook shared by every stage: park a task at a named write point so a test can SIGKILL it there.

    FYP_HOLD="<point>[:<count>[:<shard>]]"

makes the task (of that shard only, if given) stop the <count>-th time (default 1) it reaches <point>,
create "<run>/.hold" and sleep until killed. Points are named "<stage>.<what was just written>", e.g.
`pairs.arrays` (the pair arrays are written, the report is not). The kill-and-resume tests use it to
kill a real process between two specific writes; with the variable unset, `reached` is one dict lookup.
The sample stage keeps its own variable and file (FYP_SAMPLE_HOLD, .sample-hold) on the same class.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_ENV = "FYP_HOLD"
HOLD_FILE = ".hold"


class HoldPoints:
    """The write points of one task; `reached(point)` after each write."""

    def __init__(self, run_dir: Path | str, shard: int = 0, env: str = HOLD_ENV, file: str = HOLD_FILE):
        point, _, rest = os.environ.get(env, "").partition(":")
        count, _, only = rest.partition(":")
        if only and int(only) != shard:
            point = ""
        self.point, self.left, self.file = point, int(count or 1), Path(run_dir) / file

    def reached(self, point: str) -> None:
        if not self.point or point != self.point:
            return
        self.left -= 1
        if self.left == 0:
            self.file.touch()
            while True:  # until the test's SIGKILL
                time.sleep(1)


def hold_point(run_dir: Path | str, point: str, shard: int = 0) -> None:
    """One-shot form for points a task passes once: hold here if FYP_HOLD names `point` (count 1)."""
    if os.environ.get(HOLD_ENV):
        HoldPoints(run_dir, shard).reached(point)
