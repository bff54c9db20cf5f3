"""BrushBench: `mapping_file.json` = {id: {image, caption, inpainting_mask, outpainting_mask}}.

`image` is a path relative to the mapping file's folder. The masks are run-length encodings as in
the BrushNet evaluation code: 1-based start/length pairs over the pixels flattened ROW-major, 1 = hole.
They are decoded at the image's own size (512x512 in the released benchmark). Items keep the file's order.
"""
from __future__ import annotations

import json
from typing import get_args

from ..config import MaskKind
from .base import Reader, ReaderError
from .paths import inside, resolve_in_folder
from .rle import RLEError, rle_decode
from .sample import REASON_BAD_RECORD, REASON_BAD_RLE, REASON_MISSING_PROMPT, BadSample, Sample
from .transforms import decode_image, fit_pair

MASK_KINDS = get_args(MaskKind)  # the allowed values live in fyp.config


class BrushBenchReader(Reader):
    kind = "brushbench"

    def __init__(self, path: str, resolution: int, mask_kind: str = "inpainting"):
        super().__init__(resolution)
        if mask_kind not in MASK_KINDS:
            raise ReaderError(f"brushbench mask_kind must be one of {', '.join(MASK_KINDS)}, got {mask_kind!r}")
        self.mask_key = f"{mask_kind}_mask"
        self.root, self.mapping_file = resolve_in_folder(path, "mapping_file.json", "brushbench")
        try:
            mapping = json.loads(self.mapping_file.read_text())
        except ValueError as exc:
            raise ReaderError(f"brushbench: {self.mapping_file} is not valid JSON ({exc})") from None
        if not isinstance(mapping, dict) or not mapping:
            raise ReaderError(f"brushbench: {self.mapping_file} must be a non-empty JSON object of id -> item")
        self.items = list(mapping.items())

    def __len__(self) -> int:
        return len(self.items)

    def item_id(self, index: int) -> str:
        return str(self.items[index][0])

    def load(self, index: int) -> Sample:
        key, item = self.items[index]
        if not isinstance(item, dict) or "image" not in item or self.mask_key not in item:
            raise BadSample(REASON_BAD_RECORD, f"item {key} lacks 'image' or '{self.mask_key}'")
        prompt = item.get("caption")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadSample(REASON_MISSING_PROMPT, f"item {key} has no caption")
        if not isinstance(item["image"], str):
            raise BadSample(REASON_BAD_RECORD, f"item {key}: 'image' must be a path, got {item['image']!r}")
        image = decode_image(path=inside(self.root, item["image"], "image"), what="image")
        try:
            mask = rle_decode(item[self.mask_key], (image.height, image.width), order="C")
        except RLEError as exc:
            raise BadSample(REASON_BAD_RLE, f"{self.mask_key} of {key} {exc}") from None
        image_array, mask_array = fit_pair(image, mask, self.resolution)
        return Sample(image=image_array, mask=mask_array, prompt=prompt.strip(), id=str(key))
