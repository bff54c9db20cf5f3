"""The bias study (SPEC section 5): brightness, composition and colour of each model's generated holes.

Pixel statistics (fyp.evaluation.pixels: hole_luminance, hole_edge_density, hole_colourfulness) are measured
for every evaluated item by the eval stage; the judge's ratings (judge_brightness, judge_composition,
judge_colour, 1-10) join them when a judge is configured. This module turns the summary rows into one plot
per statistic across models (bars with bootstrap 95% intervals, grouped by benchmark), saved under
`<run>/eval/bias/<statistic>.png` and embedded in the report.
"""
from __future__ import annotations

from pathlib import Path

from .plots import metric_bars
from .tables import BIAS_METRICS

LABELS = {"hole_luminance": "mean luminance of the hole (0-1)", "hole_edge_density": "edge density of the hole",
          "hole_colourfulness": "colourfulness of the hole (Hasler-Suesstrunk)",
          "judge_brightness": "judge: brightness (1-10)", "judge_composition": "judge: composition / detail (1-10)",
          "judge_colour": "judge: colour vividness (1-10)"}


def bias_plots(rows: list[dict]) -> dict[str, bytes]:
    """{statistic: PNG} for every bias statistic present in the rows."""
    present = [m for m in BIAS_METRICS if any(r["metric"] == m for r in rows)]
    return {m: metric_bars(rows, m, LABELS.get(m, m)) for m in present}


def save_bias_plots(run_dir: Path | str, rows: list[dict]) -> list[Path]:
    folder = Path(run_dir) / "eval" / "bias"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for metric, png in bias_plots(rows).items():
        path = folder / f"{metric}.png"
        path.write_bytes(png)
        out.append(path)
    return out
