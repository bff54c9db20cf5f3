"""Per-item metrics -> `summary.csv` rows with bootstrap 95% intervals.

    model, benchmark, metric, mean, ci_low, ci_high, n

`n` counts the finite values (a NaN - an invalid item, a failed reward or an unparseable judge answer - is
left out and counted in the variant's failures.json). The interval is the percentile bootstrap: B = 1000
resamples of the n values with replacement, drawn from a generator seeded by BOOTSTRAP_SEED and the metric's
name, so a summary is reproducible; the 2.5th and 97.5th percentiles of the resampled means. n = 1 gives a
zero-width interval; n = 0 gives an empty row (mean NaN).
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path

import numpy as np

COLUMNS = ("model", "benchmark", "metric", "mean", "ci_low", "ci_high", "n")
BOOTSTRAP_SEED = 20240601
RESAMPLES = 1000


def bootstrap_ci(values, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = 0.95,
                 label: str = "") -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n == 1:
        return mean, mean, mean, 1
    salt = int.from_bytes(hashlib.sha256(label.encode()).digest()[:4], "little")
    rng = np.random.default_rng([seed, salt])
    means = v[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return mean, float(low), float(high), n


def summarize(model: str, benchmark: str, metrics: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for metric in sorted(metrics):
        mean, low, high, n = bootstrap_ci(metrics[metric], label=f"{benchmark}/{model}/{metric}")
        rows.append(dict(model=model, benchmark=benchmark, metric=metric, mean=mean, ci_low=low, ci_high=high, n=n))
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in COLUMNS])
    return buf.getvalue()


def read_summary(path: Path | str) -> list[dict]:
    """Rows of a summary.csv with mean/ci as floats (NaN for empty) and n as int."""
    rows = []
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not an eval summary (missing columns {', '.join(sorted(missing))})")
        for row in reader:
            rows.append(dict(model=row["model"], benchmark=row["benchmark"], metric=row["metric"],
                             mean=float(row["mean"] or "nan"), ci_low=float(row["ci_low"] or "nan"),
                             ci_high=float(row["ci_high"] or "nan"), n=int(row["n"] or 0)))
    return rows
