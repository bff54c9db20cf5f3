"""The reader protocol: an indexable, deterministic dataset of `Sample`s at one resolution.

Subclasses implement `__len__`, `item_id(i)` and `load(i)`; `load` may raise `BadSample` (or anything
else) for a bad item and `Reader.__getitem__` turns that into an invalid Sample with a one-line
reason, so a bad item never stops a shard. Problems with the dataset as a whole (a missing folder, an
unknown option) are `ReaderError`s raised at construction.
"""
from __future__ import annotations

import logging

from .sample import REASON_ERROR, BadSample, Sample, one_line

log = logging.getLogger("fyp.data")


class ReaderError(ValueError):
    """The dataset itself cannot be read (wrong path, unknown option, empty): a one-line message."""


class Reader:
    kind: str = ""

    def __init__(self, resolution: int):
        if resolution <= 0 or resolution % 16:
            raise ReaderError(f"resolution must be a positive multiple of 16, got {resolution}")
        self.resolution = int(resolution)

    def __len__(self) -> int:
        raise NotImplementedError

    def item_id(self, index: int) -> str:
        """The stable id of item `index`, known without decoding it."""
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.kind} reader index {index} is outside 0-{len(self) - 1}")
        try:
            return self.load(index)
        except BadSample as bad:
            return Sample.invalid(self._safe_id(index), bad.reason, self.resolution)
        except Exception as exc:  # noqa: BLE001 - a bad item must not stop the shard; say what happened
            log.debug("%s item %d raised", self.kind, index, exc_info=True)
            reason = one_line(f"{REASON_ERROR}: {type(exc).__name__}: {exc}")
            return Sample.invalid(self._safe_id(index), reason, self.resolution)

    def _safe_id(self, index: int) -> str:
        try:
            return str(self.item_id(index))
        except Exception:  # noqa: BLE001
            return f"{self.kind}-{index:08d}"

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]
