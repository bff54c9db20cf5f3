"""Per-image cost of every reward model with tiny configs on the CPU (the same classes and code path as the
full-size models; the numbers measure the pipeline's overhead, not the real models' cost).

    python benchmarks/cpu/rewards_tiny.py --out out/rewards-cpu --max-seconds 120

A thin front for benchmarks/gpu/rewards_full.py with --tiny --device cpu --dtype float32; other options pass
through (e.g. --size 64 --models clipscore,hpsv2).
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    script = Path(__file__).resolve().parents[1] / "gpu" / "rewards_full.py"
    sys.argv = [str(script), "--tiny", "--device", "cpu", "--dtype", "float32", *sys.argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
