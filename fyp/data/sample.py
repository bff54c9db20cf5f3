"""One data sample as every reader returns it, and the vocabulary of reasons a sample is invalid.

A reader never raises for a bad item: it returns `Sample.invalid(...)` with a one-line reason whose text
before the first ':' is one of the `REASON_*` kinds below, so reasons can be counted by kind.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Reason kinds: the first words of every invalid sample's reason (counted by kind at finalisation).
REASON_CORRUPT_IMAGE = "corrupt image"  # undecodable or truncated image bytes
REASON_MISSING_FILE = "missing file"  # a file the record names does not exist
REASON_MASK_SIZE = "mask size mismatch"  # mask and image disagree in size
REASON_EMPTY_MASK = "empty mask"  # no hole after resize/crop: nothing to generate
REASON_FULL_MASK = "full mask"  # all hole after resize/crop: nothing to keep
REASON_TARGET_SIZE = "target size mismatch"  # ground truth and image disagree in size (RORem)
REASON_MISSING_PROMPT = "missing prompt"  # no caption where the dataset needs one
REASON_BAD_RLE = "undecodable rle"  # malformed run-length encoding
REASON_BAD_RECORD = "bad record"  # a record lacks fields or its metadata does not parse
REASON_OUTSIDE = "path outside dataset"  # a record names an absolute path or one that leaves the dataset folder
REASON_ERROR = "unexpected error"  # anything else a reader raised (the exception's first line follows)


class BadSample(Exception):
    """Raised inside a reader for a bad item; the reader turns it into an invalid Sample."""

    def __init__(self, kind: str, detail: str = ""):
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}" if detail else kind)

    @property
    def reason(self) -> str:
        return one_line(str(self))


# Object reprs in exception texts carry memory addresses ("<_io.BytesIO object at 0x7f3a...>"): dropped,
# so a re-run writes the same reason (a reason is data in the store, compared across runs).
_ADDRESS = re.compile(r"\s+at\s+0x[0-9a-fA-F]+")


def one_line(text: str, limit: int = 300) -> str:
    """The text on one line, memory addresses removed, at most `limit` characters: a deterministic reason."""
    line = " ".join(_ADDRESS.sub("", str(text)).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def reason_kind(reason: str) -> str:
    """The kind of a reason string (its text before the first ':')."""
    return reason.split(":", 1)[0].strip()


@dataclass
class Sample:
    """image uint8 [R,R,3]; mask uint8 [R,R] with 1 = hole, 0 = keep; prompt; a stable id.

    `valid=False` samples carry zero image and mask and a one-line `reason`. `target` is the ground
    truth image where the dataset has one (RORem), resized and cropped exactly as `image`.
    """

    image: np.ndarray
    mask: np.ndarray
    prompt: str
    id: str
    valid: bool = True
    reason: str = ""
    target: np.ndarray | None = None

    @classmethod
    def invalid(cls, id: str, reason: str, resolution: int, prompt: str = "") -> "Sample":
        return cls(
            image=np.zeros((resolution, resolution, 3), np.uint8),
            mask=np.zeros((resolution, resolution), np.uint8),
            prompt=prompt,
            id=id,
            valid=False,
            reason=one_line(reason),
        )
