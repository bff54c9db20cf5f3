"""BrushData: webdataset tars of (caption, height, width, image, segmentation) records.

A record is the tar members sharing a key (the member path up to the first '.' of its file name);
the extension names the field: `caption` (or `txt`), `height`, `width`, `image` (or jpg/jpeg/png/webp),
`segmentation` (JSON `{"mask": [RLE, ...]}`). Each RLE is 1-based start/length pairs over the HxW
pixels flattened COLUMN-major (see fyp.data.rle). One record carries several object masks; the one
used is a seeded choice from (seed, key), so a run always takes the same mask. 1 in the RLE = the
object = the hole.

The members of every tar are indexed up front (name, data offset, size), so `__getitem__` is random
access: one open, a seek and a read per field. Tars must be uncompressed. The index can be cached in
an .npz file, reused while the tars' paths, sizes and modification times are unchanged.
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .base import Reader, ReaderError
from .paths import resolve_files
from .rle import RLEError, rle_decode
from .sample import (REASON_BAD_RECORD, REASON_BAD_RLE, REASON_CORRUPT_IMAGE, REASON_EMPTY_MASK,
                     REASON_MASK_SIZE, REASON_MISSING_PROMPT, BadSample, Sample)
from .transforms import decode_image, fit_pair

log = logging.getLogger("fyp.data")

FIELD_ALIASES = {
    "caption": "caption", "txt": "caption", "height": "height", "width": "width",
    "image": "image", "jpg": "image", "jpeg": "image", "png": "image", "webp": "image",
    "segmentation": "segmentation", "seg": "segmentation",
}
FIELDS = ("caption", "height", "width", "image", "segmentation")
INDEX_VERSION = 1


def split_member(name: str) -> tuple[str, str] | None:
    """`dir/0001.jpg` -> (`dir/0001`, `image`); None for members that are not a known field."""
    folder, _, base = name.rpartition("/")
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    field = FIELD_ALIASES.get(ext.lower())
    if field is None:
        return None
    return (f"{folder}/{stem}" if folder else stem), field


class _NeedsTarfile(Exception):
    """A header the fast scanner does not handle (pax, GNU long name, base-256 size): use tarfile."""


_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")


def _scan_headers(path: Path, add) -> None:
    """Walk the 512-byte ustar headers directly: ~5x faster than tarfile for plain webdataset tars.

    Calls add(name, data offset, size) per regular file; raises _NeedsTarfile on anything unusual and
    EOFError on a truncated archive.
    """
    with open(path, "rb") as handle:
        position = 0
        while True:
            handle.seek(position)
            header = handle.read(_BLOCK)
            if len(header) < _BLOCK:
                if header.strip(b"\0"):
                    raise EOFError(f"truncated header at byte {position}")
                return  # end of file without the end-of-archive blocks
            if header.count(0) == _BLOCK:
                return  # end-of-archive marker
            stored = header[148:156].split(b"\0", 1)[0].strip()
            if not stored or int(stored, 8) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
                raise _NeedsTarfile(f"bad checksum at byte {position}")
            kind = header[156:157]
            if kind not in _REGULAR + (b"5", b"1", b"2", b"3", b"4", b"6") or header[124] & 0x80:
                raise _NeedsTarfile(f"header type {kind!r} at byte {position}")
            name = header[:100].split(b"\0", 1)[0]
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            data = position + _BLOCK
            if kind in _REGULAR:
                add(name.decode("utf-8", "surrogateescape"), data, size)
            else:
                size = 0  # links and folders carry no data
            position = data + (size + _BLOCK - 1) // _BLOCK * _BLOCK


def _tarfile_headers(path: Path, add) -> None:
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            if member.isfile():
                add(member.name, member.offset_data, member.size)


def index_tar(path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """[(key, {field: (offset, size)})] of one uncompressed tar, in member order."""
    records: dict[str, dict[str, tuple[int, int]]] = {}

    def add(name: str, offset: int, size: int) -> None:
        parsed = split_member(name)
        if parsed is not None:
            key, field = parsed
            records.setdefault(key, {})[field] = (offset, size)

    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
        if magic[:2] == b"\x1f\x8b" or magic[:3] in (b"BZh", b"\xfd7z") or magic[:4] == b"\x28\xb5\x2f\xfd":
            raise tarfile.ReadError("compressed data")
        try:
            _scan_headers(path, add)
        except _NeedsTarfile:
            records.clear()
            _tarfile_headers(path, add)
    except tarfile.ReadError as exc:
        if records:
            log.warning("brushdata: %s is damaged after %d records (%s)", path, len(records), exc)
        else:
            raise ReaderError(f"brushdata: {path} is not an uncompressed tar ({exc}); records are read by "
                              "offset, so decompress .tar.gz shards first") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        # A truncated tar: keep the records indexed so far; short members are caught at read time.
        log.warning("brushdata: %s is truncated or damaged after %d records (%s)", path, len(records), exc)
    return list(records.items())


def _fingerprint(tars: list[Path]) -> str:
    return json.dumps([[str(t.resolve()), t.stat().st_size, t.stat().st_mtime_ns] for t in tars])


class TarIndex:
    """Columnar index of every record: tar number, key, and (offset, size) per field (-1 = absent).

    Columnar numpy arrays, not a list of dicts: BrushData has millions of records and every prepare
    task loads the index (about 100 bytes per record in memory and in the cache file).
    """

    def __init__(self, tar: np.ndarray, keys: np.ndarray, offset: np.ndarray, size: np.ndarray, complete: bool):
        self.tar, self.keys, self.offset, self.size = tar, keys, offset, size
        self.complete = bool(complete)  # False: only the first tars were indexed (see `build`)

    def __len__(self) -> int:
        return int(self.tar.shape[0])

    @classmethod
    def build(cls, tars: list[Path], workers: int = 1, enough: int = 0) -> "TarIndex":
        """Index `tars` in order; with `enough` > 0, stop after the first tars that hold that many records
        (the first N records are the same either way, so a small run need not scan a huge dataset)."""
        # Threads, not processes: indexing is mostly waiting on header reads (a seek per member on a
        # parallel file system), and forking a process that already runs zarr's I/O thread is unsafe.
        workers = max(1, min(workers, len(tars)))
        per_tar: list = []
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            for start in range(0, len(tars), workers):
                batch = tars[start : start + workers]
                per_tar.extend(pool.map(index_tar, batch) if pool else map(index_tar, batch))
                if enough and sum(len(records) for records in per_tar) >= enough:
                    break
        finally:
            if pool:
                pool.shutdown()
        complete = len(per_tar) == len(tars)
        count = sum(len(records) for records in per_tar)
        tar = np.empty(count, np.int32)
        offset = np.full((count, len(FIELDS)), -1, np.int64)
        size = np.full((count, len(FIELDS)), -1, np.int64)
        keys = []
        row = 0
        for number, records in enumerate(per_tar):
            for key, fields in records:
                tar[row] = number
                keys.append(key.encode("utf-8"))
                for column, field in enumerate(FIELDS):
                    if field in fields:
                        offset[row, column], size[row, column] = fields[field]
                row += 1
        return cls(tar, np.array(keys, dtype=bytes) if keys else np.empty(0, "S1"), offset, size, complete)

    def save(self, path: Path, fingerprint: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npz")
        np.savez(tmp, version=INDEX_VERSION, fingerprint=fingerprint, tar=self.tar, keys=self.keys,
                 offset=self.offset, size=self.size, complete=self.complete)
        os.replace(tmp, path)  # atomic: concurrent tasks see the old file or the new one

    @classmethod
    def load(cls, path: Path, fingerprint: str, enough: int = 0) -> "TarIndex | None":
        """The cached index, or None when it is missing, unreadable, for other tars, or too short."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                if int(saved["version"]) != INDEX_VERSION or str(saved["fingerprint"]) != fingerprint:
                    log.info("brushdata: index cache %s is stale; re-indexing", path)
                    return None
                index = cls(saved["tar"], saved["keys"], saved["offset"], saved["size"], bool(saved["complete"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("brushdata: index cache %s does not load (%s); re-indexing", path, exc)
            return None
        if not index.complete and (enough == 0 or len(index) < enough):
            return None  # indexed for a smaller run
        return index

    def key(self, row: int) -> str:
        return self.keys[row].decode("utf-8")

    def fields(self, row: int) -> dict[str, tuple[int, int]]:
        return {f: (int(self.offset[row, c]), int(self.size[row, c]))
                for c, f in enumerate(FIELDS) if self.offset[row, c] >= 0}


class BrushDataReader(Reader):
    kind = "brushdata"

    def __init__(self, path: str, resolution: int, seed: int = 0, index_cache: Path | None = None,
                 workers: int | None = None, enough: int = 0):
        """`enough` > 0: the caller needs only the first `enough` records, so indexing may stop after
        the first tars that hold them (len(reader) is then at least `enough`, not the whole dataset)."""
        super().__init__(resolution)
        self.seed = int(seed)
        self.tars = resolve_files(path, ".tar", "brushdata")
        fingerprint = _fingerprint(self.tars)
        index = TarIndex.load(Path(index_cache), fingerprint, enough) if index_cache is not None else None
        if index is None:
            workers = workers if workers is not None else min(8, os.cpu_count() or 1)
            index = TarIndex.build(self.tars, workers, enough)
            if index_cache is not None:
                index.save(Path(index_cache), fingerprint)
        self.index = index
        if not len(index):
            raise ReaderError(f"brushdata: no records in {len(self.tars)} tar(s) at {path}")

    def __len__(self) -> int:
        return len(self.index)

    def item_id(self, index: int) -> str:
        return f"{self.tars[self.index.tar[index]].stem}/{self.index.key(index)}"

    def _read_fields(self, index: int) -> dict[str, bytes]:
        tar, key, fields = self.index.tar[index], self.index.key(index), self.index.fields(index)
        missing = [f for f in FIELDS if f not in fields]
        if missing == ["caption"]:
            raise BadSample(REASON_MISSING_PROMPT, f"record {key} has no caption")
        if missing:
            raise BadSample(REASON_BAD_RECORD, f"record {key} lacks field(s) {', '.join(missing)}")
        out = {}
        with open(self.tars[tar], "rb") as handle:
            for field, (offset, size) in fields.items():
                handle.seek(offset)
                out[field] = handle.read(size)
                if len(out[field]) != size:
                    kind = REASON_CORRUPT_IMAGE if field == "image" else REASON_BAD_RECORD
                    raise BadSample(kind, f"{field} of {key} is truncated ({len(out[field])} of {size} bytes)")
        return out

    def choose_mask(self, key: str, count: int) -> int:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, zlib.crc32(key.encode())]))
        return int(rng.integers(count))

    def load(self, index: int) -> Sample:
        key = self.index.key(index)
        raw = self._read_fields(index)
        try:
            prompt = raw["caption"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadSample(REASON_BAD_RECORD, "caption is not UTF-8") from None
        if not prompt:
            raise BadSample(REASON_MISSING_PROMPT, f"record {key} has an empty caption")
        try:
            height, width = int(raw["height"].decode().strip()), int(raw["width"].decode().strip())
        except (UnicodeDecodeError, ValueError):
            raise BadSample(REASON_BAD_RECORD, f"height/width of {key} are not integers") from None
        try:
            masks = json.loads(raw["segmentation"])["mask"]
        except (ValueError, KeyError, TypeError):
            raise BadSample(REASON_BAD_RECORD, f"segmentation of {key} is not JSON with a 'mask' list") from None
        if not isinstance(masks, list):
            raise BadSample(REASON_BAD_RECORD, f"segmentation.mask of {key} is not a list")
        if not masks:
            raise BadSample(REASON_EMPTY_MASK, f"record {key} has no segmentation masks")
        image = decode_image(raw["image"], what=f"image of {key}")
        if (image.height, image.width) != (height, width):
            raise BadSample(REASON_MASK_SIZE, f"height/width fields say {height}x{width} but the image is "
                                              f"{image.height}x{image.width}")
        try:
            mask = rle_decode(masks[self.choose_mask(key, len(masks))], (height, width), order="F")
        except RLEError as exc:
            raise BadSample(REASON_BAD_RLE, f"mask of {key} {exc}") from None
        image_array, mask_array = fit_pair(image, mask, self.resolution)
        return Sample(image=image_array, mask=mask_array, prompt=prompt, id=self.item_id(index))
