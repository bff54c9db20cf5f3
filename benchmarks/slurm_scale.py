"""Scale figures of the Slurm layer, on the local cluster (python -m hpc.local_slurm start).

    python benchmarks/slurm_scale.py [--out DIR] [--tasks 256] [--status-tasks 1024] [--startup-tasks 4]

Measures
- submit: wall time of `python -m hpc.submit prepare --array 0-(N-1)` for an N-task array (the whole
  command: interpreter start, planning, rendering, sbatch), and in-process time of the sbatch calls;
- pipeline: wall time of `python -m hpc.submit pipeline` (every available stage, afterok-chained);
- status: wall time and scheduler calls of `status` on a run with M tasks submitted;
- start-up: per-task overhead of a real (tiny prepare) task: time from the job script's first line
  to the end of the task minus the stage's own work, and Slurm's queue-to-start latency.
Submissions for the first three use `--begin=now+1hour` (nothing runs) and are cancelled after.
Prints a Markdown table; writes slurm_scale.csv to --out.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc import clusters, ledger, local_slurm, slurm, status  # noqa: E402


def cli(*args) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hpc.submit", *map(str, args)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"hpc.submit {' '.join(map(str, args))} failed:\n{out.stdout}\n{out.stderr}")
    return time.perf_counter() - start, out


def cancel(run: Path) -> None:
    jobs = sorted({str(e["job_id"]) for e in ledger.read(run) if e["kind"] in ("tasks", "finalize")})
    if jobs:
        subprocess.run(["scancel", *jobs], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tasks", type=int, default=256)
    parser.add_argument("--status-tasks", type=int, default=1024)
    parser.add_argument("--startup-tasks", type=int, default=4)
    args = parser.parse_args()
    local_slurm.start(verbose=False)
    work = Path(tempfile.mkdtemp(prefix="slurm-scale-"))
    held = yaml.safe_load((clusters.CONFIG_DIR / "slurm-local.yaml").read_text())
    held["sbatch"] = {"begin": "now+1hour"}  # queued, never started: submission cost only
    held_path = work / "held.yaml"
    held_path.write_text(yaml.safe_dump(held))
    rows = []

    def created(name: str, n: int) -> Path:
        run = work / name
        cli("prepare", "--run", run, "--preset", "tiny", "--samples", n, "--shards", n, "--set", "data.resolution=16",
            "--create-only")
        return run

    # 1. an N-task array
    run = created("array", args.tasks)
    seconds, out = cli("prepare", "--run", run, "--cluster", held_path)
    rows.append((f"submit a {args.tasks}-task array (CLI wall time)", f"{seconds:.2f} s"))
    cancel(run)

    # 2. the whole pipeline
    run = work / "pipeline"
    seconds, out = cli("pipeline", "--run", run, "--preset", "tiny", "--samples", 8, "--shards", 2,
                       "--set", "data.resolution=16", "--cluster", held_path)
    jobs = len({e["job_id"] for e in ledger.read(run)})
    rows.append((f"submit the pipeline ({out.stdout.splitlines()[1].split(': ', 1)[1].split(' (')[0]}; {jobs} sbatch calls)",
                 f"{seconds:.2f} s"))
    cancel(run)

    # 3. status of an M-task run
    run = created("status", args.status_tasks)
    cli("prepare", "--run", run, "--cluster", held_path)
    slurm.CALLS.clear()
    start = time.perf_counter()
    result = status.collect(run, ["prepare"])
    seconds = time.perf_counter() - start
    calls = sum(slurm.CALLS.values())
    chunks = sum(1 for e in ledger.read(run) if e["kind"] == "tasks")
    rows.append((f"status of a {args.status_tasks}-task run ({chunks} array submissions): scheduler calls",
                 f"{calls} ({', '.join(f'{k} x{v}' for k, v in slurm.CALLS.items())})"))
    rows.append((f"status of a {args.status_tasks}-task run: wall time (in process)", f"{seconds:.2f} s"))
    assert result[0].tally()["queued"] == args.status_tasks
    cancel(run)

    # 4. per-task start-up overhead of real tasks
    run = created("startup", args.startup_tasks)
    cli("prepare", "--run", run, "--cluster", "slurm-local", "--wait")
    overheads = []
    for log in sorted((run / "logs/prepare").glob("shard-*.attempt-0.log")):
        shard = int(log.name[6:11])
        begin = float(re.search(r"start (\d+\.\d+)", log.read_text()).group(1))
        record = json.loads((run / "tasks/prepare" / f"shard-{shard:05d}.json").read_text())
        overheads.append(record["time"] - begin - record["seconds"])
    job = next(e["job_id"] for e in ledger.read(run) if e["kind"] == "tasks")
    acct = subprocess.run(["sacct", "-X", "-n", "-P", "-j", str(job), "-o", "Submit,Start", "--noconvert"],
                          capture_output=True, text=True).stdout.split()
    from datetime import datetime
    waits = [(datetime.fromisoformat(line.split("|")[1]) - datetime.fromisoformat(line.split("|")[0])).total_seconds()
             for line in acct if "|" in line and "Unknown" not in line]
    rows.append(("per-task start-up (script start -> stage code runs + record written), median",
                 f"{statistics.median(overheads):.2f} s (max {max(overheads):.2f} s, {len(overheads)} tasks)"))
    rows.append(("Slurm submit -> start of an array task on an idle node, median",
                 f"{statistics.median(waits):.1f} s" if waits else "n/a"))

    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "slurm_scale.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("measure", "value"), *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
