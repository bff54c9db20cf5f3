"""What hpc submitted for a run, and where the logs are: `<run>/logs/hpc-submissions.jsonl`.

One JSON line per submission (a Slurm array chunk, a finalisation job, or a local task), appended by
the submitting process only. `status` reads it to map shards to Slurm job ids for its single sacct
call; `--retry-failed` and `--wait` read it too. Tasks never write it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

LEDGER = Path("logs") / "hpc-submissions.jsonl"


def path(run_dir: Path | str) -> Path:
    return Path(run_dir) / LEDGER


def append(run_dir: Path | str, **entry) -> dict:
    entry = dict(time=time.time(), **entry)
    target = path(run_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a") as handle:  # O_APPEND: one short line is written whole
        handle.write(json.dumps(entry, default=str) + "\n")  # stage options may hold paths
        handle.flush()
        os.fsync(handle.fileno())
    return entry


def read(run_dir: Path | str) -> list[dict]:
    target = path(run_dir)
    if not target.exists():
        return []
    out = []
    for line in target.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write: ignore it
    return out


def log_dir(run_dir: Path | str, stage: str, variant: str | None) -> Path:
    return Path(run_dir) / "logs" / stage / (variant or "")


def finalized_marker(run_dir: Path | str, stage: str, variant: str | None) -> Path:
    return log_dir(run_dir, stage, variant) / "finalized.json"
