"""`python -m hpc.submit status --run DIR`: where every stage of a run stands, from one look.

Sources, each read once: the stores (Stage.progress: samples done/total; pending shards from the done
masks), the task records (fyp.run.Run.task_records: state, last error, counts), hpc's submissions
ledger (which Slurm job and array index ran which shard, where the logs are), and ONE `sacct` call
for every Slurm job of the run (squeue where accounting is off). It never polls.
"""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

from fyp.run import Run
from fyp.stages import PIPELINE, Stage, available_stages, get_stage
from fyp.store import StoreError

from . import ledger, slurm

log = logging.getLogger("hpc")
STATES = ("pending", "queued", "running", "done", "failed", "cancelled", "unknown")


@dataclass
class ShardStatus:
    shard: int
    state: str  # one of STATES; pending = not submitted (or not running yet locally); unknown = submitted
    #   to Slurm, but sacct has no row for its task yet and nothing else says how it ended
    job: str = ""  # Slurm job/array task id or local pid
    error: str = ""
    log: str = ""


@dataclass
class StageStatus:
    stage: str
    variant: str | None
    done_samples: int | None
    total_samples: int | None
    shards: list[ShardStatus]
    finalize: str = ""  # done | queued | running | failed | cancelled | "" (not submitted)
    finalize_note: str = ""
    nan: int = 0
    nonfinite: int | None = None  # non-finite values the stage reports (score: per reward); None = not reported
    counts: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.stage + (f"/{self.variant}" if self.variant else "")

    def tally(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for s in self.shards:
            out[s.state] += 1
        return out


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _slurm_log(run_dir: Path, stage: str, variant: str | None, shard: int, job: str) -> str:
    pattern = str(ledger.log_dir(run_dir, stage, variant) / f"shard-{shard:05d}.job-{job}.attempt-*.log")
    found = sorted(glob.glob(pattern), key=lambda p: int(p.rsplit("attempt-", 1)[1].split(".")[0]))
    return found[-1] if found else pattern.replace("*", "0")


def _parent_failed(parents: list[str], states: dict[str, slurm.JobState]) -> bool:
    """Whether a job (or any task of an array job) this one depends on ended without completing."""
    for parent in parents:
        for key, state in states.items():
            if (key == parent or key.startswith(parent + "_")) and state.ended and state.state != "COMPLETED":
                return True
    return False


def _why_cancelled(state: slurm.JobState, parents: list[str], states: dict[str, slurm.JobState]) -> str:
    # sacct's Reason says "Dependency" for plain jobs but often "None" for array tasks: check the parents
    if "Dependency" in state.reason or _parent_failed(parents, states):
        return f"cancelled by Slurm: a job it depends on (afterok:{':'.join(parents) or '?'}) failed or was cancelled"
    return f"cancelled ({state.state}{', ' + state.reason if state.reason and state.reason != 'None' else ''})"


def _nonfinite(run: Run, stage: str, variant: str | None, records: dict[int, dict]) -> int | None:
    """Non-finite values of a stage (variant): the finalisation's count over the whole store (the score
    stage writes `{done,total,nonfinite}` into `scores/<reward>` attrs) once there, else the sum of the
    task records' `nonfinite=` (each counts what its attempt scored); None where nothing reports one."""
    if stage == "score" and variant:
        try:
            attrs = run.store("r").scores(variant).attrs
        except Exception:  # noqa: BLE001 - no store or group yet: the records are all there is
            attrs = {}
        if "nonfinite" in attrs:
            return int(attrs["nonfinite"])
    counts = [int(r["nonfinite"]) for r in records.values() if isinstance(r.get("nonfinite"), (int, float))]
    return sum(counts) if counts else None


def stage_status(run: Run, stage: Stage, variant: str | None, opts: dict, entries: list[dict],
                 states: dict[str, slurm.JobState]) -> StageStatus:
    mine = [e for e in entries if e.get("stage") == stage.name and e.get("variant") == variant]
    try:
        shards_total = stage.num_shards(run, opts)
    except Exception:  # noqa: BLE001 - a stage that cannot say yet
        shards_total = 0
    try:
        pending = set(stage.pending_shards(run, variant, opts))
    except Exception:  # noqa: BLE001 - its arrays may not exist yet
        pending = set(range(shards_total))
    try:
        done_samples, total_samples = stage.progress(run, variant, opts)
    except Exception:  # noqa: BLE001
        done_samples = total_samples = None
    records = {r["shard"]: r for r in run.task_records(stage.name, variant)}
    latest: dict[int, dict] = {}
    for entry in mine:
        if entry["kind"] == "tasks":
            for index in entry["indices"]:
                latest[entry["offset"] + index] = entry
        elif entry["kind"] == "local":
            latest[entry["shard"]] = entry
    shards = []
    for shard in range(shards_total):
        record, sub = records.get(shard, {}), latest.get(shard)
        status = ShardStatus(shard, "pending")
        if sub and sub["kind"] == "tasks":
            status.job = f"{sub['job_id']}_{shard - sub['offset']}"
            status.log = _slurm_log(run.dir, stage.name, variant, shard, status.job)
        elif sub:
            status.job, status.log = sub["job_id"], sub.get("log", "")
        job_state = states.get(status.job) if sub and sub["kind"] == "tasks" else None
        record_newer = record and sub and record.get("time", 0) >= sub.get("time", 0)
        slurm_ended_badly = job_state is not None and job_state.state in slurm.CANCELLED | slurm.FAILED
        if (shard not in pending and not slurm_ended_badly) or (record.get("state") == "done" and (record_newer or not sub)):
            status.state = "done"
        elif job_state is not None and job_state.state in slurm.QUEUED:
            status.state = "queued"
        elif job_state is not None and job_state.state in slurm.RUNNING:
            status.state = "running"
        elif job_state is not None and job_state.state in slurm.CANCELLED:
            status.state = "cancelled"
            status.error = _why_cancelled(job_state, sub.get("depends", []), states)
            if record.get("state") in ("failed", "running") and record_newer:
                status.error += f"; last log line: {_last_line(status.log) or '(empty)'}"
        elif job_state is not None and job_state.state in slurm.FAILED | slurm.DONE:
            status.state = "failed"
            error = record.get("error") if record.get("state") == "failed" and record_newer else ""
            status.error = error or (f"Slurm {job_state.state} (exit {job_state.exit_code}); last log line: "
                                     f"{_last_line(status.log) or '(empty)'}")
        elif record and (record_newer or not sub):
            status.state = {"failed": "failed", "running": "running", "requeued": "queued"}.get(record["state"], "pending")
            status.error = record.get("error", "") if status.state == "failed" else ""
            status.log = status.log or record.get("log", "")
        elif sub and sub["kind"] == "tasks":
            # submitted, no sacct row yet: just queued, or a never-started task slurmdbd has not recorded
            # as cancelled yet. Neither the store nor a task record says more, so say so.
            status.state = "unknown"
        shards.append(status)
    out = StageStatus(stage.name, variant, done_samples, total_samples, shards)
    out.nan = sum(int(v) for r in records.values() for k, v in r.items()
                  if "nan" in k.lower() and isinstance(v, (int, float)) and not isinstance(v, bool))
    out.nonfinite = _nonfinite(run, stage.name, variant, records)
    if ledger.finalized_marker(run.dir, stage.name, variant).exists():
        out.finalize = "done"
    else:
        fin = [e for e in mine if e["kind"] == "finalize"]
        if fin:
            state = states.get(str(fin[-1]["job_id"]))
            if state is None:
                out.finalize = "unknown"  # submitted, no sacct row yet (as for shards above)
            elif state.state in slurm.CANCELLED:
                out.finalize, out.finalize_note = "cancelled", _why_cancelled(state, fin[-1].get("depends", []), states)
            elif state.state in slurm.QUEUED:
                out.finalize = "queued"
            elif state.state in slurm.RUNNING:
                out.finalize = "running"
            else:
                out.finalize = "failed"
                out.finalize_note = f"Slurm {state.state}; log: {ledger.log_dir(run.dir, stage.name, variant)}/finalize.job-{fin[-1]['job_id']}.attempt-0.log"
    return out


def collect(run_dir: Path | str, stage_names: list[str] | None = None, opts: dict | None = None) -> list[StageStatus]:
    run = Run.open(run_dir)
    entries = ledger.read(run_dir)
    slurm_jobs = [str(e["job_id"]) for e in entries if e["kind"] in ("tasks", "finalize")]
    states = slurm.query(slurm_jobs) if slurm_jobs else {}
    names = stage_names or [s for s in PIPELINE if s in available_stages()]
    out = []
    for name in names:
        stage = get_stage(name)
        stage_opts = {o.dest: o.kwargs.get("default") for o in stage.options}
        stage_opts.update(opts or {})
        try:
            variants = stage.variants(run, stage_opts)
        except Exception:  # noqa: BLE001
            variants = [None]
        for variant in variants:
            out.append(stage_status(run, stage, variant, stage_opts, entries, states))
    return out


def render(run_dir: Path | str, statuses: list[StageStatus]) -> str:
    run = Run.open(run_dir)
    cfg = run.config
    lines = [f"run {run_dir}: preset {cfg.preset}, {cfg.shards} shards",
             f"{'stage':24s} {'samples':>11s} {'pending':>8s} {'queued':>7s} {'running':>8s} {'done':>5s} "
             f"{'failed':>7s} {'cancelled':>9s} {'unknown':>7s}  finalize"]
    try:  # the stages' counts below swallow store errors: a damaged store must still be said, once
        run.store("r")
    except StoreError as exc:
        lines.insert(1, f"store: {exc}")
    problems = []
    for st in statuses:
        t = st.tally()
        samples = "-" if st.done_samples is None else f"{st.done_samples}/{st.total_samples}"
        nan = f"  NaN {st.nan}" if st.nan else ""
        nan += f"  nonfinite {st.nonfinite}" if st.nonfinite is not None else ""
        lines.append(f"{st.label:24s} {samples:>11s} {t['pending']:>8d} {t['queued']:>7d} {t['running']:>8d} "
                     f"{t['done']:>5d} {t['failed']:>7d} {t['cancelled']:>9d} {t['unknown']:>7d}  "
                     f"{st.finalize or '-'}{nan}")
        for s in st.shards:
            if s.state in ("failed", "cancelled"):
                problems.append(f"  {st.label} shard {s.shard} {s.state.upper()} (job {s.job or '-'}): {s.error or '?'}\n"
                                f"      log: {s.log or '-'}")
        if st.finalize in ("failed", "cancelled"):
            problems.append(f"  {st.label} finalize {st.finalize.upper()}: {st.finalize_note}")
    if problems:
        lines.append("failed or cancelled:")
        lines.extend(problems)
    return "\n".join(lines)
