"""Matplotlib figures as PNG bytes (Agg backend, no display): metric bars with intervals, distributions,
training curves, image grids. The report embeds them; the bias and scaling studies save them as files."""
from __future__ import annotations

import io
import math

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def metric_bars(rows: list[dict], metric: str, title: str | None = None) -> bytes:
    """One bar per (benchmark, model) with its bootstrap 95% interval, grouped by benchmark."""
    plt = _plt()
    rows = [r for r in rows if r["metric"] == metric]
    benches = sorted({r["benchmark"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(3.5, 1.2 + 1.1 * len(benches) * max(1, len(models)) * 0.6), 2.8))
    for j, model in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for i, bench in enumerate(benches):
            match = [r for r in rows if r["benchmark"] == bench and r["model"] == model]
            if match and math.isfinite(match[0]["mean"]):
                r = match[0]
                xs.append(i + (j - (len(models) - 1) / 2) * width)
                ys.append(r["mean"])
                lo.append(r["mean"] - (r["ci_low"] if math.isfinite(r["ci_low"]) else r["mean"]))
                hi.append((r["ci_high"] if math.isfinite(r["ci_high"]) else r["mean"]) - r["mean"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=model)
    ax.set_xticks(range(len(benches)), benches)
    ax.set_title(title or metric, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def distributions(values: dict[str, np.ndarray], title: str) -> bytes:
    """Overlaid histograms of per-item values, one per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    finite = {k: np.asarray(v)[np.isfinite(v)] for k, v in values.items()}
    everything = np.concatenate([v for v in finite.values() if v.size] or [np.zeros(1)])
    bins = np.linspace(everything.min(), everything.max() + 1e-9, 16)
    for name, v in finite.items():
        if v.size:
            ax.hist(v, bins=bins, alpha=0.5, label=f"{name} (n={v.size})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def curves(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str = "step") -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o" if len(x) <= 12 else None, markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def image_grid(rows: list[list[np.ndarray]], column_titles: list[str], row_titles: list[str]) -> bytes:
    """A grid of uint8 images: rows = items, columns = masked input | baseline | aligned models."""
    plt = _plt()
    n_rows, n_cols = len(rows), len(column_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.8 * n_cols, 1.9 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row) and row[j] is not None:
                ax.imshow(row[j], interpolation="nearest")
            if i == 0:
                ax.set_title(column_titles[j], fontsize=8)
        axes[i][0].text(-0.05, 0.5, row_titles[i], transform=axes[i][0].transAxes, fontsize=6, ha="right",
                        va="center", rotation=90)
    fig.tight_layout()
    return _png(fig)


def masked_input(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The input as the model sees it: the hole painted mid-grey with a magenta tint (1 = hole)."""
    out = np.asarray(image).copy()
    out[np.asarray(mask) > 0] = (170, 110, 170)
    return out
