"""The report: one self-contained `<run>/report.html` (every image and plot embedded as base64 PNG).

    python -m hpc.submit report --run DIR [--grid-items N]

Sections, each present when its inputs are: the results table (models x benchmark-metric, best in bold,
deltas against the baseline) and the bias table; a bar plot per metric with bootstrap 95% intervals; the
bias study's plots; image grids (masked input | baseline | each aligned model) for the first N valid items
of each benchmark; per-item reward distributions per model; the reward-agreement heatmaps of the pairs
stage (`<run>/pairs/*/agreement.png`); training curves (`<run>/train/*/metrics.csv`); the human study's
agreement table (`<run>/study/agreement.csv`); scaling plots (`<run>/eval/scaling/*.png`, redrawn from the summary).
The report first rebuilds `<run>/eval/summary.csv` and the tables from every evaluated model.
"""
from __future__ import annotations

import base64
import csv
import html
import logging
import math
import time
from pathlib import Path

import numpy as np

from ..hold import hold_point
from ..run import Run, atomic_write_text
from ..stages import Option, Stage
from . import plots
from .bias import bias_plots, save_bias_plots
from .results import rebuild_run_outputs
from .scaling import plot_scaling
from .tables import BIAS_METRICS, build_table, model_order

log = logging.getLogger("fyp.evaluation")
REPORT_NAME = "report.html"
TRAIN_CURVES = ("loss", "implicit_accuracy", "reward_margin", "grad_norm", "lr")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td.model,th.model{text-align:left}.best{font-weight:bold;background:#e8f5e9}
.delta{color:#666;font-size:11px}.figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0}
figcaption{font-size:11px;color:#555}.note{font-size:12px;color:#555}
"""


def _img(png: bytes, alt: str, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _num(v: float) -> str:
    return "-" if not math.isfinite(v) else (f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}")


def table_html(table: dict, css_class: str) -> str:
    if not table["columns"]:
        return '<p class="note">no results</p>'
    head = "".join(f"<th>{html.escape(b)}<br>{html.escape(m)}</th>" for b, m in table["columns"])
    out = [f'<table class="{css_class}"><tr><th class="model">model</th>{head}</tr>']
    for model in table["models"]:
        cells = []
        for column in table["columns"]:
            v = table["cells"].get((model, column), math.nan)
            best = ' class="best"' if table["best"].get(column) == model else ""
            delta = table["delta"].get((model, column))
            extra = (f' <span class="delta">({"+" if delta >= 0 else ""}{_num(delta)})</span>'
                     if delta is not None else "")
            cells.append(f"<td{best}>{_num(v)}{extra}</td>")
        out.append(f'<tr><td class="model">{html.escape(model)}</td>{"".join(cells)}</tr>')
    out.append("</table>")
    return "\n".join(out)


def _eval_groups(run: Run) -> dict[str, dict[str, object]]:
    """{benchmark: {model: zarr group}} of the store's eval results."""
    store = run.store(mode="r")
    out: dict[str, dict[str, object]] = {}
    for bench, model in store.eval_results():
        group = store.eval(bench, model)
        if "image" in group:
            out.setdefault(bench, {})[model] = group
    return {b: dict(sorted(g.items(), key=lambda kv: model_order(g).index(kv[0]))) for b, g in sorted(out.items())}


def image_grids(run: Run, groups: dict, count: int) -> list[str]:
    from ..config import DataConfig
    from ..data.registry import build_reader

    out = []
    for bench, models in groups.items():
        first = next(iter(models.values()))
        valid = np.asarray(first["valid"][:], bool)
        for g in models.values():
            if g["valid"].shape == valid.shape:
                valid &= np.asarray(g["valid"][:], bool)
        picks = [int(i) for i in np.flatnonzero(valid)[:count]]
        if not picks:
            continue
        try:
            reader = build_reader(DataConfig(**dict(first.attrs)["data"]), run.config.seed)
            inputs = [plots.masked_input(reader[i].image, reader[i].mask) for i in picks]
        except Exception as exc:  # noqa: BLE001 - the benchmark folder moved: show results without inputs
            log.warning("report: cannot re-read the %s inputs (%s); grids show results only", bench, exc)
            inputs = [None] * len(picks)
        ids = first["id"][:]
        rows = [[inputs[k]] + [np.asarray(g["image"][i]) for g in models.values()] for k, i in enumerate(picks)]
        titles = ["masked input"] + list(models)
        png = plots.image_grid(rows, titles, [str(ids[i])[:18] for i in picks])
        out.append(_img(png, f"image grid {bench}", f"{bench}: masked input | " + " | ".join(models)))
    return out


def reward_distributions(run: Run, groups: dict) -> list[str]:
    rewards = list(run.config.eval.rewards or run.config.reward_names)
    out = []
    for bench, models in groups.items():
        for reward in rewards:
            values = {m: np.asarray(g[f"metrics/{reward}"][:]) for m, g in models.items() if f"metrics/{reward}" in g}
            if values:
                out.append(_img(plots.distributions(values, f"{reward} on {bench}"), f"distribution {reward} {bench}"))
    return out


def training_curves(run_dir: Path) -> list[str]:
    out = []
    for path in sorted((run_dir / "train").glob("*/metrics.csv")):
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            continue
        steps = np.array([float(r["step"]) for r in rows])
        for key in TRAIN_CURVES:
            if key in rows[0]:
                ys = np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
                out.append(_img(plots.curves({path.parent.name: (steps, ys)}, f"{key} ({path.parent.name})"),
                                f"training curve {key}"))
    return out


def _csv_table(path: Path) -> str:
    with path.open() as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="csv"><tr>{head}</tr>{body}</table>'


def build_report(run_dir: Path | str, grid_items: int = 6) -> Path:
    run = Run.open(run_dir)
    rows = rebuild_run_outputs(run.dir)
    save_bias_plots(run.dir, rows)
    plot_scaling(run.dir)
    groups = _eval_groups(run)
    parts = [f"<h1>Follow-Your-Preference run report</h1><p class='note'>run {html.escape(str(run.dir))} - preset "
             f"{html.escape(run.config.preset)} - written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p>"]
    parts.append("<h2>Results</h2><p class='note'>mean over valid items; best per column highlighted; deltas "
                 "against the baseline in brackets; intervals in eval/summary.csv</p>")
    parts.append(table_html(build_table(rows), "results"))
    parts.append("<h2>Bias study</h2>")
    parts.append(table_html(build_table(rows, bias=True), "bias"))
    parts.append('<div class="figs">' + "".join(_img(png, f"bias {m}") for m, png in bias_plots(rows).items())
                 + "</div>")
    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if m not in BIAS_METRICS]
    parts.append("<h2>Metrics with 95% bootstrap intervals</h2><div class='figs'>"
                 + "".join(_img(plots.metric_bars(rows, m), f"metric {m}") for m in metrics) + "</div>")
    parts.append("<h2>Image grids</h2><div class='figs'>" + "".join(image_grids(run, groups, grid_items)) + "</div>")
    parts.append("<h2>Reward distributions</h2><div class='figs'>" + "".join(reward_distributions(run, groups))
                 + "</div>")
    heatmaps = [_img(p.read_bytes(), f"agreement {p.parent.name}", f"reward agreement, pairs/{p.parent.name}")
                for p in sorted((run.dir / "pairs").glob("*/agreement.png"))]
    parts.append("<h2>Reward agreement (pairs stage)</h2><div class='figs'>"
                 + ("".join(heatmaps) or "<p class='note'>no pairs-stage heatmap</p>") + "</div>")
    curves = training_curves(run.dir)
    parts.append("<h2>Training curves</h2><div class='figs'>"
                 + ("".join(curves) or "<p class='note'>no training metrics</p>") + "</div>")
    study = run.dir / "study" / "agreement.csv"
    if study.exists():
        parts.append("<h2>Agreement with people (A/B study)</h2>" + _csv_table(study))
    scaling = sorted((run.dir / "eval" / "scaling").glob("*.png"))
    if scaling:
        parts.append("<h2>Scaling</h2><div class='figs'>" + "".join(_img(p.read_bytes(), f"scaling {p.stem}", p.stem)
                                                                   for p in scaling) + "</div>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>FYP report</title><style>{CSS}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
    path = run.dir / REPORT_NAME
    hold_point(run.dir, "report.page")  # plots and tables written, the page not yet
    atomic_write_text(path, page)
    log.info("report: wrote %s (%d kB)", path, len(page) // 1024)
    return path


class ReportStage(Stage):
    name = "report"
    sharded = False
    options = (Option("--grid-items", dict(type=int, default=6, help="items per benchmark in the image grids")),)

    def pending_shards(self, run: Run, variant: str | None, opts: dict) -> list[int]:
        return [0]  # cheap, and its inputs change whenever a stage re-runs: always rebuilt

    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        path = build_report(run.dir, opts.get("grid_items") or 6)
        return dict(done=1, bytes=path.stat().st_size)

    def progress(self, run: Run, variant: str | None, opts: dict) -> tuple[int, int]:
        return (int((run.dir / REPORT_NAME).exists()), 1)
