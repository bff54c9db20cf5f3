"""Rendezvous for the trainer's processes: torchrun, Slurm (one task per GPU), or a lone process.

`distributed_env()` returns RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, read from, in order:
1. torchrun / deepspeed launcher variables (RANK and WORLD_SIZE already set): used as they are;
2. Slurm (`srun` with one task per GPU): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR is
   the first host of SLURM_JOB_NODELIST (via `scontrol show hostnames`, or parsed when scontrol is
   missing); MASTER_PORT is derived from SLURM_JOB_ID so concurrent jobs on a node do not collide;
3. otherwise a single process on 127.0.0.1 with a free port.
`apply()` writes the missing ones into os.environ (what torch.distributed's env:// init reads).
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
PORT_BASE, PORT_SPAN = 20000, 20000


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
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not head:
        raise ValueError(f"cannot parse the Slurm node list {nodelist!r}")
    prefix, ranges = head.group(1), head.group(3)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_env(environ: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    if "RANK" in env and "WORLD_SIZE" in env:
        out = {k: env[k] for k in KEYS if k in env}
        out.setdefault("LOCAL_RANK", env.get("LOCAL_RANK", "0"))
        out.setdefault("MASTER_ADDR", "127.0.0.1")
        out.setdefault("MASTER_PORT", "29500")
        return out
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or socket.gethostname()
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        return dict(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_NTASKS"], LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
                    MASTER_ADDR=env.get("MASTER_ADDR") or first_host(nodelist),
                    MASTER_PORT=env.get("MASTER_PORT") or str(PORT_BASE + job % PORT_SPAN))
    return dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=env.get("MASTER_PORT") or str(free_port()))


def apply(environ: dict | None = None) -> dict[str, str]:
    """Set the rendezvous variables in os.environ (keeping any already there); returns them."""
    values = distributed_env(environ)
    for key, value in values.items():
        os.environ.setdefault(key, str(value))
    return {k: os.environ[k] for k in KEYS}
