"""Run a stage's tasks on this machine with submitit's LocalExecutor, at most `throttle` at a time.

Each task is its own LocalExecutor job (a controller process plus the task process), so tasks run in
parallel and one crashing (even SIGKILL) never takes the others down. Every task logs to its own
folder, `<run>/logs/<stage>[/<variant>]/shard-00003/<pid>_0_log.out` (one file per attempt: the pid is
the attempt's job id). The LocalExecutor has no array throttle of its own, so this module keeps the
queue: it starts a task whenever fewer than `throttle` run. The submitting process stays until every
task ended (local runs are synchronous by nature; there is no scheduler to hand them to).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from fyp.run import Run

from . import ledger
from .clusters import Resources
from .requeue import ShardCall

log = logging.getLogger("hpc")
POLL_SECONDS = 0.2


@dataclass
class LocalTask:
    stage: str
    variant: str | None
    shard: int
    opts: dict
    job: object = None
    log: Path | None = None
    started: float = 0.0
    state: str = "pending"  # pending | running | done | failed
    error: str = ""
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)  # the task record, once it failed (errno/filename of an OSError)

    @property
    def label(self) -> str:
        return f"{self.stage}{'/' + self.variant if self.variant else ''} shard {self.shard}"


def _last_line(path: Path | None) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except (OSError, AttributeError):
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _start(task: LocalTask, run_dir: Path, res: Resources) -> None:
    folder = ledger.log_dir(run_dir, task.stage, task.variant) / f"shard-{task.shard:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=res.max_requeues)
    executor.update_parameters(timeout_min=res.minutes(), stderr_to_stdout=True, setup=list(res.setup),
                               signal_delay_s=min(res.signal_seconds, max(1, int(res.minutes() * 60) // 2)))
    task.job = executor.submit(ShardCall(), task.stage, str(run_dir), task.shard, task.variant, task.opts)
    task.log = task.job.paths.stdout
    task.started = time.time()
    task.state = "running"
    ledger.append(run_dir, kind="local", stage=task.stage, variant=task.variant, shard=task.shard,
                  job_id=str(task.job.job_id), log=str(task.log), opts=task.opts)


def _collect(task: LocalTask, run: Run) -> None:
    task.seconds = time.time() - task.started
    try:
        task.counts = task.job.result() or {}
        task.state = "done"
        return
    except Exception as exc:  # noqa: BLE001 - any failure of the task, reported with its last line
        message = str(exc).strip().splitlines()
        task.error = next((ln for ln in reversed(message) if ln.strip() and not ln.startswith(" ")), type(exc).__name__)
    task.state = "failed"
    if task.log is not None:  # submitit's half-written result pickle (a full disk): not a result, remove it
        for leftover in task.log.parent.glob("*.save_tmp"):
            leftover.unlink(missing_ok=True)
    records = {r["shard"]: r for r in run.task_records(task.stage, task.variant)}
    record = records.get(task.shard, {})
    task.record = record
    if record.get("state") != "failed":
        # killed without a chance to record it (SIGKILL, OOM): say so, with the log's last line
        tail = _last_line(task.log)
        task.error = f"task process ended without a result (killed?); last log line: {tail or '(empty)'}"
        run.write_task_record(task.stage, task.shard, "failed", task.variant, error=task.error, log=str(task.log))
    else:
        task.error = record.get("error") or task.error


def run_tasks(run_dir: Path | str, tasks: list[LocalTask], resources, throttle: int, echo=print) -> list[LocalTask]:
    """Run the tasks, `throttle` at a time (0 = all at once); return them with their outcomes.

    `resources(stage, variant)` gives each task's Resources (timeout, setup lines, requeues).
    """
    run_dir = Path(run_dir)
    run = Run.open(run_dir)
    queue, running = list(tasks), []
    limit = throttle if throttle > 0 else len(tasks)
    while queue or running:
        while queue and len(running) < limit:
            task = queue.pop(0)
            _start(task, run_dir, resources(task.stage, task.variant))
            running.append(task)
            echo(f"  started {task.label} (log {task.log})")
        time.sleep(POLL_SECONDS)
        for task in [t for t in running if t.job.done()]:
            running.remove(task)
            _collect(task, run)
            if task.state == "done":
                counts = ", ".join(f"{k}={v}" for k, v in task.counts.items())
                echo(f"  done    {task.label} in {task.seconds:.1f}s{': ' + counts if counts else ''}")
            else:
                echo(f"  FAILED  {task.label} after {task.seconds:.1f}s: {task.error}\n          log: {task.log}")
    return tasks
