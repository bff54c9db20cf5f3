"""Per-item and per-shard files an eval task writes under `<run>/eval/<benchmark>/<model>/parts/`.

    item-000012.npz          the blended result of item 12 (or why it is invalid), written once generated
    metrics-00003.json       the metrics of shard 3's items, written when the shard's metrics are complete

Each task owns its shard's items, so no two tasks ever write the same file; every file is written to a
temporary name and renamed, so a killed task leaves whole files or none. A re-run skips items whose file
exists and shards whose metrics file exists. The single-task finalisation merges the parts into the Zarr
store (`eval/<benchmark>/<model>/...`) and the CSV files; the parts stay as the source of a re-finalisation.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from ..run import atomic_write_bytes


def item_path(folder: Path, index: int) -> Path:
    return Path(folder) / "parts" / f"item-{index:06d}.npz"


def metrics_path(folder: Path, shard: int) -> Path:
    return Path(folder) / "parts" / f"metrics-{shard:05d}.json"




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


def write_metrics(folder: Path, shard: int, indices: list[int], values: dict[str, np.ndarray],
                  failures: dict[str, int], reasons: dict[str, str], info: dict) -> None:
    """Metrics of the shard's items (NaN for invalid ones) as JSON; NaN is written as null."""
    def clean(v):
        return [None if not math.isfinite(float(x)) else float(x) for x in v]

    payload = dict(shard=shard, indices=[int(i) for i in indices], values={k: clean(v) for k, v in values.items()},
                   failures=failures, reasons=reasons, info=info)
    atomic_write_bytes(metrics_path(folder, shard), json.dumps(payload).encode())


def read_metrics(folder: Path, shard: int) -> dict | None:
    path = metrics_path(folder, shard)
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    payload["values"] = {k: np.array([np.nan if x is None else x for x in v], np.float32)
                         for k, v in payload["values"].items()}
    return payload
