"""The pairs stage's report: counts, skipped samples with reasons, reward agreement (CSV + heatmap).

Files go to `<run>/pairs/<name>/`, a plain folder beside the store (not inside the Zarr group):

    summary.json          plan, counts, left-out and non-finite counts per reward, file list
    counts.csv            what happened to the samples (pairs, and each reason for no pair)
    skipped.csv           index, id, reason of every sample without a pair
    rewards.csv           per reward: samples it was left out of, NaN and inf values (first k' candidates)
    agreement.csv         mean Kendall tau-b between reward models' candidate rankings
    agreement_counts.csv  the samples each tau entry averages over
    agreement.png         the tau matrix as a heatmap
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..run import atomic_write_text, umask_mode


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def matrix_csv(names: list[str], matrix: np.ndarray, fmt: str = "{:.6f}") -> str:
    rows = [["reward", *names]]
    for name, row in zip(names, matrix):
        rows.append([name, *("" if not np.isfinite(v) else fmt.format(v) for v in row)])
    return _csv(rows)


def save_heatmap(path: Path, names: list[str], tau: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.6 + 0.7 * max(len(names), 1)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(np.nan_to_num(tau, nan=0.0), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            text = "n/a" if not np.isfinite(tau[i, j]) else f"{tau[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(tau[i, j]) and abs(tau[i, j]) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="mean Kendall tau-b")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.chmod(tmp, umask_mode())  # mkstemp made it 0600
    os.replace(tmp, path)


def write_report(folder: Path, summary: dict, skipped: list[tuple[int, str, str]], reward_rows: list[list],
                 agreement_names: list[str], tau: np.ndarray, tau_count: np.ndarray) -> list[str]:
    """Write every report file; return their names."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "counts.csv", _csv([["outcome", "samples"], *summary["counts"].items()]))
    atomic_write_text(folder / "skipped.csv", _csv([["index", "id", "reason"], *skipped]))
    atomic_write_text(folder / "rewards.csv",
                      _csv([["reward", "samples_left_out", "nan_values", "inf_values"], *reward_rows]))
    files = ["summary.json", "counts.csv", "skipped.csv", "rewards.csv"]
    if agreement_names:
        atomic_write_text(folder / "agreement.csv", matrix_csv(agreement_names, tau))
        atomic_write_text(folder / "agreement_counts.csv", matrix_csv(agreement_names, tau_count, "{:.0f}"))
        save_heatmap(folder / "agreement.png", agreement_names, tau,
                     f"reward agreement over {int(np.nanmax(tau_count)) if tau_count.size else 0} samples "
                     f"(first {summary['plan']['candidates']} candidates)")
        files += ["agreement.csv", "agreement_counts.csv", "agreement.png"]
    summary = dict(summary, files=files)
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=1))
    return files
