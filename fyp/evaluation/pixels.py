"""Pixel metrics of one result against a reference, and the bias study's pixel statistics of the hole.

Images are uint8 [H,W,3], masks [H,W] with 1 = hole. Values are on the [0,1] scale.

- Kept-region MSE / PSNR (BrushNet's evaluation): squared error over the kept pixels (mask 0) and their three
  channels, divided by their count; PSNR = 10 log10(1 / MSE). An exact match (MSE < 1e-10) is reported as
  PSNR_CAP = 100 dB instead of infinity, so means stay finite. A mask with no kept pixel gives NaN.
- Object removal: PSNR-BG is the same PSNR on the background (kept) region but against the ground truth;
  PSNR-GT (whole image) is reported beside it.
- Bias statistics over the hole: mean luminance (Rec. 709, 0..1, the brightness reward's formula); edge
  density = fraction of hole pixels whose Sobel gradient magnitude of the luminance exceeds EDGE_THRESHOLD
  (gradients are taken on the whole image, so the hole's border with the kept region counts as an edge where
  it is one); colourfulness (Hasler & Suesstrunk 2003): rg = R - G, yb = (R + G) / 2 - B over the hole
  pixels (0..255 scale, as in the paper), C = sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2).
"""
from __future__ import annotations

import math

import numpy as np

PSNR_CAP = 100.0
MSE_FLOOR = 1e-10
EDGE_THRESHOLD = 0.25  # Sobel magnitude on 0..1 luminance (a 0 -> 1 step gives 4): clear edges, not noise
LUMA = np.array((0.2126, 0.7152, 0.0722), np.float32)


def _unit(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0


def region_mse(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Mean squared error over the pixels where `region` is true (all channels), [0,1] scale; NaN if empty."""
    region = np.asarray(region, bool)
    count = int(region.sum())
    if count == 0:
        return math.nan
    diff = (_unit(a) - _unit(b))[region]
    return float((diff * diff).mean())


def psnr_from_mse(mse: float) -> float:
    if not math.isfinite(mse):
        return math.nan
    return PSNR_CAP if mse < MSE_FLOOR else min(PSNR_CAP, 10.0 * math.log10(1.0 / mse))


def kept_metrics(result: np.ndarray, original: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """mse_kept and psnr_kept: the result against the original where the mask keeps the original."""
    mse = region_mse(result, original, np.asarray(mask) == 0)
    return {"mse_kept": mse, "psnr_kept": psnr_from_mse(mse)}


def removal_metrics(result: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Object removal against the ground truth: psnr_bg (background region) and psnr_gt (whole image)."""
    whole = np.ones(np.asarray(mask).shape, bool)
    return {"psnr_bg": psnr_from_mse(region_mse(result, target, np.asarray(mask) == 0)),
            "psnr_gt": psnr_from_mse(region_mse(result, target, whole))}


def luminance(image: np.ndarray) -> np.ndarray:
    """[H,W] Rec. 709 luminance in 0..1."""
    return _unit(image) @ LUMA


def sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    """|grad| of a [H,W] image with 3x3 Sobel kernels and edge-replicated borders."""
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.sqrt(gx * gx + gy * gy)


def colourfulness(pixels: np.ndarray) -> float:
    """Hasler-Suesstrunk colourfulness of uint8 pixels [P,3] (0..255 scale); NaN for no pixels."""
    p = np.asarray(pixels, dtype=np.float64).reshape(-1, 3)
    if p.shape[0] == 0:
        return math.nan
    rg = p[:, 0] - p[:, 1]
    yb = 0.5 * (p[:, 0] + p[:, 1]) - p[:, 2]
    return float(math.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


BIAS_STATS = ("hole_luminance", "hole_edge_density", "hole_colourfulness")


def hole_statistics(result: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The bias study's pixel statistics of the generated hole (NaN for an empty hole)."""
    hole = np.asarray(mask) > 0
    if not hole.any():
        return {name: math.nan for name in BIAS_STATS}
    gray = luminance(result)
    return {"hole_luminance": float(gray[hole].mean()),
            "hole_edge_density": float((sobel_magnitude(gray)[hole] > EDGE_THRESHOLD).mean()),
            "hole_colourfulness": colourfulness(np.asarray(result)[hole])}
