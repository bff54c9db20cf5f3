"""Slurm `--array` syntax: parse it, check it against a run's shards, write it back compactly, split it.

    0-15        a range            0,3,7     a list           0-15:4    a range with a step (0,4,8,12)
    0-255%8     at most 8 tasks running at once (the throttle), applies to the whole spec

Ranges are kept as ranges: `0-99999999999` costs nothing until its indices are listed, and `check_within`
refuses indices past a run's shards without listing them (only then are `indices` materialised).
"""
from __future__ import annotations

import heapq
import itertools
import re
from dataclasses import dataclass


class ArraySpecError(ValueError):
    """A malformed --array value, or one naming shards the run does not have."""


_PART = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


MAX_INDICES = 10_000_000  # listing more would take gigabytes; no run has that many shards


@dataclass(frozen=True)
class ArraySpec:
    ranges: tuple[range, ...]  # as written, each with a positive step
    throttle: int | None = None  # the %N suffix

    def __iter__(self):
        """The indices in increasing order, each once, without listing them all."""
        merged = heapq.merge(*self.ranges)
        return (index for index, _ in itertools.groupby(merged))

    @property
    def max_index(self) -> int:
        return max(r[-1] for r in self.ranges)

    @property
    def indices(self) -> tuple[int, ...]:  # sorted, unique
        if sum(len(r) for r in self.ranges) > MAX_INDICES:
            raise ArraySpecError(f"--array {render_ranges(self.ranges)} lists more than {MAX_INDICES} indices")
        return tuple(self)


def render_ranges(ranges) -> str:
    return ",".join(str(r.start) if len(r) == 1 else f"{r.start}-{r[-1]}" + (f":{r.step}" if r.step > 1 else "")
                    for r in ranges)


def parse(text: str) -> ArraySpec:
    text = text.strip()
    if not text:
        raise ArraySpecError("--array is empty; give shards in Slurm syntax such as 0-15, 0,3,7, 0-15:4 or 0-255%8, "
                             "or leave --array out for every pending shard")
    body, throttle = text, None
    if "%" in text:
        body, _, limit = text.partition("%")
        if not limit.isdigit() or int(limit) < 1:
            raise ArraySpecError(f"--array {text!r}: the throttle after % must be a positive integer")
        throttle = int(limit)
    ranges = []
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
        ranges.append(range(first, last + 1, stride))
    return ArraySpec(tuple(ranges), throttle)


def check_within(spec: ArraySpec, shards: int, stage: str) -> None:
    if spec.max_index < shards:
        return
    # each range clipped to its part past the shards: shown compactly, never listed
    outside = [r[max(0, -(-(shards - r.start) // r.step)):] for r in spec.ranges if r[-1] >= shards]
    shown = render_ranges(sorted(outside, key=lambda r: r.start)[:5]) + (" ..." if len(outside) > 5 else "")
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
