"""Scaling studies as sweeps of pairs + train + eval, and plots of each metric against scale.

    python -m fyp.evaluation.scaling plan   --run DIR --kind candidates [--scales 2,4,8,16] [--method M]
    python -m fyp.evaluation.scaling plan   --run DIR --kind samples --scales 8,16,32 [--pairs NAME]
    python -m hpc.submit scaling launch --run DIR --kind ... [--cluster NAME] [--dry-run]   (hpc.scaling)
    python -m fyp.evaluation.scaling plot   --run DIR

Candidate scaling (SPEC section 3): for each k', `pairs --candidates k' --name <method>-k<k'>` (pairs re-ranked
on the first k' candidates; for `--method single` the name is `<reward>-k<k'>`), `train --pairs <name>`,
`eval --model <name>`.
Sample scaling: for each N, the pairs set `<pairs>-n<N>` keeps the first N valid pairs of `<pairs>` in a seeded
random order (nested subsets: the N = 8 pairs are among the N = 16 ones); the planner writes these subset
groups itself, in the submitting process (a single writer), then `train --pairs <pairs>-n<N>` and eval.
Both sweeps end with `eval --model baseline`, the reference line of the plots.
Every step is one `python -m hpc.submit` command; `launch` (hpc.scaling: fyp/ never schedules) runs them in order (with `--wait` on a Slurm cluster,
so a step starts after the one it needs); a done step says "nothing to do" and is skipped, and the first step
that fails stops the launch with its exit code (launch again after fixing it: the done steps are skipped).
`plot` reads `<run>/eval/summary.csv`, finds models named `*-k<scale>` and `*-n<scale>`, and writes
`<run>/eval/scaling/<kind>-<metric>.png` (metric against scale with the bootstrap 95% intervals, the baseline as
a dashed line) and `<run>/eval/scaling/<kind>.csv` (one row per benchmark, metric and scale); the report embeds
the plots.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

import numpy as np

from ..run import Run, atomic_write_text
from .summary import read_summary
from .tables import BIAS_METRICS

KINDS = {"candidates": "k", "samples": "n"}
_SCALE = re.compile(r"^(?P<base>.+)-(?P<tag>[kn])(?P<scale>\d+)$")


def candidate_steps(run: Run, scales: list[int], method: str | None = None) -> list[list[str]]:
    method = method or run.config.pairs.method
    k = run.config.sampling.candidates
    bad = [s for s in scales if not 2 <= s <= k]
    if bad:
        raise ValueError(f"candidate scales must be within 2..K={k}; got {bad}")
    extra, base = [], method
    if method == "single":  # named after its reward, as the pairs stage names single-reward pairs
        rewards = list(run.config.pairs.rewards or run.config.reward_names)
        if len(rewards) != 1 and not run.config.pairs.rewards:
            raise ValueError("candidate scaling with --method single needs pairs.rewards to name the reward")
        extra, base = ["--reward", rewards[0]], rewards[0]
    steps = []
    for scale in scales:
        name = f"{base}-k{scale}"
        steps += [["pairs", "--run", str(run.dir), "--method", method, *extra, "--candidates", str(scale),
                   "--name", name],
                  ["train", "--run", str(run.dir), "--pairs", name],
                  ["eval", "--run", str(run.dir), "--model", name]]
    return steps


def write_sample_subsets(run: Run, pairs: str, sizes: list[int], seed: int = 0) -> list[str]:
    """Create pairs/<pairs>-n<N> for each N (single writer: call from the submitting process only)."""
    store = run.store()
    group = store.pairs(pairs)
    if "valid" not in group:
        raise ValueError(f"{store.path} has no {group}; run the pairs stage first")
    valid = np.asarray(group.valid[:], bool)
    order = np.random.default_rng([seed, 7]).permutation(np.flatnonzero(valid))
    too_big = [n for n in sizes if n > order.size or n < 1]
    if too_big:
        raise ValueError(f"sample scales {too_big} are outside 1..{order.size} (the valid pairs of {group})")
    names = []
    for size in sizes:
        keep = np.zeros_like(valid)
        keep[order[:size]] = True
        name = f"{pairs}-n{size}"
        subset = store.pairs(name)
        for key in ("winner", "loser", "margin"):
            source = group[key]
            values = np.asarray(source[:])
            if key != "margin":
                values = np.where(keep, values, -1).astype(values.dtype)
            subset.create_array(key, shape=source.shape, chunks=source.chunks, dtype=source.dtype,
                                    fill_value=source.fill_value, overwrite=True)[:] = values
        arr = subset.create_array("valid", shape=valid.shape, chunks=group.valid.chunks,
                                      dtype="bool", fill_value=False, overwrite=True)
        arr[:] = keep
        attrs = group.attrs
        attrs.update(subset_of=pairs, subset_size=int(size), subset_seed=int(seed))
        subset.update_attrs(**attrs)
        arr.attrs.update(dict(group.valid.attrs))
        names.append(name)
    store.consolidate()
    return names


def sample_steps(run: Run, sizes: list[int], pairs: str | None = None, seed: int = 0, write: bool = True) -> list[list[str]]:
    pairs = pairs or run.config.train.pairs
    names = write_sample_subsets(run, pairs, sizes, seed) if write else [f"{pairs}-n{n}" for n in sizes]
    steps = []
    for name in names:
        steps += [["train", "--run", str(run.dir), "--pairs", name], ["eval", "--run", str(run.dir), "--model", name]]
    return steps


def baseline_step(run: Run) -> list[str]:
    """The untrained model's eval: the dashed reference line of every scaling plot."""
    return ["eval", "--run", str(run.dir), "--model", "baseline"]


def scaling_rows(rows: list[dict], kind: str) -> list[dict]:
    tag = KINDS[kind]
    out = []
    for r in rows:
        match = _SCALE.match(r["model"])
        if match and match["tag"] == tag:
            out.append(dict(r, base=match["base"], scale=int(match["scale"])))
    return sorted(out, key=lambda r: (r["benchmark"], r["metric"], r["base"], r["scale"]))


def plot_scaling(run_dir: Path | str) -> list[Path]:
    from .plots import _plt, _png

    run_dir = Path(run_dir)
    summary = run_dir / "eval" / "summary.csv"
    if not summary.exists():
        return []
    rows = read_summary(summary)
    folder = run_dir / "eval" / "scaling"
    written = []
    for kind in KINDS:
        points = scaling_rows(rows, kind)
        if not points:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["benchmark", "metric", "pairs", "scale", "mean", "ci_low", "ci_high", "n"])
        for r in points:
            writer.writerow([r["benchmark"], r["metric"], r["base"], r["scale"], r["mean"], r["ci_low"], r["ci_high"], r["n"]])
        atomic_write_text(folder / f"{kind}.csv", buf.getvalue())
        for metric in sorted({r["metric"] for r in points} - set(BIAS_METRICS)):
            plt = _plt()
            fig, ax = plt.subplots(figsize=(4.2, 2.8))
            for (bench, base) in sorted({(r["benchmark"], r["base"]) for r in points if r["metric"] == metric}):
                line = [r for r in points if r["metric"] == metric and r["benchmark"] == bench and r["base"] == base]
                xs = [r["scale"] for r in line]
                ys = np.array([r["mean"] for r in line])
                ax.errorbar(xs, ys, yerr=[ys - [r["ci_low"] for r in line], [r["ci_high"] for r in line] - ys],
                            marker="o", capsize=3, label=f"{base} ({bench})")
                baseline = [r for r in rows if r["model"] == "baseline" and r["metric"] == metric and r["benchmark"] == bench]
                if baseline:
                    ax.axhline(baseline[0]["mean"], linestyle="--", color="gray", linewidth=1,
                               label=f"baseline ({bench})")
            ax.set_xscale("log", base=2)
            scales = sorted({r["scale"] for r in points if r["metric"] == metric})
            ax.set_xticks(scales, [str(x) for x in scales])  # 2, 4, 8 rather than 2^1, 2^2, 2^3
            ax.minorticks_off()
            ax.set_xlabel("k' (candidates per sample)" if kind == "candidates" else "training pairs")
            ax.set_title(f"{metric} vs {kind}", fontsize=10)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = folder / f"{kind}-{metric}.png"
            path.write_bytes(_png(fig))
            written.append(path)
    return written


def main(argv: list[str] | None = None, launch=None, prog: str = "python -m fyp.evaluation.scaling") -> int:
    """plan | launch | plot; `launch(steps, cluster, dry_run) -> exit code` runs the steps (hpc.scaling passes it)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("plan", "launch", "plot"))
    parser.add_argument("--run", required=True)
    parser.add_argument("--kind", choices=tuple(KINDS), default="candidates")
    parser.add_argument("--scales", default=None, help="comma-separated k' (default 2,4,8,16 up to K) or pair counts")
    parser.add_argument("--method", default=None, help="candidate scaling: the pairs method (default: pairs.method)")
    parser.add_argument("--pairs", default=None, help="sample scaling: the pairs set to subsample (default: train.pairs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster", default="local")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "launch" and launch is None:
        print("error: scaling launch schedules jobs: run it as `python -m hpc.submit scaling launch ...`", file=sys.stderr)
        return 2
    run = Run.open(args.run)
    if args.action == "plot":
        paths = plot_scaling(run.dir)
        for path in paths:
            print(path)
        if not paths:
            print(f"scaling: nothing to plot: {run.dir / 'eval' / 'summary.csv'} has no models named *-k<N> or *-n<N>; "
                  f"launch a sweep first", file=sys.stderr)
        return 0
    try:
        scales = [int(s) for s in args.scales.split(",")] if args.scales else None
    except ValueError:
        parser.error(f"--scales takes comma-separated integers, got {args.scales!r}")
    try:
        if args.kind == "candidates":
            k = run.config.sampling.candidates
            steps = candidate_steps(run, scales or [s for s in (2, 4, 8, 16) if s <= k], args.method)
        else:
            if not scales:
                parser.error("--kind samples needs --scales (pair counts, e.g. 8,16,32)")
            steps = sample_steps(run, scales, args.pairs, args.seed, write=args.action == "launch" and not args.dry_run)
    except ValueError as exc:  # bad scales or a missing pairs set: one line, exit code 2 (as hpc.submit's bad input)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    steps.append(baseline_step(run))
    if args.action == "plan":
        for step in steps:
            print("python -m hpc.submit " + " ".join(step))
        return 0
    code = launch(steps, args.cluster, args.dry_run)
    if code == 0 and not args.dry_run:
        print(f"scaling: {len(steps)}/{len(steps)} steps done ('nothing to do': done before, skipped); "
              f"plots: python -m hpc.submit scaling plot --run {args.run}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
