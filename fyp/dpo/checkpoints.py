"""Checkpoints: where training resumes from, that it resumes only from what this run wrote, and
resuming on another number of processes.

A DeepSpeed ZeRO checkpoint is partitioned by rank, so it loads only into the world size that wrote it.
Each checkpoint folder here also holds `layout.json` (step, world, batch, grad_accum), read before the
engine exists. Resuming on another world size with the same global batch (world x batch x grad_accum)
goes through a DeepSpeed *universal* checkpoint: rank 0 converts the folder once
(`deepspeed.checkpoint.ds_to_universal`, into `<tag>-universal`), and the engine is configured with
`checkpoint.load_universal`. The same global batch means the same pairs in every optimizer step (see
`fyp.dpo.train.global_indices`), so the run continues the same training. Another global batch is refused.

Trust: DeepSpeed reads its checkpoint files with `torch.load(weights_only=False)` (they pickle
non-tensor state), so a pickle planted in `checkpoints/` would run code on resume. Every checkpoint
folder therefore gets `manifest.json`, the SHA-256 of each of its files, written after the files (the
ranks hash a share each), and `latest` is written by the trainer only after the manifest (DeepSpeed's
own `latest` is turned off). Before anything is loaded — by the engine or by the universal conversion —
the folder must hold exactly the manifest's files with its digests; anything else stops with one line
naming the file. A universal conversion gets its own manifest when it is complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..run import atomic_write_text

LAYOUT_NAME = "layout.json"
MANIFEST_NAME = "manifest.json"
LATEST_NAME = "latest"
UNIVERSAL_SUFFIX = "-universal"
log = logging.getLogger("fyp.dpo")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class UntrustedCheckpoint(RuntimeError):
    """A checkpoint whose files are not those this run recorded when it saved them."""


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
    layout: Layout


def write_layout(folder: Path, layout: Layout) -> None:
    atomic_write_text(folder / LAYOUT_NAME, json.dumps(layout.__dict__) + "\n")


# -- digests -------------------------------------------------------------------------------------------
def file_digest(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> list[str]:
    """Every file under `folder` but the manifest, as sorted relative POSIX paths (links count as files)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() != MANIFEST_NAME)


def digest_share(folder: Path, rank: int = 0, world: int = 1) -> dict[str, str]:
    """Digests of this rank's share of the folder's files (every world-th, from `rank`)."""
    return {name: file_digest(folder / name) for name in checkpoint_files(folder)[rank::world]}


def write_manifest(folder: Path, digests: dict[str, str]) -> None:
    missing = sorted(set(checkpoint_files(folder)) - set(digests))
    if missing:
        raise RuntimeError(f"{folder}: no digest for {missing[0]} ({len(missing)} files)")
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(dict(sorted(digests.items())), indent=0) + "\n")


def verify_share(folder: Path, rank: int = 0, world: int = 1) -> None:
    """Refuse `folder` unless it holds exactly its manifest's files and this rank's share matches the digests."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise UntrustedCheckpoint(
            f"checkpoint {folder} has no {MANIFEST_NAME} (not written by this trainer, or an older one): refusing "
            f"to load it, since its files would be unpickled; delete it to start over, or record its digests "
            f"with `python -m fyp.dpo.checkpoints trust {folder}` if you wrote it yourself")
    try:
        manifest = json.loads(manifest_path.read_text())
        assert isinstance(manifest, dict) and all(isinstance(v, str) for v in manifest.values())
    except (ValueError, AssertionError):
        raise UntrustedCheckpoint(f"checkpoint {folder}: {MANIFEST_NAME} is not a digest list; delete the "
                                  f"checkpoint") from None
    files = checkpoint_files(folder)
    for name in files:
        if name not in manifest:
            raise UntrustedCheckpoint(f"checkpoint file {folder / name} is not in {MANIFEST_NAME} (added after "
                                      f"the checkpoint was saved): refusing to load the checkpoint; remove the file")
    for name in sorted(set(manifest) - set(files)):
        raise UntrustedCheckpoint(f"checkpoint file {folder / name} listed in {MANIFEST_NAME} is missing; delete "
                                  f"the checkpoint {folder}")
    for name in files[rank::world]:
        path = folder / name
        if path.is_symlink() or file_digest(path) != manifest[name]:
            raise UntrustedCheckpoint(f"checkpoint file {path} does not match the SHA-256 recorded when it was "
                                      f"saved (changed or replaced since): refusing to load it; delete the checkpoint")


# -- which checkpoint ----------------------------------------------------------------------------------
def write_latest(ckpt_dir: Path, tag: str) -> None:
    """Point `latest` at `tag`; called after its manifest is written, so it names complete checkpoints only."""
    atomic_write_text(ckpt_dir / LATEST_NAME, tag + "\n")


def latest(ckpt_dir: Path) -> Resume | None:
    """The checkpoint `latest` names, with its layout, or None when there is none."""
    pointer = ckpt_dir / LATEST_NAME
    if not pointer.exists():
        return None
    tag = pointer.read_text().strip()
    if not _TAG.fullmatch(tag) or tag in (".", ".."):
        raise UntrustedCheckpoint(f"{pointer} names {tag[:60]!r}, not a checkpoint folder name; delete {pointer}")
    path = ckpt_dir / tag / LAYOUT_NAME
    if not path.is_file():
        raise UntrustedCheckpoint(f"checkpoint {ckpt_dir / tag} has no {LAYOUT_NAME} (not written by this "
                                  f"trainer, or killed while saving): delete {pointer} and the folder")
    return Resume(tag, Layout(**json.loads(path.read_text())))


def check_resumable(ckpt_dir: Path, saved: Layout, now: Layout) -> bool:
    """True when resuming needs a universal checkpoint (another world size); ConfigError when it cannot be."""
    if saved.global_batch != now.global_batch:
        raise ConfigError(
            f"checkpoint {ckpt_dir} was made with world {saved.world} x batch {saved.batch} x grad_accum "
            f"{saved.grad_accum} = {saved.global_batch} pairs per step; this run has {now.world} x {now.batch} x "
            f"{now.grad_accum} = {now.global_batch}: resume with the same number of pairs per step")
    return saved.world != now.world


def to_universal(ckpt_dir: Path, tag: str, verified: bool = False) -> str:
    """Convert checkpoint `tag` into a universal one, once; kept for later resumes.

    The source is verified first unless the caller did (`verified`): ds_to_universal unpickles every
    file. Returns the universal tag; its folder gets its own manifest, written last (a complete conversion).
    """
    target_tag = tag + UNIVERSAL_SUFFIX
    target = ckpt_dir / target_tag
    if (target / MANIFEST_NAME).exists():
        return target_tag
    if not verified:
        verify_share(ckpt_dir / tag)
    partial = ckpt_dir / (target_tag + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(ckpt_dir / tag), "--output_folder", str(partial)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"converting {ckpt_dir / tag} to a universal checkpoint failed: {tail}")
    shutil.copy2(ckpt_dir / tag / LAYOUT_NAME, partial / LAYOUT_NAME)
    write_manifest(partial, digest_share(partial))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target_tag


class Checkpoints:
    """The trainer's checkpoint folder: the resume planned before the engine exists, then load and save.

    `comm`: the trainer's process group (rank, world, barrier, all_reduce, gather); every method is
    called by every rank.
    """

    def __init__(self, folder: Path, layout: Layout, comm):
        self.folder, self.layout, self.comm = Path(folder), layout, comm
        self.tag: str | None = None  # what `load` loads

    def _verify(self, tag: str) -> None:
        from .data import all_ok

        error = None
        try:
            verify_share(self.folder / tag, self.comm.rank, self.comm.world)  # each rank hashes a share
        except UntrustedCheckpoint as exc:
            error = exc
        all_ok(self.comm, error, self.comm.rank, f"verifying checkpoint {tag}")

    def plan_resume(self, ds_config: dict) -> str | None:
        """The tag to resume from (verified), or None. Another world size: converted to a universal
        checkpoint by rank 0, and `ds_config` set to load it."""
        from .data import all_ok

        resume = latest(self.folder)
        if resume is None:
            return None
        self._verify(resume.tag)
        self.tag = resume.tag
        if check_resumable(self.folder, resume.layout, self.layout):
            error = None
            if self.comm.rank == 0:
                log.info("checkpoint %s was written by %d process(es), this run has %d: converting it to a "
                         "universal checkpoint", resume.tag, resume.layout.world, self.layout.world)
                try:
                    to_universal(self.folder, resume.tag, verified=True)
                except Exception as exc:  # noqa: BLE001 - every rank stops, this one with the reason
                    error = exc
            all_ok(self.comm, error, self.comm.rank, f"converting {resume.tag} to a universal checkpoint")
            self.tag = resume.tag + UNIVERSAL_SUFFIX
            self._verify(self.tag)
            ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
        return self.tag

    def load(self, engine) -> int:
        """Restore weights, optimizer and LR schedule from the planned tag; returns the step to start at."""
        if self.tag is None:
            return 0
        _, client = engine.load_checkpoint(str(self.folder), tag=self.tag)
        log.info("resumed %s at step %d from %s", self.folder, int(client["step"]), self.tag)
        return int(client["step"])

    def save(self, engine, step: int) -> Path:
        """DeepSpeed's files, then layout.json, then the manifest (digests hashed a share per rank), then
        `latest`: a kill at any point leaves `latest` on the previous complete checkpoint."""
        tag = f"step-{step:06d}"
        folder = self.folder / tag
        layout = Layout(step, self.layout.world, self.layout.batch, self.layout.grad_accum)
        engine.save_checkpoint(str(self.folder), tag=tag, save_latest=False,
                               client_state=dict(step=step, world=layout.world, batch=[layout.batch, layout.grad_accum]))
        if self.comm.rank == 0:
            (folder / MANIFEST_NAME).unlink(missing_ok=True)  # a folder saved again: old digests are void
            write_layout(folder, layout)
        self.comm.barrier()
        shares = self.comm.gather(digest_share(folder, self.comm.rank, self.comm.world))
        if self.comm.rank == 0:
            write_manifest(folder, {name: digest for share in shares for name, digest in share.items()})
            write_latest(self.folder, tag)
        self.comm.barrier()
        return folder


def trust(folder: Path) -> None:
    """Record the digests of a checkpoint folder you vouch for (e.g. one written before manifests existed)."""
    if not (folder / LAYOUT_NAME).is_file():
        raise ConfigError(f"{folder} has no {LAYOUT_NAME}; only checkpoints written by fyp.dpo.train can resume")
    write_manifest(folder, digest_share(folder))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fyp.dpo.checkpoints", description=trust.__doc__)
    parser.add_argument("command", choices=["trust"])
    parser.add_argument("folder", type=Path, help="a checkpoint folder, e.g. <run>/train/<pairs>/checkpoints/step-000200")
    args = parser.parse_args(argv)
    try:
        trust(args.folder)
    except (ConfigError, OSError) as exc:
        print(f"fyp.dpo.checkpoints: {exc}", file=sys.stderr)
        return 2
    print(f"recorded the digests of {args.folder} in {args.folder / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
