"""The eval stage end to end on the toy preset (tiny FluxFill, 32 px), the report in headless Chromium, and bad input.

The "aligned" model is a perturbed copy of the tiny transformer saved with `save_pretrained` (what the trainer's
export produces: a diffusers transformer folder) so the test does not pay for a training run.
"""
import csv
import shutil
import subprocess

import numpy as np
import pytest
import torch

from fyp.data.stage import create_run
from fyp.evaluation.report import build_report
from fyp.evaluation.targets import EvalError
from fyp.run import Run
from fyp.stages import execute_shard, get_stage

ITEMS = 4


def _run_stage(run, opts):
    stage = get_stage("eval")
    out = {}
    for variant in stage.variants(run, opts):
        stage.prepare_variant(run, variant, opts)  # what hpc.submit does before submitting the tasks
        out[variant] = [execute_shard("eval", run.dir, s, variant, opts) for s in stage.pending_shards(run, variant, opts)]
        stage.finalize(run, variant, opts)
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from fyp.models.flux_fill import build_pipeline

    run_dir = tmp_path_factory.mktemp("eval") / "run"
    run = create_run(run_dir, "toy", {"eval": {"samples": ITEMS}, "data": {"samples": 4}})
    pipe = build_pipeline(run.config.model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in pipe.transformer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    pipe.transformer.save_pretrained(run_dir / "train" / "single" / "transformer")
    counts = _run_stage(run, {"model": "all"})
    return run, counts


def test_eval_writes_summary_with_baseline_and_aligned_rows(evaluated):
    run, counts = evaluated
    assert set(counts) == {"synthetic/baseline", "synthetic/single"}
    assert sum(c["done"] for c in counts["synthetic/single"]) == ITEMS
    with (run.dir / "eval" / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["model", "benchmark", "metric", "mean", "ci_low", "ci_high", "n"]
    rows = [r for r in rows if r["benchmark"] == "synthetic"]  # a later test adds rorem rows to the run
    models = {r["model"] for r in rows}
    assert models == {"baseline", "single"}
    metrics = {r["metric"] for r in rows if r["model"] == "single"}
    assert {"brightness", "psnr_kept", "mse_kept", "lpips_kept", "hole_luminance", "hole_edge_density",
            "hole_colourfulness"} <= metrics
    for r in rows:
        assert int(r["n"]) == ITEMS and float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
    table = (run.dir / "eval" / "table.md").read_text()
    assert "| baseline |" in table and "| single |" in table and "**" in table


def test_eval_store_holds_blended_results_and_metrics(evaluated):
    run, _ = evaluated
    store = run.store("r")
    base, aligned = store.eval("synthetic", "baseline")["image"][:], store.eval("synthetic", "single")["image"][:]
    assert base.shape == (ITEMS, 32, 32, 3) and base.dtype == np.uint8
    assert not np.array_equal(base, aligned)  # only the transformer differs, and it was perturbed
    from fyp.data.synthetic import SyntheticReader

    sample = SyntheticReader(32, seed=run.config.seed, split="heldout")[0]
    far = np.ones((32, 32), bool)
    ys, xs = np.nonzero(sample.mask)
    far[max(0, ys.min() - 11):ys.max() + 12, max(0, xs.min() - 11):xs.max() + 12] = False
    assert np.array_equal(base[0][far], sample.image[far])  # blended: the original outside the feathered band
    assert store.eval("synthetic", "baseline")["id"][0] == "heldout-000000"  # the held-out split, never trained on
    brightness = store.eval("synthetic", "single").part("metrics")["brightness"][:]
    assert brightness.shape == (ITEMS,) and np.isfinite(brightness).all()
    # same seed for every model, recorded per item
    assert np.array_equal(store.eval("synthetic", "baseline")["seed"][:], store.eval("synthetic", "single")["seed"][:])


def test_eval_rerun_skips_done_shards(evaluated):
    run, _ = evaluated
    stage = get_stage("eval")
    assert stage.pending_shards(run, "synthetic/baseline", {"model": "all"}) == []
    counts = execute_shard("eval", run.dir, 0, "synthetic/baseline", {"model": "all"})
    assert counts["done"] == 0 and counts["skipped"] > 0


def _training_and_pairs_outputs(run_dir):
    """The trainer's metrics.csv (its own column list) and the pairs stage's heatmap (its own writer)."""
    from fyp.dpo.train import CSV_FIELDS
    from fyp.pairs.report import save_heatmap

    folder = run_dir / "train" / "single"
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for step in range(3):
            writer.writerow({k: (step if k == "step" else 1.0 / (step + 1)) for k in CSV_FIELDS})
    save_heatmap(run_dir / "pairs" / "ensemble" / "agreement.png", ["clipscore", "hpsv2"],
                 np.array([[1.0, 0.3], [0.3, 1.0]]), "reward agreement")


def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    run, _ = evaluated
    _training_and_pairs_outputs(run.dir)
    path = build_report(run.dir)
    text = path.read_text()
    assert "src=\"data:image/png;base64," in text and "file://" not in text and "<table" in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed: run scripts/install_browser.sh"
    shot = tmp_path / "shot.png"
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
              "--window-size=1400,2400"]
    proc = subprocess.run(common + [f"--screenshot={shot}", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = subprocess.run(common + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr  # no script or console errors
    html = dom.stdout
    assert html.count("<table") >= 2 and html.count("<img") >= 6
    assert "image grid synthetic" in html and "masked input" in html
    assert ">single<" in html and ">baseline<" in html
    assert 'alt="agreement ensemble"' in html and 'alt="training curve loss"' in html
    assert 'alt="bias hole_luminance"' in html and 'alt="distribution brightness synthetic"' in html


def test_missing_checkpoint_is_a_clear_error(evaluated):
    run, _ = evaluated
    stage = get_stage("eval")
    with pytest.raises(EvalError, match="does not exist"):
        stage.variants(run, {"model": str(run.dir / "train" / "nope" / "transformer")})
    with pytest.raises(EvalError, match="needs its folder"):
        stage.variants(run, {"benchmark": "rorem", "model": "baseline"}) and stage.num_shards(
            run, {"benchmark": "rorem", "model": "baseline"})


def test_a_transformer_of_another_model_is_a_clear_error(evaluated, tmp_path):
    """A trained transformer replaces the base one, which is not loaded; its width is checked against
    the run's VAE (FLUX Fill's in_channels = 8 C + 4 s^2)."""
    from diffusers import FluxTransformer2DModel

    from fyp.evaluation.stage import _pipeline
    from fyp.evaluation.targets import targets

    run, _ = evaluated
    trained = run.dir / "train" / "single" / "transformer"
    config = dict(FluxTransformer2DModel.load_config(trained))
    wrong = tmp_path / "wide" / "transformer"
    FluxTransformer2DModel.from_config({**config, "in_channels": config["in_channels"] + 4}).save_pretrained(wrong)
    (target,) = targets(run, {"model": str(wrong)})
    with pytest.raises(EvalError, match=f"has {config['in_channels'] + 4} input channels but this run's model "
                                        f"has {config['in_channels']}"):
        _pipeline(run, target)
    (good,) = targets(run, {"model": str(trained)})
    pipe = _pipeline(run, good)
    assert pipe.transformer.config.in_channels == config["in_channels"]


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_rorem_with_a_missing_file_counts_it_and_scores_the_rest(evaluated, tmp_path):
    run, _ = evaluated
    rng = np.random.default_rng(0)
    folder = tmp_path / "rorem"
    for name in ("a", "b", "c"):
        image = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        _png(folder / "source" / f"{name}.png", image)
        if name != "b":  # b's mask is missing
            _png(folder / "mask" / f"{name}.png", mask)
        _png(folder / "GT" / f"{name}.png", image)
    opts = {"benchmark": "rorem", "model": "baseline", "data": str(folder), "eval_shards": 1}
    counts = _run_stage(run, opts)["rorem/baseline"][0]
    assert counts["done"] == 2 and counts["invalid"] == 1 and counts["failed"] == 0
    store = Run.open(run.dir).store("r")
    valid = store.eval("rorem", "baseline")["valid"][:]
    assert valid.tolist() == [True, False, True]
    assert str(store.eval("rorem", "baseline")["reason"][1]).startswith("missing file: mask")
    for metric in ("psnr_bg", "psnr_gt", "lpips_gt", "clip_sim_gt"):
        values = store.eval("rorem", "baseline").part("metrics")[metric][:]
        assert np.isfinite(values[[0, 2]]).all() and np.isnan(values[1]), metric
    rows = list(csv.DictReader((run.dir / "eval" / "summary.csv").open()))
    assert any(r["benchmark"] == "rorem" and r["metric"] == "psnr_bg" and r["n"] == "2" for r in rows)


def test_cli_reports_bad_model_and_missing_benchmark_folder_on_one_line(evaluated):
    import sys

    run, _ = evaluated
    for extra, message in ((["--model", str(run.dir / "nope")], "does not exist"),
                           (["--benchmark", "rorem", "--model", "baseline"], "needs its folder")):
        proc = subprocess.run([sys.executable, "-m", "hpc.submit", "eval", "--run", str(run.dir), *extra],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0]
