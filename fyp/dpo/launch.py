"""Rendezvous for the trainer's processes: torchrun, Slurm (one task per GPU), or a lone process.

`distributed_env()` returns RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, read from, in order:
1. torchrun / deepspeed launcher variables (RANK and WORLD_SIZE already set): used as they are;
2. Slurm (`srun` with one task per GPU): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR is
   the first host of SLURM_JOB_NODELIST (via `scontrol show hostnames`, or parsed when scontrol is
   missing); MASTER_PORT is derived from SLURM_JOB_ID so concurrent jobs on a node do not collide, and
   lies below the kernel's ephemeral port range (a port the OS hands out to outgoing connections,
   gloo's own included, could already be taken on the first node). sbatch exports the submitting
   shell's environment, so a MASTER_ADDR/MASTER_PORT/RANK left there is stale: in a multi-task Slurm
   step the job's own values win (a torchrun inside a one-task job, TORCHELASTIC_RUN_ID, is case 1);
3. otherwise a single process on 127.0.0.1 with a free port.
`apply()` writes them into os.environ (what torch.distributed's env:// init reads): the missing ones,
or all of them in a multi-task Slurm step.
`fyp` does not submit anything: hpc/ runs `srun python -m fyp.dpo.train --run DIR` and this module
turns the task's Slurm environment into a process group.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
PORT_BASE, PORT_SPAN = 15000, 15000  # 15000-29999, clipped to below the ephemeral range
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def expand_nodelist(nodelist: str) -> list[str]:
    """Every host of a Slurm node list, in order, as `scontrol show hostnames` gives them:
    'gpu[003-004,7],cpu1' -> gpu003 gpu004 gpu7 cpu1; 'node[1-2]-ib' -> node1-ib node2-ib;
    'r[1-2]n[01-02]' -> r1n01 r1n02 r2n01 r2n02 (zero padding kept from the range's first number)."""
    hosts: list[str] = []
    for name in _split_top(nodelist.strip()):
        parts = re.split(r"(\[[^\]]*\])", name)
        expanded = [""]
        for part in parts:
            if part.startswith("["):
                choices = _expand_range(part[1:-1], nodelist)
                expanded = [e + c for e in expanded for c in choices]
            elif "[" in part or "]" in part:
                raise ValueError(f"cannot parse the Slurm node list {nodelist!r}")
            else:
                expanded = [e + part for e in expanded]
        hosts += expanded
    if not hosts or not all(hosts):
        raise ValueError(f"cannot parse the Slurm node list {nodelist!r}")
    return hosts


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    out, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += char
    out.append(current)
    return [name for name in out if name]


def _expand_range(body: str, nodelist: str) -> list[str]:
    out = []
    for item in body.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not match:
            raise ValueError(f"cannot parse the Slurm node list {nodelist!r}: bad range {item!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        out += [str(k).zfill(len(low)) for k in range(int(low), int(high) + 1)]
    return out


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[003-005,7],cpu1' -> 'gpu003'."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 check=True, timeout=20).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    return expand_nodelist(nodelist)[0]


def rendezvous_port(job_id: int, ephemeral_low: int | None = None) -> int:
    """A port per job, the same on every node, below the ephemeral range."""
    if ephemeral_low is None:
        try:
            with open(EPHEMERAL_RANGE) as handle:
                ephemeral_low = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            ephemeral_low = 32768  # Linux's default
    span = max(1, min(PORT_SPAN, ephemeral_low - PORT_BASE))
    return PORT_BASE + job_id % span


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_env(environ: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    if _slurm_step(env):
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") \
            or socket.gethostname()
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        return dict(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_NTASKS"], LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
                    MASTER_ADDR=first_host(nodelist), MASTER_PORT=str(rendezvous_port(job)))
    if "RANK" in env and "WORLD_SIZE" in env:
        out = {k: env[k] for k in KEYS if k in env}
        out.setdefault("LOCAL_RANK", env.get("LOCAL_RANK", "0"))
        out.setdefault("MASTER_ADDR", "127.0.0.1")
        out.setdefault("MASTER_PORT", "29500")
        return out
    return dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=env.get("MASTER_PORT") or str(free_port()))


def _slurm_step(env: dict) -> bool:
    """A Slurm step of several tasks (srun, one per GPU) not run by torchrun: its rendezvous comes from
    the job, whatever RANK/MASTER_* the submitting shell left in the environment."""
    try:
        tasks = int(env.get("SLURM_NTASKS", "0"))
    except ValueError:
        return False
    return "SLURM_PROCID" in env and tasks > 1 and "TORCHELASTIC_RUN_ID" not in env


def apply(environ: dict | None = None) -> dict[str, str]:
    """Set the rendezvous variables in os.environ; returns them. Values already there are kept, except
    in a multi-task Slurm step, where they can only be stale (exported by sbatch from the login shell)."""
    env = os.environ if environ is None else environ
    values = distributed_env(env)
    override = _slurm_step(env)
    for key, value in values.items():
        if override:
            os.environ[key] = str(value)
        else:
            os.environ.setdefault(key, str(value))
    return {k: os.environ[k] for k in KEYS}
