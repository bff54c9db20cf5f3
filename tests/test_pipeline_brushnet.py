"""The whole chain on tiny-brushnet through the command line on the local executor: prepare, sample, score,
pairs, train (DDPM DPO of the branch, DeepSpeed ZeRO-3), eval of the baseline and of the aligned branch,
report; then `status` shows every stage done. Two tiny rewards keep it short (the preset has all nine)."""
from __future__ import annotations

import json

import pytest

from hpc.submit import main

pytestmark = [pytest.mark.timeout(3000), pytest.mark.slow]


def test_tiny_brushnet_pipeline_runs_every_stage(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["pipeline", "--run", str(run), "--preset", "tiny-brushnet", "--samples", "4", "--shards", "2",
                 "--set", "rewards=[clipscore, aesthetic]", "--set", "eval.samples=2", "--cluster", "local", "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]

    assert main(["status", "--run", str(run)]) == 0
    status = capsys.readouterr().out
    for stage in ("prepare", "sample", "score", "pairs", "train", "eval", "report"):
        rows = [line for line in status.splitlines() if line.startswith(stage)]
        assert rows, (stage, status)
        for row in rows:
            assert "failed" not in row.lower() or " 0 " in row, row

    # The aligned branch is exported in the official BrushNet layout and differs from the initial one.
    export = run / "train" / "ensemble" / "transformer"
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((export / "config.json").read_text())["_class_name"] == "BrushNetModel"
    summary = (run / "eval" / "summary.csv").read_text()
    assert "baseline" in summary and "ensemble" in summary
    report = (run / "report.html").read_text()
    assert "baseline" in report and "ensemble" in report
