"""EditBench (Imagen Editor's benchmark, 240 images at 1024x1024) in its released folder layout:

    annotations_natural.csv, annotations_generated.csv   columns: aos, prompt_full, prompt_mask-simple,
                                                          prompt_mask-rich (others ignored)
    references_natural/<aos>.png, references_generated/<aos>.png     the images
    masks_natural/<aos>.png,      masks_generated/<aos>.png          white (grey > 127) = hole

Natural rows come first, then generated, each in file order; ids are `natural-<aos>` /
`generated-<aos>`. `prompt_kind` picks the prompt column: mask-simple, mask-rich or full. A part whose
CSV is absent is skipped; with neither present the reader refuses to start.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import get_args

from ..config import PromptKind
from .base import Reader, ReaderError
from .paths import inside
from .sample import REASON_BAD_RECORD, REASON_MISSING_PROMPT, BadSample, Sample
from .transforms import decode_image, decode_mask_image, fit_pair

PROMPT_KINDS = get_args(PromptKind)  # the allowed values live in fyp.config
PARTS = ("natural", "generated")


class EditBenchReader(Reader):
    kind = "editbench"

    def __init__(self, path: str, resolution: int, prompt_kind: str = "mask-simple"):
        super().__init__(resolution)
        if prompt_kind not in PROMPT_KINDS:
            raise ReaderError(f"editbench prompt_kind must be one of {', '.join(PROMPT_KINDS)}, got {prompt_kind!r}")
        if not path or not Path(path).expanduser().is_dir():
            raise ReaderError(f"editbench needs data.path = the EditBench folder; {path!r} is not a folder")
        self.root = Path(path).expanduser()
        self.column = f"prompt_{prompt_kind}"
        self.rows: list[tuple[str, dict]] = []
        for part in PARTS:
            table = self.root / f"annotations_{part}.csv"
            if table.is_file():
                with open(table, newline="", encoding="utf-8") as handle:
                    reader = csv.DictReader(handle)
                    if "aos" not in (reader.fieldnames or []):
                        raise ReaderError(f"editbench: {table} has no 'aos' column (columns: {reader.fieldnames})")
                    self.rows.extend((part, row) for row in reader)
        if not self.rows:
            raise ReaderError(f"editbench: no annotations_natural.csv / annotations_generated.csv rows in {self.root}")

    def __len__(self) -> int:
        return len(self.rows)

    def item_id(self, index: int) -> str:
        part, row = self.rows[index]
        return f"{part}-{row['aos']}"

    def load(self, index: int) -> Sample:
        part, row = self.rows[index]
        aos = (row.get("aos") or "").strip()
        if not aos:
            raise BadSample(REASON_BAD_RECORD, f"row {index} of annotations_{part}.csv has no aos")
        prompt = (row.get(self.column) or "").strip()
        if not prompt:
            raise BadSample(REASON_MISSING_PROMPT, f"{part}-{aos} has no {self.column}")
        image = decode_image(path=inside(self.root, f"references_{part}/{aos}.png", "image"), what="image")
        mask = decode_mask_image(inside(self.root, f"masks_{part}/{aos}.png", "mask"))
        image_array, mask_array = fit_pair(image, mask, self.resolution)
        return Sample(image=image_array, mask=mask_array, prompt=prompt, id=self.item_id(index))
