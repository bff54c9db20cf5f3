"""Writers of small, real dataset files for the data tests: webdataset tars, BrushBench, EditBench, RORem."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from fyp.data.rle import rle_encode


def encode(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def image_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth but asymmetric RGB test image (survives JPEG roughly, resizes predictably)."""
    ys, xs = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 120, size=3)
    return np.stack([(base[0] + 2 * xs) % 256, (base[1] + 3 * ys) % 256, (base[2] + xs + ys) % 256],
                    axis=-1).astype(np.uint8)


def asymmetric_mask(height: int, width: int) -> np.ndarray:
    """An L-shaped hole in the top-left plus a short bar: differs under transpose and flips."""
    mask = np.zeros((height, width), np.uint8)
    mask[1 : height // 2, 2 : 2 + max(1, width // 8)] = 1  # vertical stroke of the L
    mask[height // 2 - 2 : height // 2, 2 : width * 3 // 4] = 1  # its foot
    mask[height - 3, width // 3 : width // 3 + 3] = 1  # a short bar near the bottom
    return mask


def tar_add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def brushdata_record(key: str, image: np.ndarray, masks: list[np.ndarray] | None = None, caption: str = "a test",
                     fmt: str = "PNG") -> dict[str, bytes]:
    """Members of one BrushData record: column-major 1-based RLEs of `masks` (default: the asymmetric one)."""
    height, width = image.shape[:2]
    masks = [asymmetric_mask(height, width)] if masks is None else masks
    ext = "jpg" if fmt == "JPEG" else "png"
    return {
        f"{key}.caption": caption.encode(),
        f"{key}.height": str(height).encode(),
        f"{key}.width": str(width).encode(),
        f"{key}.{ext}": encode(image, fmt, **({"quality": 95} if fmt == "JPEG" else {})),
        f"{key}.segmentation": json.dumps({"mask": [rle_encode(m, order="F") for m in masks]}).encode(),
    }


def write_tar(path: Path, records: list[dict[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for record in records:
            for name, data in record.items():
                tar_add(archive, name, data)
    return path


def write_brushbench(folder: Path, items: dict[str, dict], images: dict[str, np.ndarray]) -> Path:
    """mapping_file.json with `items` (already holding row-major RLEs) and the image files."""
    for rel, array in images.items():
        write_png(folder / rel, array)
    (folder / "mapping_file.json").write_text(json.dumps(items))
    return folder / "mapping_file.json"


def write_editbench(folder: Path, rows: dict[str, list[dict]], images: dict[tuple[str, str], np.ndarray],
                    masks: dict[tuple[str, str], np.ndarray]) -> Path:
    """annotations_<part>.csv rows, references_<part>/<aos>.png, masks_<part>/<aos>.png (mask 0/255)."""
    columns = ["aos", "prompt_full", "prompt_mask-simple", "prompt_mask-rich", "category"]
    for part, part_rows in rows.items():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"annotations_{part}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(part_rows)
    for (part, aos), array in images.items():
        write_png(folder / f"references_{part}" / f"{aos}.png", array)
    for (part, aos), mask in masks.items():
        write_png(folder / f"masks_{part}" / f"{aos}.png", mask)
    return folder


def write_rorem(folder: Path, samples: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], meta: bool = True) -> Path:
    """source/<name>.png, mask/<name>.png (0/255), GT/<name>.png, and meta.json listing them."""
    entries = []
    for name, (source, mask, target) in samples.items():
        write_png(folder / "source" / f"{name}.png", source)
        write_png(folder / "mask" / f"{name}.png", mask)
        write_png(folder / "GT" / f"{name}.png", target)
        entries.append({"source": f"source/{name}.png", "mask": f"mask/{name}.png", "GT": f"GT/{name}.png"})
    if meta:
        (folder / "meta.json").write_text(json.dumps(entries))
    return folder
