"""Run-length encoded masks as the inpainting datasets store them.

Both BrushData and BrushBench store a mask as a flat list `[start_1, length_1, start_2, length_2, ...]`
of the runs of 1 (hole) pixels, with 1-based starts, over the pixels of an HxW image flattened either
column by column (BrushData: order "F", column-major) or row by row (BrushBench: order "C",
row-major). The same list decodes to a transposed-looking mask under the wrong order, so the order is
always explicit here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ORDERS = {"C": "row-major", "F": "column-major"}


class RLEError(ValueError):
    """A run-length encoding that cannot be decoded to the given shape."""


def _to_int(value) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise RLEError(f"holds a boolean ({value!r}), not an integer")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise RLEError(f"holds {value!r}, which is not an integer")


def _as_runs(rle) -> np.ndarray:
    if isinstance(rle, str):
        parts = rle.split()
    elif isinstance(rle, (Sequence, np.ndarray)):
        parts = list(rle)
    else:
        raise RLEError(f"expected a list of integers or a string, got {type(rle).__name__}")
    runs = np.asarray([_to_int(p) for p in parts], dtype=np.int64)
    if runs.size % 2:
        raise RLEError(f"has an odd number of values ({runs.size}); expected start/length pairs")
    return runs.reshape(-1, 2)


def rle_decode(rle, shape: tuple[int, int], order: str, one_based: bool = True) -> np.ndarray:
    """Decode to a uint8 mask of `shape` (H, W), 1 inside the runs. Raises RLEError on bad input."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    height, width = int(shape[0]), int(shape[1])
    if height <= 0 or width <= 0:
        raise RLEError(f"cannot decode to shape {height}x{width}")
    total = height * width
    runs = _as_runs(rle)
    starts = runs[:, 0] - (1 if one_based else 0)
    lengths = runs[:, 1]
    ends = starts + lengths
    if (starts < 0).any():
        raise RLEError(f"has a start below {1 if one_based else 0}")
    if (lengths < 0).any():
        raise RLEError("has a negative run length")
    if (ends > total).any():
        raise RLEError(f"has a run ending at pixel {int(ends.max())}, past the {height}x{width} = {total} pixels")
    # Mark run starts +1 and ends -1; a positive running sum means "inside a run" (overlaps tolerated).
    edges = np.zeros(total + 1, np.int64)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    flat = (np.cumsum(edges[:-1]) > 0).astype(np.uint8)
    return flat.reshape((height, width), order=order)


def rle_encode(mask: np.ndarray, order: str, one_based: bool = True) -> list[int]:
    """Inverse of `rle_decode`: the runs of nonzero pixels of a 2-D mask."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    flat = (np.asarray(mask) != 0).astype(np.int8).ravel(order=order)
    padded = np.concatenate([[0], flat, [0]])
    changes = np.flatnonzero(np.diff(padded))
    starts, ends = changes[0::2], changes[1::2]
    out = np.empty(2 * starts.size, np.int64)
    out[0::2] = starts + (1 if one_based else 0)
    out[1::2] = ends - starts
    return out.tolist()
