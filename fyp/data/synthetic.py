"""Procedural samples for the embedded default: coloured shapes on a two-colour gradient.

Each sample is a pure function of (seed, split, index): 1-2 shapes (circle, square, triangle,
diamond) in named colours on a linear gradient between two named colours, and a prompt that says
exactly that ("a red circle and a small green square on a blue-to-white vertical gradient"). The mask
(1 = hole) covers the first shape named, as a box or an ellipse around it with a margin, so the hole
always holds something the prompt describes. Drawn directly at the resolution (no resize).
"train" and "heldout" draw from different seed streams and carry different ids.
"""
from __future__ import annotations

import numpy as np

from .base import Reader, ReaderError
from .sample import Sample

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 170), "pink": (245, 135, 185), "cyan": (50, 200, 210),
    "brown": (130, 80, 40), "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "diamond")
DIRECTIONS = ("horizontal", "vertical", "diagonal")
MASK_KINDS = ("box", "ellipse")
SPLITS = {"train": (0, 10_000), "heldout": (1, 1_000)}  # split -> (seed stream, number of samples)


def _shape_mask(kind: str, cx: float, cy: float, r: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    dx, dy = xs - cx, ys - cy
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    # triangle pointing up: apex (cx, cy - r), base at cy + 0.8 r, half-width r at the base
    depth = (dy + r) / (1.8 * r)
    return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * r)


class SyntheticReader(Reader):
    kind = "synthetic"

    def __init__(self, resolution: int, seed: int = 0, split: str = "train", size: int | None = None):
        super().__init__(resolution)
        if split not in SPLITS:
            raise ReaderError(f"synthetic split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.seed, self.split = int(seed), split
        self.stream, default_size = SPLITS[split]
        self.size = default_size if size is None else int(size)

    def __len__(self) -> int:
        return self.size

    def item_id(self, index: int) -> str:
        return f"{self.split}-{index:06d}"

    def load(self, index: int) -> Sample:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.stream, index]))
        res = self.resolution
        names = list(COLOURS)
        bg = rng.choice(len(names), size=2, replace=False)
        direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
        ys, xs = np.mgrid[0:res, 0:res].astype(np.float32) + 0.5
        t = {"horizontal": xs / res, "vertical": ys / res, "diagonal": (xs + ys) / (2 * res)}[direction]
        c0, c1 = (np.array(COLOURS[names[i]], np.float32) for i in bg)
        image = (1 - t)[..., None] * c0 + t[..., None] * c1

        shapes = []
        fg_choices = [i for i in range(len(names)) if i not in bg]
        for _ in range(1 + int(rng.random() < 0.5)):
            kind = SHAPES[rng.integers(len(SHAPES))]
            colour = names[fg_choices[rng.integers(len(fg_choices))]]
            r = float(rng.uniform(0.12, 0.26)) * res
            # A second shape may overlap the first but not hide it: retry a few placements.
            for _attempt in range(8):
                cx, cy = (float(v) for v in rng.uniform(r, res - r, size=2))
                inside = _shape_mask(kind, cx, cy, r, xs, ys)
                if not shapes or (inside & first).sum() <= 0.25 * first.sum():
                    break
            if not shapes:
                first = inside
            image[inside] = COLOURS[colour]
            size_word = "small " if r < 0.16 * res else ("large " if r > 0.22 * res else "")
            shapes.append((kind, colour, size_word, cx, cy, r))

        # The hole covers the first shape (drawn first, possibly partly under the second).
        kind, colour, _, cx, cy, r = shapes[0]
        margin = max(2.0, 0.06 * res)
        half = r + margin
        mask_kind = MASK_KINDS[rng.integers(len(MASK_KINDS))]
        if mask_kind == "box":
            mask = (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
        else:
            mask = ((xs - cx) / (1.15 * half)) ** 2 + ((ys - cy) / (1.15 * half)) ** 2 <= 1

        described = " and ".join(f"a {size}{col} {shape}" for shape, col, size, *_ in shapes)
        prompt = f"{described} on a {names[bg[0]]}-to-{names[bg[1]]} {direction} gradient"
        return Sample(image=np.clip(np.rint(image), 0, 255).astype(np.uint8), mask=mask.astype(np.uint8),
                      prompt=prompt, id=self.item_id(index))
