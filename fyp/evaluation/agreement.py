"""Agreement of reward models, their rank ensemble and the judge with the human A/B choices.

    python -m fyp.evaluation.agreement --run DIR        (wired as `python -m hpc.submit agreement --run DIR`)

For each recorded choice (fyp.evaluation.study) between models a and b on an item, the human outcome is
h = +1 (b preferred), -1 (a preferred) or 0 (tie); a metric's outcome is d = s(b) - s(a) of its per-item eval
scores of the two blended results (for the ensemble: the mean-rank difference, rank 1 = best, of the run's
rewards over the two results, SPEC section 3, ties "average").
- accuracy: over the choices with a winner (human ties left out, as in the paper), the fraction where the
  metric prefers the same result; a metric tie (d = 0) counts 1/2. NaN scores leave the choice out.
- Kendall tau-b and Spearman rho between h and d over every choice (human ties included, so they measure how
  well the metric's margins order the human judgements; scipy.stats, NaN if either side is constant).
Metrics: every reward of the run evaluated on the benchmark, `ensemble`, and `judge_total` when present.
Writes `<run>/study/agreement.csv` (metric, accuracy, n_decisive, n_choices, kendall_tau, spearman_rho) and
prints the same table.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np

from ..run import Run, atomic_write_text
from .study import read_choices

COLUMNS = ("metric", "accuracy", "n_decisive", "n_choices", "kendall_tau", "spearman_rho")


def outcome_stats(h: np.ndarray, d: np.ndarray) -> dict:
    from scipy.stats import kendalltau, spearmanr

    keep = np.isfinite(d)
    h, d = h[keep], d[keep]
    decisive = h != 0
    hits = (np.sign(d[decisive]) == h[decisive]).astype(float) + 0.5 * (d[decisive] == 0)
    accuracy = float(hits.mean()) if decisive.any() else math.nan
    tau = rho = math.nan
    if h.size >= 2 and np.ptp(h) > 0 and np.ptp(d) > 0:
        tau = float(kendalltau(h, d).statistic)
        rho = float(spearmanr(h, d).statistic)
    return dict(accuracy=accuracy, n_decisive=int(decisive.sum()), n_choices=int(h.size), kendall_tau=tau,
                spearman_rho=rho)


def _scores(store, benchmark: str, model: str, metric: str, cache: dict) -> np.ndarray | None:
    key = (benchmark, model, metric)
    if key not in cache:
        metrics = store.eval(benchmark, model).part("metrics")
        cache[key] = np.asarray(metrics[metric][:], np.float64) if metric in metrics else None
    return cache[key]


def compute_agreement(run: Run, choices: list[dict] | None = None) -> list[dict]:
    from ..ensemble import mean_rank

    choices = read_choices(run.dir) if choices is None else choices
    if not choices:
        raise SystemExit(f"agreement: no choices in {run.dir / 'study' / 'choices.jsonl'}; run the study first")
    store = run.store(mode="r")
    rewards = list(run.config.eval.rewards or run.config.reward_names)
    cache: dict = {}
    h = np.array([0 if c["winner"] == "tie" else (1 if c["winner"] == c["b"] else -1) for c in choices], float)

    def diffs(metric: str) -> np.ndarray | None:
        out = np.full(len(choices), np.nan)
        seen = False
        for j, c in enumerate(choices):
            sa = _scores(store, c["benchmark"], c["a"], metric, cache)
            sb = _scores(store, c["benchmark"], c["b"], metric, cache)
            if sa is not None and sb is not None:
                out[j] = sb[c["item"]] - sa[c["item"]]
                seen = True
        return out if seen else None

    rows = []
    reward_diffs = {}
    for metric in rewards + ["judge_total"]:
        d = diffs(metric)
        if d is None:
            continue
        if metric != "judge_total":
            reward_diffs[metric] = d
        rows.append(dict(metric=metric, **outcome_stats(h, d)))
    if reward_diffs:
        # scores [n, M, 2] of (a, b) per choice: only the difference matters to a 2-candidate rank
        scores = np.stack([np.stack([np.zeros_like(d), d], -1) for d in reward_diffs.values()], 1)
        ranks = mean_rank(scores.astype(np.float32), ties="average")
        d = np.where(np.isfinite(ranks).all(-1), ranks[:, 0] - ranks[:, 1], np.nan)
        rows.insert(len(reward_diffs), dict(metric="ensemble", **outcome_stats(h, d)))
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r["metric"]] + ["" if isinstance(r[c], float) and not math.isfinite(r[c]) else
                                         (f"{r[c]:.4f}" if isinstance(r[c], float) else r[c]) for c in COLUMNS[1:]])
    return buf.getvalue()


def to_text(rows: list[dict]) -> str:
    lines = [f"{'metric':16s} {'accuracy':>9s} {'decisive':>9s} {'choices':>8s} {'kendall':>8s} {'spearman':>9s}"]
    fmt = lambda v: "-" if not math.isfinite(v) else f"{v:.3f}"  # noqa: E731
    for r in rows:
        lines.append(f"{r['metric']:16s} {fmt(r['accuracy']):>9s} {r['n_decisive']:>9d} {r['n_choices']:>8d} "
                     f"{fmt(r['kendall_tau']):>8s} {fmt(r['spearman_rho']):>9s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc.submit agreement", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    args = parser.parse_args(argv)
    run = Run.open(args.run)
    rows = compute_agreement(run)
    path = Path(run.dir) / "study" / "agreement.csv"
    atomic_write_text(path, to_csv(rows))
    print(to_text(rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
