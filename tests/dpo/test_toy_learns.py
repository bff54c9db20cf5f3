"""Proof that preference training learns: the toy preset end to end on a CPU.

Prepare (synthetic, 32 px), sample K=4 with the tiny FluxFill, score brightness (mean luminance of the
hole), pairs by that reward alone (brightest vs darkest), DPO for train.steps steps; then generate on the
held-out synthetic split with the trained and the initial transformer from the same seeds. The trained
model's holes must be clearly brighter, and the implicit accuracy must rise above 0.5.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fyp.dpo.toy import heldout_brightness, make_toy_run
from fyp.dpo.train import export_dir, read_metrics

HELDOUT = 16


@pytest.mark.timeout(900)
def test_toy_dpo_makes_heldout_holes_brighter(tmp_path):
    run = make_toy_run(tmp_path / "toy")
    pairs = run.config.train.pairs
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # a 0.1M-parameter model: threads only add contention on a shared box
    proc = subprocess.run([sys.executable, "-m", "fyp.dpo.train", "--run", str(run.dir)], env=env,
                          capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr[-4000:]

    rows = read_metrics(run.dir, pairs)
    assert len(rows) == run.config.train.steps
    accuracy = np.array([r["implicit_accuracy"] for r in rows])
    quarter = len(accuracy) // 4
    assert accuracy[-quarter:].mean() > 0.6, accuracy[-quarter:].mean()

    reference = heldout_brightness(run, None, HELDOUT)
    trained = heldout_brightness(run, export_dir(run.dir, pairs), HELDOUT)
    gain = trained.mean() - reference.mean()
    print(f"held-out hole brightness: reference {reference.mean():.4f}, trained {trained.mean():.4f} "
          f"(gain {gain:+.4f}, brighter in {(trained > reference).mean():.0%} of {HELDOUT}); "
          f"implicit accuracy last quarter {accuracy[-quarter:].mean():.3f}")
    assert gain > 0.02
    assert (trained > reference).mean() >= 0.75
