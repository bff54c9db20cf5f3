"""Run-level eval outputs, rebuilt from every evaluated (benchmark, model) under `<run>/eval/`:

    <run>/eval/summary.csv        all rows of every <benchmark>/<model>/summary.csv (baseline first)
    <run>/eval/table.md|csv       the paper-shaped table (models x benchmark-metric), best marked, deltas
    <run>/eval/bias_table.md|csv  the bias statistics (no direction, no marks)

Each eval finalisation and the report rebuild them; an exclusive file lock serialises concurrent
finalisations of different models, and every file is written to a temporary name and renamed.
"""
from __future__ import annotations

import fcntl
from pathlib import Path

from ..run import atomic_write_text
from .summary import read_summary, rows_to_csv
from .tables import build_table, model_order, to_csv, to_markdown


def variant_summaries(run_dir: Path | str) -> list[Path]:
    return sorted((Path(run_dir) / "eval").glob("*/*/summary.csv"))


def collect_rows(run_dir: Path | str) -> list[dict]:
    rows = []
    for path in variant_summaries(run_dir):
        rows.extend(read_summary(path))
    order = {m: i for i, m in enumerate(model_order(r["model"] for r in rows))}
    return sorted(rows, key=lambda r: (order[r["model"]], r["benchmark"], r["metric"]))


def rebuild_run_outputs(run_dir: Path | str) -> list[dict]:
    folder = Path(run_dir) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = collect_rows(run_dir)
        atomic_write_text(folder / "summary.csv", rows_to_csv(rows))
        for stem, bias in (("table", False), ("bias_table", True)):
            table = build_table(rows, bias=bias)
            atomic_write_text(folder / f"{stem}.md", to_markdown(table))
            atomic_write_text(folder / f"{stem}.csv", to_csv(table))
    return rows
