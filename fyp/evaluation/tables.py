"""Tables in the paper's shape from summary rows: one row per model, one column per (benchmark, metric).

The best model of each column is marked (bold in Markdown; named in the CSV's `best` row); each aligned model
carries its delta against the baseline (`baseline` model). Direction: lower is better for MSE and LPIPS, higher
for everything else. The bias statistics and judge bias ratings have no better direction: they go to their
own table without marks.
"""
from __future__ import annotations

import csv
import io
import math

LOWER_IS_BETTER = ("mse_kept", "lpips_kept", "lpips_gt")
BIAS_METRICS = ("hole_luminance", "hole_edge_density", "hole_colourfulness", "judge_brightness",
                "judge_composition", "judge_colour")
BASELINE = "baseline"


def model_order(models) -> list[str]:
    models = list(dict.fromkeys(models))
    return ([BASELINE] if BASELINE in models else []) + sorted(m for m in models if m != BASELINE)


def better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def build_table(rows: list[dict], bias: bool = False) -> dict:
    """{models, columns [(benchmark, metric)], cells {(model, column): mean}, best {column: model}, delta}."""
    chosen = [r for r in rows if (r["metric"] in BIAS_METRICS) == bias]
    models = model_order(r["model"] for r in chosen)
    columns = sorted({(r["benchmark"], r["metric"]) for r in chosen})
    cells = {(r["model"], (r["benchmark"], r["metric"])): r["mean"] for r in chosen}
    best, delta = {}, {}
    for column in columns:
        present = [(m, cells[(m, column)]) for m in models if math.isfinite(cells.get((m, column), math.nan))]
        if present and not bias:
            top = present[0]
            for m, v in present[1:]:
                if better(column[1], v, top[1]):
                    top = (m, v)
            best[column] = top[0]
        base = cells.get((BASELINE, column), math.nan)
        for m in models:
            v = cells.get((m, column), math.nan)
            if m != BASELINE and math.isfinite(v) and math.isfinite(base):
                delta[(m, column)] = v - base
    return dict(models=models, columns=columns, cells=cells, best=best, delta=delta)


def _num(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"


def to_markdown(table: dict) -> str:
    if not table["columns"]:
        return "_no results_\n"
    head = "| model | " + " | ".join(f"{b}<br>{m}" for b, m in table["columns"]) + " |"
    lines = [head, "|---|" + "---:|" * len(table["columns"])]
    for model in table["models"]:
        cells = []
        for column in table["columns"]:
            v = table["cells"].get((model, column), math.nan)
            text = _num(v)
            if table["best"].get(column) == model:
                text = f"**{text}**"
            if (model, column) in table["delta"]:
                d = table["delta"][(model, column)]
                text += f" ({'+' if d >= 0 else ''}{_num(d)})"
            cells.append(text)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = [f"{b}:{m}" for b, m in table["columns"]]
    writer.writerow(["model", *names, *(f"{n}:delta" for n in names)])
    for model in table["models"]:
        values = [table["cells"].get((model, c), math.nan) for c in table["columns"]]
        deltas = [table["delta"].get((model, c), math.nan) for c in table["columns"]]
        writer.writerow([model, *("" if not math.isfinite(v) else f"{v:.6g}" for v in values),
                         *("" if not math.isfinite(d) else f"{d:.6g}" for d in deltas)])
    writer.writerow(["best", *(table["best"].get(c, "") for c in table["columns"]), *([""] * len(names))])
    return buf.getvalue()
