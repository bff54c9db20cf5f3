"""Resolving a dataset path from the config: a folder, a file, a glob or a brace range of files."""
from __future__ import annotations

import glob
import itertools
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from .base import ReaderError
from .sample import REASON_OUTSIDE, BadSample

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a{000..002}.tar` -> a000.tar a001.tar a002.tar (zero padding kept); `{x,y}` lists too."""
    match = _RANGE.search(pattern) or _LIST.search(pattern)
    if not match:
        return [pattern]
    if match.re is _RANGE:
        lo, hi = match.group(1), match.group(2)
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = match.group(1).split(",")
    head, tail = pattern[: match.start()], pattern[match.end():]
    return list(itertools.chain.from_iterable(expand_braces(head + o + tail) for o in options))


def resolve_files(path: str | None, suffix: str, what: str) -> list[Path]:
    """Files named by `path`: every `*suffix` in a folder, or a file, glob, or brace range; sorted."""
    if not path:
        raise ReaderError(f"{what} needs data.path (a folder of *{suffix} files, a file, or a glob)")
    found: list[Path] = []
    for pattern in expand_braces(str(Path(path).expanduser())):
        p = Path(pattern)
        if p.is_dir():
            found.extend(sorted(p.glob(f"*{suffix}")))
        elif any(ch in pattern for ch in "*?["):
            found.extend(Path(f) for f in sorted(glob.glob(pattern)))
        elif p.is_file():
            found.append(p)
        else:
            raise ReaderError(f"{what}: {pattern} does not exist")
    if not found:
        raise ReaderError(f"{what}: no *{suffix} files at {path}")
    return found


def resolve_in_folder(path: str | None, name: str, what: str) -> tuple[Path, Path]:
    """(folder, file) for datasets described by one file (mapping_file.json): path is the file or its folder."""
    if not path:
        raise ReaderError(f"{what} needs data.path (the folder holding {name}, or the file itself)")
    p = Path(path).expanduser()
    file = p / name if p.is_dir() else p
    if not file.is_file():
        raise ReaderError(f"{what}: {file} does not exist")
    return file.parent, file


def inside(root: Path, relative: str, what: str) -> Path:
    """`root / relative` for a path a dataset's metadata names; BadSample when it is absolute or leaves `root`
    through '..' (a mapping file must not make the suite read files outside the dataset). The check is on
    the path as written: links inside the dataset folder are followed (datasets are often linked in)."""
    text = str(relative)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive
            or os.path.normpath(text.replace("\\", "/")).split("/")[0] == ".." or not parts):
        raise BadSample(REASON_OUTSIDE, f"{what} {text!r} is not a relative path inside {root}")
    return Path(root) / text
