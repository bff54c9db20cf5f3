"""The toy experiment both model families share: train on brightness pairs, measure held-out hole brightness."""
import os
import subprocess
import sys

import numpy as np

from fyp.dpo.toy import heldout_brightness
from fyp.dpo.train import export_dir, read_metrics

HELDOUT = 16


def train_and_measure(run, timeout: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Train the toy run in a fresh process; return (implicit accuracy over the last quarter of the steps,
    held-out hole brightness of the initial model, of the trained one). Checks every step was logged."""
    pairs = run.config.train.pairs
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # tiny models: threads only add contention on a shared box
    proc = subprocess.run([sys.executable, "-m", "fyp.dpo.train", "--run", str(run.dir)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]

    rows = read_metrics(run.dir, pairs)
    assert len(rows) == run.config.train.steps
    accuracy = np.array([r["implicit_accuracy"] for r in rows])
    last_quarter = float(accuracy[-(len(accuracy) // 4):].mean())

    reference = heldout_brightness(run, None, HELDOUT)
    trained = heldout_brightness(run, export_dir(run.dir, pairs), HELDOUT)
    print(f"held-out hole brightness: reference {reference.mean():.4f}, trained {trained.mean():.4f} "
          f"(gain {trained.mean() - reference.mean():+.4f}, brighter in {(trained > reference).mean():.0%} of "
          f"{HELDOUT}); implicit accuracy last quarter {last_quarter:.3f}")
    return last_quarter, reference, trained
