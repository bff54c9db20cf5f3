"""RORem object removal: `source/`, `mask/`, `GT/` PNGs and `meta.json`, empty prompt.

`meta.json` is a list of `{"source": "source/x.png", "mask": "mask/x.png", "GT": "GT/x.png", ...}`
with paths relative to its folder (a dict of such entries is accepted too). Without `meta.json`,
every file in `source/` is paired with the same name in `mask/` and `GT/`. Masks: grey > 127 = hole
(the object to remove). The ground truth (object removed) comes back as `Sample.target`, resized and
cropped exactly like the image; a sample without a readable GT of the image's size is invalid, since
the benchmark scores against it. The prompt is always "" (valid for this dataset). Id = source file stem.
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import Reader, ReaderError
from .paths import inside
from .sample import REASON_BAD_RECORD, REASON_TARGET_SIZE, BadSample, Sample
from .transforms import decode_image, decode_mask_image, fit_image, fit_pair

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


class RORemReader(Reader):
    kind = "rorem"

    def __init__(self, path: str, resolution: int):
        super().__init__(resolution)
        if not path or not Path(path).expanduser().is_dir():
            raise ReaderError(f"rorem needs data.path = a folder with source/, mask/, GT/; {path!r} is not a folder")
        self.root = Path(path).expanduser()
        meta = self.root / "meta.json"
        if meta.is_file():
            try:
                entries = json.loads(meta.read_text())
            except ValueError as exc:
                raise ReaderError(f"rorem: {meta} is not valid JSON ({exc})") from None
            self.entries = list(entries.values()) if isinstance(entries, dict) else list(entries)
        elif (self.root / "source").is_dir():
            self.entries = [{"source": f"source/{p.name}", "mask": f"mask/{p.name}", "GT": f"GT/{p.name}"}
                            for p in sorted((self.root / "source").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise ReaderError(f"rorem: {self.root} has neither meta.json nor a source/ folder")
        if not self.entries:
            raise ReaderError(f"rorem: no samples in {self.root}")

    def __len__(self) -> int:
        return len(self.entries)

    def item_id(self, index: int) -> str:
        entry = self.entries[index]
        source = entry.get("source") if isinstance(entry, dict) else None
        return Path(source).stem if isinstance(source, str) else f"rorem-{index:08d}"

    def load(self, index: int) -> Sample:
        entry = self.entries[index]
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("source", "mask", "GT")):
            raise BadSample(REASON_BAD_RECORD, f"entry {index} of meta.json lacks source/mask/GT paths")
        image = decode_image(path=inside(self.root, entry["source"], "source"), what="source")
        mask = decode_mask_image(inside(self.root, entry["mask"], "mask"))
        target = decode_image(path=inside(self.root, entry["GT"], "GT"), what="GT")
        if target.size != image.size:
            raise BadSample(REASON_TARGET_SIZE, f"GT is {target.height}x{target.width} but the source is "
                                              f"{image.height}x{image.width}")
        image_array, mask_array = fit_pair(image, mask, self.resolution)
        return Sample(image=image_array, mask=mask_array, prompt="", id=self.item_id(index),
                      target=fit_image(target, self.resolution))
