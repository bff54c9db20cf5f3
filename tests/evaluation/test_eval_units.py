"""Blending, pixel metrics, bootstrap summary and tables of the eval package (no models)."""
import math

import numpy as np
import pytest

from fyp.evaluation.blend import SIGMA, blend, blend_weights, blur21, gaussian_kernel
from fyp.evaluation.pixels import PSNR_CAP, colourfulness, hole_statistics, kept_metrics, removal_metrics
from fyp.evaluation.summary import bootstrap_ci, read_summary, rows_to_csv, summarize
from fyp.evaluation.tables import build_table, to_csv, to_markdown


def test_gaussian_kernel_matches_opencv_sigma():
    k = gaussian_kernel()
    assert k.shape == (21,) and abs(k.sum() - 1) < 1e-12 and SIGMA == pytest.approx(3.5)
    assert k[10] == k.max() and k[0] == pytest.approx(k[20])


def test_blend_weights_hole_band_and_far_field():
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 24:40] = 1
    b = blend_weights(mask)
    assert np.all(b[mask == 1] == 1.0)
    assert b[10, 32] == 0.0 or b[10, 32] < 1e-6  # 14 px from the hole: outside the 10 px kernel radius
    assert 0.2 < b[22, 32] < 1.0  # 2 px outside: cross-fade
    assert b[20, 32] < b[22, 32]  # decreasing away from the hole
    gen = np.full((64, 64, 3), 200, np.uint8)
    orig = np.full((64, 64, 3), 10, np.uint8)
    out = blend(gen, orig, mask)
    assert np.all(out[mask == 1] == 200) and np.all(out[:8, :8] == 10)


def test_blur_is_separable_gaussian_with_reflect101_borders():
    m = np.zeros((30, 30), np.float32)
    m[0, 0] = 1
    out = blur21(m)
    k = gaussian_kernel()
    # a corner impulse reflects without repeating the edge: weight at (0,0) is k[10]^2
    assert out[0, 0] == pytest.approx(k[10] ** 2, rel=1e-5)
    assert out.sum() < 1.0


def test_blend_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mask"):
        blend(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4)))


def test_kept_psnr_and_cap():
    orig = np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    res = orig.copy()
    res[mask == 1] = 0  # only the hole differs: kept region is exact
    assert kept_metrics(res, orig, mask)["psnr_kept"] == PSNR_CAP
    res2 = orig.astype(int)
    res2[0, 0, 0] = (res2[0, 0, 0] + 51) % 256
    m = kept_metrics(res2.astype(np.uint8), orig, mask)
    expected_mse = ((abs(int(res2[0, 0, 0]) - int(orig[0, 0, 0])) / 255) ** 2) / ((256 - 16) * 3)
    assert m["mse_kept"] == pytest.approx(expected_mse, rel=1e-4)
    assert m["psnr_kept"] == pytest.approx(10 * math.log10(1 / expected_mse), rel=1e-4)
    assert math.isnan(kept_metrics(res, orig, np.ones((16, 16)))["mse_kept"])
    r = removal_metrics(orig, orig, mask)
    assert r["psnr_bg"] == PSNR_CAP and r["psnr_gt"] == PSNR_CAP


def test_hole_statistics():
    grey = np.full((20, 20, 3), 128, np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    s = hole_statistics(grey, mask)
    assert s["hole_colourfulness"] == 0.0 and s["hole_edge_density"] == 0.0
    assert s["hole_luminance"] == pytest.approx(128 / 255, rel=1e-5)
    stripes = grey.copy()
    stripes[:, (np.arange(20) // 3) % 2 == 0] = (255, 0, 0)  # 3-px stripes: Sobel sees their edges
    s2 = hole_statistics(stripes, mask)
    assert s2["hole_edge_density"] > 0.3 and s2["hole_colourfulness"] > 50
    assert colourfulness(np.array([[255, 0, 0]] * 4)) == pytest.approx(0.3 * math.hypot(255, 127.5))
    assert math.isnan(hole_statistics(grey, np.zeros((20, 20)))["hole_luminance"])


def test_bootstrap_interval_reproducible_and_brackets_mean():
    v = np.random.default_rng(1).normal(5, 1, 200)
    mean, lo, hi, n = bootstrap_ci(np.append(v, np.nan), label="x")
    assert n == 200 and lo < mean < hi and hi - lo < 0.5
    assert bootstrap_ci(v, label="x") == bootstrap_ci(v, label="x")
    assert bootstrap_ci([3.0]) == (3.0, 3.0, 3.0, 1)
    assert bootstrap_ci([np.nan])[3] == 0


def test_summary_csv_roundtrip_and_table_marks(tmp_path):
    rows = summarize("baseline", "synthetic", {"clipscore": np.array([1.0, 2.0]), "lpips_kept": np.array([0.5, 0.5])})
    rows += summarize("aligned", "synthetic", {"clipscore": np.array([3.0, 4.0]), "lpips_kept": np.array([0.7, 0.7]),
                                               "hole_luminance": np.array([0.2, 0.4])})
    path = tmp_path / "summary.csv"
    path.write_text(rows_to_csv(rows))
    back = read_summary(path)
    assert path.read_text().splitlines()[0] == "model,benchmark,metric,mean,ci_low,ci_high,n"
    assert [(r["model"], r["metric"], r["n"]) for r in back][:2] == [("baseline", "clipscore", 2), ("baseline", "lpips_kept", 2)]
    table = build_table(back)
    assert table["models"] == ["baseline", "aligned"]
    assert table["best"][("synthetic", "clipscore")] == "aligned"
    assert table["best"][("synthetic", "lpips_kept")] == "baseline"  # lower is better
    assert table["delta"][("aligned", ("synthetic", "clipscore"))] == pytest.approx(2.0)
    md = to_markdown(table)
    assert "**3.5** (+2)" in md and "**0.5**" in md
    assert to_csv(table).splitlines()[-1].startswith("best,")
    bias = build_table(back, bias=True)
    assert bias["columns"] == [("synthetic", "hole_luminance")] and not bias["best"]
