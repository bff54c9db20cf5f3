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
from fyp.stages import PIPELINE, Stage, available_stages, get_stage, option_defaults
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


def _why_cancelled(state: slurm.JobState, parents: list[str], states: dict[str, slurm.JobState],
                   entries: list[dict] | None = None) -> str:
    # sacct's Reason says "Dependency" for plain jobs but often "None" for array tasks: check the parents
    if "Dependency" in state.reason or _parent_failed(parents, states):
        root = _root_failure(parents, states, entries or [])
        return (f"cancelled by Slurm: a job it depends on (afterok:{':'.join(parents) or '?'}) failed or was cancelled"
                + (f"; root: {root}" if root else ""))
    return f"cancelled ({state.state}{', ' + state.reason if state.reason and state.reason != 'None' else ''})"


def _root_failure(parents: list[str], states: dict[str, slurm.JobState], entries: list[dict], depth: int = 0) -> str:
    """The job at the bottom of a dependency cascade, named by its stage: 'prepare shard 0 FAILED (job 12_0)'.
    Follows the ledger's `depends` through jobs that were themselves cancelled for a dependency."""
    by_job = {str(e["job_id"]): e for e in entries if e["kind"] in ("tasks", "finalize")}
    for parent in parents:
        bad = sorted(((k, v) for k, v in states.items()
                      if (k == parent or k.startswith(parent + "_")) and v.ended and v.state != "COMPLETED"),
                     key=lambda kv: (kv[1].state in slurm.CANCELLED, kv[0]))
        if not bad:
            continue
        key, job_state = bad[0]
        entry = by_job.get(parent, {})
        label = entry.get("stage", "?") + (f"/{entry['variant']}" if entry.get("variant") else "")
        if job_state.state in slurm.CANCELLED and entry.get("depends") and depth < 20:
            deeper = _root_failure(entry["depends"], states, entries, depth + 1)
            if deeper:
                return deeper
        if entry.get("kind") == "tasks" and "_" in key:
            index = int(key.split("_")[1])
            return f"{label} shard {entry.get('offset', 0) + index} {job_state.state} (job {key})"
        return f"{label} {'finalize ' if entry.get('kind') == 'finalize' else ''}{job_state.state} (job {key})"
    return ""


def _node_fail(state: slurm.JobState) -> str:
    """Which node of a NODE_FAIL attempt went down (the accounting's node events), and why."""
    nodes, start = state.node_fail or (state.nodes, "")
    try:
        down = slurm.down_nodes(nodes, start or "now-1day")
    except slurm.SlurmError:
        down = []
    return (f"node {', '.join(down)} went down" if down else f"a node of {nodes or '?'} went down") + \
        f" (the job ran on {nodes or '?'})"


def _nonfinite(run: Run, stage: Stage, variant: str | None, records: dict[int, dict]) -> int | None:
    """Non-finite values of a stage (variant): the finalisation's count over the whole store (`Stage.report`,
    e.g. the score stage's `nonfinite`) once there, else the sum of the task records' `nonfinite=` (each
    counts what its attempt scored); None where nothing reports one."""
    try:
        report = stage.report(run, variant)
    except Exception:  # noqa: BLE001 - no store or group yet: the records are all there is
        report = {}
    if "nonfinite" in report:
        return int(report["nonfinite"])
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
            if job_state.node_fail:
                status.error = f"requeued after NODE_FAIL: {_node_fail(job_state)}"
        elif job_state is not None and job_state.state in slurm.RUNNING:
            status.state = "running"
            if job_state.node_fail:
                status.error = f"running again after NODE_FAIL: {_node_fail(job_state)}"
        elif job_state is not None and job_state.state in slurm.CANCELLED:
            status.state = "cancelled"
            status.error = _why_cancelled(job_state, sub.get("depends", []), states, entries)
            if record.get("state") in ("failed", "running") and record_newer:
                status.error += f"; last log line: {_last_line(status.log) or '(empty)'}"
        elif job_state is not None and job_state.state in slurm.FAILED | slurm.DONE:
            status.state = "failed"
            error = record.get("error") if record.get("state") == "failed" and record_newer else ""
            status.error = error or (f"Slurm {job_state.state} (exit {job_state.exit_code}); last log line: "
                                     f"{_last_line(status.log) or '(empty)'}")
            if job_state.state == "NODE_FAIL" or job_state.node_fail:
                status.error = f"Slurm NODE_FAIL: {_node_fail(job_state)}; " + status.error
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
    out.nonfinite = _nonfinite(run, stage, variant, records)
    if ledger.finalized_marker(run.dir, stage.name, variant).exists():
        out.finalize = "done"
    else:
        fin = [e for e in mine if e["kind"] == "finalize"]
        if fin:
            state = states.get(str(fin[-1]["job_id"]))
            if state is None:
                out.finalize = "unknown"  # submitted, no sacct row yet (as for shards above)
            elif state.state in slurm.CANCELLED:
                out.finalize, out.finalize_note = "cancelled", _why_cancelled(state, fin[-1].get("depends", []), states, entries)
            elif state.state in slurm.QUEUED:
                out.finalize = "queued"
            elif state.state in slurm.RUNNING:
                out.finalize = "running"
            else:
                out.finalize = "failed"
                out.finalize_note = f"Slurm {state.state}; log: {ledger.log_dir(run.dir, stage.name, variant)}/finalize.job-{fin[-1]['job_id']}.attempt-0.log"
    return out


def submitted_opts(entries: list[dict], stage: Stage) -> dict:
    """The stage's options as last submitted (the ledger records them), over the defaults: status judges a
    stage by what was asked of it (`train --steps 200` is 200 steps, not the config's)."""
    opts = option_defaults(stage.options)
    for entry in entries:
        if entry.get("stage") == stage.name and isinstance(entry.get("opts"), dict):
            opts.update({k: v for k, v in entry["opts"].items() if k in opts})
    return opts


def collect(run_dir: Path | str, stage_names: list[str] | None = None, opts: dict | None = None) -> list[StageStatus]:
    run = Run.open(run_dir)
    entries = ledger.read(run_dir)
    slurm_jobs = [str(e["job_id"]) for e in entries if e["kind"] in ("tasks", "finalize")]
    states = slurm.query(slurm_jobs) if slurm_jobs else {}
    names = stage_names or [s for s in PIPELINE if s in available_stages()]
    out = []
    for name in names:
        stage = get_stage(name)
        stage_opts = submitted_opts(entries, stage)
        stage_opts.update(opts or {})
        try:
            variants = list(stage.variants(run, stage_opts))
        except Exception:  # noqa: BLE001
            variants = [None]
        # a variant that was submitted (and perhaps cancelled before it wrote anything) is shown too
        for entry in entries:
            if entry.get("stage") == name and entry.get("variant") not in variants:
                variants.append(entry.get("variant"))
        for variant in variants:
            out.append(stage_status(run, stage, variant, stage_opts, entries, states))
    return out


def _problem_groups(st: StageStatus) -> list[tuple[str, str, list[ShardStatus]]]:
    """Failed/cancelled shards grouped by (state, error), in shard order of each group's first shard."""
    groups: dict[tuple[str, str], list[ShardStatus]] = {}
    for s in st.shards:
        if s.state in ("failed", "cancelled"):
            groups.setdefault((s.state, s.error or "?"), []).append(s)
    return [(state, error, shards) for (state, error), shards in groups.items()]


def _log_note(path: str) -> str:
    return path if path and Path(path).exists() else "- (no log: the task never started)"


MAX_PROBLEM_LINES = 20


def render(run_dir: Path | str, statuses: list[StageStatus], details: bool = False) -> str:
    """The table, then the failed or cancelled shards: one line per group of shards that ended the same
    way (ranges of shards), or with `details` one per shard with its log."""
    from .arrayspec import format_indices

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
            if s.state in ("queued", "running") and s.error:
                problems.append(f"  {st.label} shard {s.shard} {s.state.upper()} (job {s.job or '-'}): {s.error}")
        for state, error, shards in _problem_groups(st):
            if details or len(shards) == 1:
                for s in shards:
                    problems.append(f"  {st.label} shard {s.shard} {s.state.upper()} (job {s.job or '-'}): {s.error or '?'}\n"
                                    f"      log: {_log_note(s.log)}")
            else:
                jobs = sorted({s.job.split("_")[0] for s in shards if s.job})
                problems.append(f"  {st.label} shards {format_indices([s.shard for s in shards])} {state.upper()} "
                                f"({len(shards)} tasks of job {', '.join(jobs) or '-'}): {error}")
        if st.finalize in ("failed", "cancelled"):
            problems.append(f"  {st.label} finalize {st.finalize.upper()}: {st.finalize_note}")
    if problems:
        lines.append("failed, cancelled or requeued:")
        if not details and len(problems) > MAX_PROBLEM_LINES:
            rest = len(problems) - MAX_PROBLEM_LINES
            problems = problems[:MAX_PROBLEM_LINES] + [f"  ... {rest} more (status --details lists every shard)"]
        lines.extend(problems)
    return "\n".join(lines)
