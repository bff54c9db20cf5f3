"""Where training resumes from, and resuming on another number of processes.

A DeepSpeed ZeRO checkpoint is partitioned by rank, so it loads only into the world size that wrote it.
Each checkpoint folder here also holds `layout.json` (step, world, batch, grad_accum), read before the
engine exists. Resuming on another world size with the same global batch (world x batch x grad_accum)
goes through a DeepSpeed *universal* checkpoint: rank 0 converts the folder once
(`deepspeed.checkpoint.ds_to_universal`, into `<tag>-universal`), and the engine is configured with
`checkpoint.load_universal`. The same global batch means the same pairs in every optimizer step (see
`fyp.dpo.train.global_indices`), so the run continues the same training. Another global batch is refused.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..run import atomic_write_text

LAYOUT_NAME = "layout.json"
UNIVERSAL_SUFFIX = "-universal"


@dataclass(frozen=True)
class Layout:
    step: int
    world: int
    batch: int
    grad_accum: int

    @property
    def global_batch(self) -> int:
        return self.world * self.batch * self.grad_accum


@dataclass(frozen=True)
class Resume:
    tag: str  # the folder under the checkpoint directory that `latest` names
    layout: Layout | None  # None: no layout.json (an older checkpoint, or killed before writing it):
    #                        loaded, then checked against the client state DeepSpeed saved


def write_layout(folder: Path, layout: Layout) -> None:
    atomic_write_text(folder / LAYOUT_NAME, json.dumps(layout.__dict__) + "\n")


def latest(ckpt_dir: Path) -> Resume | None:
    """The checkpoint `latest` names, with its layout, or None when there is none."""
    pointer = ckpt_dir / "latest"
    if not pointer.exists():
        return None
    tag = pointer.read_text().strip()
    path = ckpt_dir / tag / LAYOUT_NAME
    layout = Layout(**json.loads(path.read_text())) if path.exists() else None
    return Resume(tag, layout)


def check_resumable(ckpt_dir: Path, saved: Layout, now: Layout) -> bool:
    """True when resuming needs a universal checkpoint (another world size); ConfigError when it cannot be."""
    if saved.global_batch != now.global_batch:
        raise ConfigError(
            f"checkpoint {ckpt_dir} was made with world {saved.world} x batch {saved.batch} x grad_accum "
            f"{saved.grad_accum} = {saved.global_batch} pairs per step; this run has {now.world} x {now.batch} x "
            f"{now.grad_accum} = {now.global_batch}: resume with the same number of pairs per step")
    return saved.world != now.world


def to_universal(ckpt_dir: Path, tag: str) -> str:
    """Convert checkpoint `tag` into a universal one (once; kept for later resumes). Returns its tag."""
    target_tag = tag + UNIVERSAL_SUFFIX
    target = ckpt_dir / target_tag
    if (target / LAYOUT_NAME).exists():  # written last: a complete conversion
        return target_tag
    partial = ckpt_dir / (target_tag + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(ckpt_dir / tag), "--output_folder", str(partial)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"converting {ckpt_dir / tag} to a universal checkpoint failed: {tail}")
    shutil.copy2(ckpt_dir / tag / LAYOUT_NAME, partial / LAYOUT_NAME)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target_tag
