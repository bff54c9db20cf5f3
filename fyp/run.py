"""A run is a directory: the resolved configuration, the Zarr store, logs, and per-shard task records.

    <run>/config.yaml             written once, at prepare
    <run>/store.zarr              see fyp.store
    <run>/logs/                   task logs (the scheduler decides the names)
    <run>/tasks/<stage>[/<variant>]/shard-00003.json
                                  the last outcome of each shard task: state, counts, throughput, error

Task records are plain JSON files written atomically (temp + rename) outside the Zarr store, so a task
never touches store metadata. They are what `status` reads for failures and last error lines. Each
record file is padded to one filesystem block (RECORD_RESERVE): on a full disk, where the temp file of an
atomic write cannot be made, the task's last state ("failed", with the reason) is written over the
previous record in place, in blocks the file already holds, rather than leaving it "running".
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from .config import RunConfig
from .store import RunStore

CONFIG_NAME = "config.yaml"
RECORD_RESERVE = 4096  # bytes every task record file keeps (one block): room for its last state on a full disk
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_BELOW = 4 << 20  # bytes free under which a failure counts as "the disk is full": some writers (torch.save's
#   zip writer) report ENOSPC as a RuntimeError without errno, so the free space is what says it


def disk_full(path: Path | str) -> bool:
    """Whether the filesystem holding `path` has (almost) no space left for this user."""
    try:
        info = os.statvfs(path)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < FULL_BELOW


def umask_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file (0o666 less the umask).

    mkstemp creates files 0600 whatever the umask; a file renamed from it must get this mode, or reports
    and task records end up unreadable to the group that reads the rest of the run."""
    try:  # Linux: read it without changing it (os.umask is a set-and-restore, racy across threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename: a reader (or a killed writer) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # no stray temp file after a failed write (e.g. a full disk)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@dataclass
class Run:
    dir: Path
    config: RunConfig

    @classmethod
    def open(cls, run_dir: Path | str) -> "Run":
        run_dir = Path(run_dir)
        path = run_dir / CONFIG_NAME
        if not path.exists():
            raise FileNotFoundError(f"{run_dir} is not a prepared run (no {CONFIG_NAME}); run `prepare` first")
        return cls(run_dir, config_mod.load(path))

    @classmethod
    def create(cls, run_dir: Path | str, cfg: RunConfig) -> "Run":
        run_dir = Path(run_dir)
        if (run_dir / CONFIG_NAME).exists():
            raise FileExistsError(f"{run_dir} is already a prepared run; choose a new --run directory")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_NAME, config_mod.dump(cfg))  # a killed prepare leaves no half file
        return cls(run_dir, cfg)

    def store(self, mode: str = "r+") -> RunStore:
        return RunStore.open(self.dir, mode=mode)

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    # -- per-shard task records ----------------------------------------------------------------
    def task_record_path(self, stage: str, shard: int, variant: str | None = None) -> Path:
        parts = [stage] + ([variant] if variant else [])
        return self.dir.joinpath("tasks", *parts, f"shard-{shard:05d}.json")

    def write_task_record(self, stage: str, shard: int, state: str, variant: str | None = None, **info) -> None:
        record = dict(stage=stage, variant=variant, shard=shard, state=state, time=time.time(), **info)
        path = self.task_record_path(stage, shard, variant)
        text = json.dumps(record, indent=1)
        try:
            atomic_write_text(path, text + " " * (RECORD_RESERVE - 1 - len(text)) + "\n")
        except OSError as exc:
            if exc.errno not in DISK_FULL or not path.exists():
                raise
            _overwrite_record(path, record)

    def task_records(self, stage: str, variant: str | None = None) -> list[dict]:
        folder = self.dir.joinpath("tasks", stage, *([variant] if variant else []))
        return [json.loads(p.read_text()) for p in sorted(folder.glob("shard-*.json"))]


def _overwrite_record(path: Path, record: dict) -> None:
    """Write `record` over the file at `path` in place, within its current size (no new blocks on a full
    disk); the traceback is dropped and the error shortened to fit. Not atomic: the last resort."""
    size = path.stat().st_size
    record = {k: v for k, v in record.items() if k != "traceback"}
    for limit in (1000, 200, 0):
        if "error" in record:
            record["error"] = str(record["error"])[:limit]
        text = json.dumps(record)
        if len(text) + 1 <= size:
            break
    else:
        raise OSError(errno.ENOSPC, "no space left to record the task's state", str(path))
    data = (text + " " * (size - 1 - len(text)) + "\n").encode()
    with open(path, "r+b") as handle:
        handle.write(data[:size])
