"""Per-item files an eval task writes under `<run>/eval/<benchmark>/<model>/parts/`.

    item-000012.npz          the blended result of item 12 (or why it is invalid), written once generated

Each task owns its shard's items, so no two tasks ever write the same file; every file is written to a
temporary name and renamed, so a killed task leaves whole files or none. A re-run skips items whose file
exists. The shard's metrics go to the store (`store.eval_tasks(...)`, fyp.evaluation.stage). The single-task
finalisation merges both into the Zarr store and the CSV files; the parts stay as the source of a
re-finalisation.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..run import atomic_write_bytes


def item_path(folder: Path, index: int) -> Path:
    return Path(folder) / "parts" / f"item-{index:06d}.npz"



def write_item(folder: Path, index: int, *, id: str, prompt: str, seed: int, valid: bool, reason: str = "",
               result: np.ndarray | None = None) -> None:
    buf = io.BytesIO()
    arrays = dict(id=np.array(id), prompt=np.array(prompt), seed=np.array(seed, np.int64), valid=np.array(valid),
                  reason=np.array(reason))
    if result is not None:
        arrays["result"] = np.asarray(result, np.uint8)
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(item_path(folder, index), buf.getvalue())


def read_item(folder: Path, index: int) -> dict | None:
    path = item_path(folder, index)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    for key in ("id", "prompt", "reason"):
        out[key] = str(out[key])
    out["seed"], out["valid"] = int(out["seed"]), bool(out["valid"])
    return out
