"""Decoding and the one resize/crop rule every reader applies.

Rule (documented in docs/data.md): scale so the shorter side is exactly R (the preset's resolution),
keeping the aspect ratio (the longer side is rounded to the nearest pixel, at least R), then crop the
centre RxR (offsets floor((W' - R) / 2), floor((H' - R) / 2)). The image is resampled bicubic; the
mask nearest-neighbour, from a binary 0/1 mask, so it stays binary; it is re-binarised anyway.
An image already RxR is passed through untouched.

High bit depths (documented in docs/data.md): 16-bit greyscale (PIL modes I;16*, and I, which PIL uses for
16- and 32-bit integer images) is scaled to 8 bits as round(v * 255 / 65535) (v / 257), not clipped at 255
(PIL's own `convert` clips: a 16-bit image came out white); integer values beyond 16 bits scale by the
image's maximum. Float images (mode F) are taken as 0-1 when their maximum is <= 1, as 0-255 when <= 255,
else as 16-bit. NaN reads as 0.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .sample import (REASON_CORRUPT_IMAGE, REASON_EMPTY_MASK, REASON_FULL_MASK, REASON_MASK_SIZE,
                     REASON_MISSING_FILE, BadSample, one_line)

# Refuse images above ~268 Mpixel rather than let PIL raise a bomb error mid-shard with a vague text.
MAX_PIXELS = 1 << 28


def _open(source) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(source)
        if image.width * image.height > MAX_PIXELS:
            raise BadSample(REASON_CORRUPT_IMAGE, f"{image.width}x{image.height} is above {MAX_PIXELS} pixels")
        image.load()  # decode now: truncated data raises here, not later
    return image


HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _full_scale(image: Image.Image, values: np.ndarray) -> float:
    """The value that maps to 255: the top of the mode's range (see the module's notes)."""
    top = float(values.max(initial=0.0))
    if image.mode == "F":
        return 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else max(65535.0, top)
    return max(65535.0, top)


def to_8bit(image: Image.Image) -> Image.Image:
    """A high-bit-depth greyscale image as 8-bit 'L', scaled (not clipped); any other mode unchanged."""
    if image.mode not in HIGH_BIT_MODES:
        return image
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scaled = np.clip(values, 0.0, None) * (255.0 / _full_scale(image, values))
    return Image.fromarray(np.rint(np.clip(scaled, 0, 255)).astype(np.uint8), mode="L")


def decode_image(data: bytes | None = None, path: Path | None = None, what: str = "image") -> Image.Image:
    """An RGB PIL image from bytes or a file; BadSample(corrupt image / missing file) otherwise."""
    if path is not None and not Path(path).is_file():
        raise BadSample(REASON_MISSING_FILE, f"{what} {path}")
    try:
        image = _open(io.BytesIO(data) if data is not None else path)
        return to_8bit(image).convert("RGB")
    except BadSample:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        where = f" {Path(path).name}" if path is not None else ""
        raise BadSample(REASON_CORRUPT_IMAGE, one_line(f"{what}{where}: {exc}")) from None


def decode_mask_image(path: Path, threshold: int = 127, what: str = "mask") -> np.ndarray:
    """A mask image (any mode) as uint8 0/1: 1 where the grey level is above `threshold` (white = hole).

    A mask whose largest grey level is 1 is a 0/1 mask, not a 0/255 one: there 1 = hole.
    """
    if not Path(path).is_file():
        raise BadSample(REASON_MISSING_FILE, f"{what} {path}")
    try:
        image = _open(path)
    except BadSample:
        raise
    except Exception as exc:
        raise BadSample(REASON_CORRUPT_IMAGE, one_line(f"{what} {Path(path).name}: {exc}")) from None
    if image.mode in HIGH_BIT_MODES:  # 16-bit masks: 0/1 stays a 0/1 mask, 0/65535 scales to 0/255
        raw = np.asarray(image)
        if np.nanmax(raw, initial=0) == 1:
            return (np.nan_to_num(raw) > 0).astype(np.uint8)
        return (np.asarray(to_8bit(image)) > threshold).astype(np.uint8)  # scaled: 0/1 now means dark grey
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")  # drop alpha, judge by colour
    grey = np.asarray(image.convert("L"))
    if grey.max(initial=0) == 1:  # a 0/1 mask (not 0/255): every nonzero pixel is a hole
        return (grey > 0).astype(np.uint8)
    return (grey > threshold).astype(np.uint8)


def fit_box(width: int, height: int, resolution: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(resized size (W', H'), crop box (left, top, right, bottom)) of the resize/crop rule."""
    scale = resolution / min(width, height)
    new_w = resolution if width <= height else max(resolution, round(width * scale))
    new_h = resolution if height <= width else max(resolution, round(height * scale))
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return (new_w, new_h), (left, top, left + resolution, top + resolution)


def fit_image(image: Image.Image, resolution: int) -> np.ndarray:
    """RGB PIL image -> uint8 [R,R,3] by the resize/crop rule (bicubic)."""
    if image.size != (resolution, resolution):
        size, box = fit_box(image.width, image.height, resolution)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        image = image.crop(box)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def fit_mask(mask: np.ndarray, resolution: int) -> np.ndarray:
    """0/1 uint8 [H,W] -> 0/1 uint8 [R,R] by the resize/crop rule (nearest), re-binarised."""
    height, width = mask.shape
    if (width, height) != (resolution, resolution):
        size, box = fit_box(width, height, resolution)
        pil = Image.fromarray((mask != 0).astype(np.uint8) * 255, mode="L")
        if pil.size != size:
            pil = pil.resize(size, Image.Resampling.NEAREST)
        mask = np.asarray(pil.crop(box))
    return (np.asarray(mask) > 0).astype(np.uint8)


def fit_pair(image: Image.Image, mask: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Check the mask matches the image, apply the rule to both, refuse empty or full masks."""
    if mask.shape != (image.height, image.width):
        raise BadSample(REASON_MASK_SIZE,
                        f"mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but the image is {image.height}x{image.width}")
    out_image, out_mask = fit_image(image, resolution), fit_mask(mask, resolution)
    check_mask(out_mask, after_crop=(image.width, image.height) != (resolution, resolution))
    return out_image, out_mask


def check_mask(mask: np.ndarray, after_crop: bool = False) -> None:
    where = " after resize/crop" if after_crop else ""
    holes = int(np.count_nonzero(mask))
    if holes == 0:
        raise BadSample(REASON_EMPTY_MASK, f"no hole pixels{where}")
    if holes == mask.size:
        raise BadSample(REASON_FULL_MASK, f"every pixel is a hole{where}")
