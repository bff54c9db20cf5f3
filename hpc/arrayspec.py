"""Slurm `--array` syntax: parse it, check it against a run's shards, write it back compactly, split it.

    0-15        a range            0,3,7     a list           0-15:4    a range with a step (0,4,8,12)
    0-255%8     at most 8 tasks running at once (the throttle), applies to the whole spec
"""
from __future__ import annotations

import re
from dataclasses import dataclass


class ArraySpecError(ValueError):
    """A malformed --array value, or one naming shards the run does not have."""


_PART = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


@dataclass(frozen=True)
class ArraySpec:
    indices: tuple[int, ...]  # sorted, unique
    throttle: int | None = None  # the %N suffix


def parse(text: str) -> ArraySpec:
    text = text.strip()
    if not text:
        raise ArraySpecError("--array is empty; expected Slurm syntax such as 0-15, 0,3,7, 0-15:4 or 0-255%8")
    body, throttle = text, None
    if "%" in text:
        body, _, limit = text.partition("%")
        if not limit.isdigit() or int(limit) < 1:
            raise ArraySpecError(f"--array {text!r}: the throttle after % must be a positive integer")
        throttle = int(limit)
    indices: set[int] = set()
    for part in body.split(","):
        match = _PART.match(part.strip())
        if not match:
            raise ArraySpecError(f"--array {text!r}: cannot read {part!r}; expected N, N-M or N-M:STEP")
        start, stop, step = match.group(1), match.group(2), match.group(3)
        first = int(start)
        last = int(stop) if stop is not None else first
        stride = int(step) if step is not None else 1
        if last < first:
            raise ArraySpecError(f"--array {text!r}: range {part!r} ends before it starts")
        if stride < 1:
            raise ArraySpecError(f"--array {text!r}: step in {part!r} must be >= 1")
        indices.update(range(first, last + 1, stride))
    return ArraySpec(tuple(sorted(indices)), throttle)


def check_within(spec: ArraySpec, shards: int, stage: str) -> None:
    outside = [i for i in spec.indices if i >= shards]
    if outside:
        shown = format_indices(outside[:5]) + (" ..." if len(outside) > 5 else "")
        raise ArraySpecError(f"{stage}: --array index {shown} is outside this run's shards 0-{shards - 1}")


def format_indices(indices) -> str:
    """Compact Slurm syntax for a set of indices: [0,1,2,3,7,9,10] -> '0-3,7,9-10'."""
    values = sorted(set(indices))
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def render(indices, throttle: int | None = None) -> str:
    return format_indices(indices) + (f"%{throttle}" if throttle else "")


def split(indices, max_array_size: int) -> list[tuple[int, list[int]]]:
    """Split shard indices into submissions whose array indices stay below MaxArraySize.

    Returns (offset, array indices) pairs: the task with array index i runs shard offset + i.
    Slurm's MaxArraySize caps the largest *index* (not the count), hence the offset.
    """
    if max_array_size < 1:
        raise ArraySpecError(f"max_array_size must be >= 1, got {max_array_size}")
    chunks: dict[int, list[int]] = {}
    for shard in sorted(set(indices)):
        offset = (shard // max_array_size) * max_array_size
        chunks.setdefault(offset, []).append(shard - offset)
    return sorted(chunks.items())
