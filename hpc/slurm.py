"""Talking to Slurm: sbatch, one sacct call for many jobs (squeue where accounting is off), waiting.

Every call goes through `_call`, which counts scheduler calls (`CALLS`) so that tests and benchmarks
can check that `status` makes one.
"""
from __future__ import annotations

import collections
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

CALLS: collections.Counter = collections.Counter()
# Slurm job states, grouped by what they mean for a task
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED_REQUEUE"}
RUNNING = {"RUNNING", "COMPLETING"}
DONE = {"COMPLETED"}
CANCELLED = {"CANCELLED", "REVOKED"}
FAILED = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
ENDED = DONE | CANCELLED | FAILED


class SlurmError(RuntimeError):
    pass


@dataclass(frozen=True)
class JobState:
    state: str  # first word of Slurm's state, e.g. CANCELLED (not "CANCELLED by 0")
    reason: str = ""
    exit_code: str = ""
    nodes: str = ""  # the node list of the (last) attempt
    node_fail: tuple = ()  # (node list, start) of an attempt that ended NODE_FAIL (the job was then requeued)

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def available() -> bool:
    return shutil.which("sbatch") is not None


def _call(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    CALLS[cmd[0]] += 1
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} is not installed here; is this a Slurm login node? "
                         "(for a local test cluster: python -m hpc.local_slurm start)") from None


def sbatch(cmd: list[str]) -> str:
    out = _call(cmd)
    if out.returncode:
        raise SlurmError(f"sbatch refused the job: {(out.stderr or out.stdout).strip().splitlines()[-1:] or '?'}")
    return out.stdout.strip().split(";")[0]  # --parsable: "jobid" or "jobid;cluster"


def max_array_size() -> int | None:
    out = _call(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.M)
    return int(match.group(1)) if match else None


_ARRAY_RANGE = re.compile(r"^(\d+)_\[(.+)\]$")


def _expand(job_id: str) -> list[str]:
    """'12_[3-5,7%2]' -> ['12_3', '12_4', '12_5', '12_7']; other ids unchanged."""
    match = _ARRAY_RANGE.match(job_id)
    if not match:
        return [job_id]
    from .arrayspec import parse  # same syntax as --array

    return [f"{match.group(1)}_{i}" for i in parse(match.group(2)).indices]


def query(job_ids: list[str]) -> dict[str, JobState]:
    """States of jobs and array tasks ('12', '12_3'), with ONE sacct call (squeue when accounting is off).

    An array job id returns a key per task. Jobs squeue no longer knows are absent from the result.
    """
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    # -D: every attempt of a requeued job, oldest first: the last is the job's state, an earlier NODE_FAIL
    # is kept so that status can say which node took the job down
    out = _call(["sacct", "-X", "-D", "-n", "-P", "-j", ",".join(ids), "-o", "JobID,State,Reason,ExitCode,NodeList,Start"])
    states: dict[str, JobState] = {}
    if out.returncode == 0 and "accounting storage is disabled" not in (out.stderr + out.stdout).lower():
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 4:
                continue
            job, state, reason, code = parts[:4]
            nodes, start = (parts[4], parts[5]) if len(parts) >= 6 else ("", "")
            state = state.split()[0] if state else "UNKNOWN"
            for key in _expand(job):
                before = states.get(key)
                failed = (nodes, start) if state == "NODE_FAIL" else (before.node_fail if before else ())
                states[key] = JobState(state, reason, code, nodes, failed)
        return states
    return squeue(ids)


def down_nodes(nodes: str, since: str) -> list[str]:
    """Nodes of `nodes` that went down at or after `since` (a sacct time), with the reason, from the
    accounting's node events: ['node2 (Not responding)']. [] where accounting has none."""
    if not nodes or nodes in ("None", "None assigned"):
        return []
    out = _call(["sacctmgr", "-n", "-P", "show", "event", f"nodes={nodes}", f"start={since}",
                 "format=NodeName,TimeStart,State,Reason"])
    found = []
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 4 and parts[0] and "DOWN" in parts[2].upper() and parts[0] not in [f.split()[0] for f in found]:
            found.append(f"{parts[0]} ({parts[3] or parts[2]})")
    return found


def squeue(ids: list[str]) -> dict[str, JobState]:
    """States from squeue (no accounting): `--states=all`, or a job that ended would vanish and `--wait`
    would wait for it forever (squeue lists ended jobs for MinJobAge seconds, 300 by default)."""
    states: dict[str, JobState] = {}
    out = _call(["squeue", "-h", "-r", "--states=all", "-j", ",".join(ids), "-o", "%i|%T|%r"])
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            states[parts[0]] = JobState(parts[1], parts[2])
    return states


def wait(job_ids: list[str], poll_seconds: float = 3.0, timeout: float | None = None, echo=None,
         max_poll_seconds: float = 60.0) -> dict[str, JobState]:
    """Block until every job (and array task) ended; returns the final states. Polls by design (--wait),
    but asks only about jobs that have not ended yet, and backs off (x1.5 a poll, up to
    `max_poll_seconds`) while nothing changes."""
    deadline = None if timeout is None else time.time() + timeout
    wanted = {str(j) for j in job_ids}
    final: dict[str, JobState] = {}  # states of the jobs that ended: never asked about again
    last, delay = "", poll_seconds
    while True:
        open_jobs = sorted(wanted - {k.split("_")[0] for k in final})
        states = query(open_jobs) if open_jobs else {}
        mine = {k: v for k, v in states.items() if k.split("_")[0] in wanted}
        for job in open_jobs:  # a job sacct does not know yet (just submitted) has not ended
            tasks = {k: v for k, v in mine.items() if k.split("_")[0] == job}
            if tasks and all(v.ended for v in tasks.values()):
                final.update(tasks)
        if not wanted - {k.split("_")[0] for k in final}:
            return final
        current = {**final, **mine}
        counts = collections.Counter(v.state for v in current.values())
        line = ", ".join(f"{k.lower()} {n}" for k, n in sorted(counts.items()))
        if line != last:
            if echo:
                echo(f"  waiting: {line}")
            last, delay = line, poll_seconds
        else:
            delay = min(delay * 1.5, max(max_poll_seconds, poll_seconds))
        if deadline is not None and time.time() > deadline:
            raise SlurmError(f"jobs {', '.join(job_ids)} still not ended after {timeout:.0f}s")
        time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.time() + 0.01)))
