"""`build_reader`: the one place that maps `data.kind` to a reader."""
from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .base import Reader, ReaderError


def _synthetic(cfg: DataConfig, seed: int, cache_dir: Path | None) -> Reader:
    from .synthetic import SyntheticReader
    return SyntheticReader(cfg.resolution, seed=seed, split=cfg.split)


def _brushdata(cfg: DataConfig, seed: int, cache_dir: Path | None) -> Reader:
    from .brushdata import BrushDataReader
    cache = Path(cache_dir) / "brushdata-index.npz" if cache_dir is not None else None
    # data.samples = N > 0 needs only the first N records: indexing may stop early.
    return BrushDataReader(cfg.path, cfg.resolution, seed=seed, index_cache=cache, enough=max(0, cfg.samples))


def _brushbench(cfg: DataConfig, seed: int, cache_dir: Path | None) -> Reader:
    from .brushbench import BrushBenchReader
    return BrushBenchReader(cfg.path, cfg.resolution, mask_kind=cfg.mask_kind)


def _editbench(cfg: DataConfig, seed: int, cache_dir: Path | None) -> Reader:
    from .editbench import EditBenchReader
    return EditBenchReader(cfg.path, cfg.resolution, prompt_kind=cfg.prompt_kind)


def _rorem(cfg: DataConfig, seed: int, cache_dir: Path | None) -> Reader:
    from .rorem import RORemReader
    return RORemReader(cfg.path, cfg.resolution)


READERS = {"synthetic": _synthetic, "brushdata": _brushdata, "brushbench": _brushbench,
           "editbench": _editbench, "rorem": _rorem}


def build_reader(data_cfg: DataConfig, seed: int = 0, cache_dir: Path | str | None = None) -> Reader:
    """The reader of `data_cfg.kind` at `data_cfg.resolution`. `seed` drives every seeded choice
    (synthetic content, BrushData's mask choice); `cache_dir` lets BrushData keep its tar index."""
    factory = READERS.get(data_cfg.kind)
    if factory is None:
        raise ReaderError(f"unknown data.kind {data_cfg.kind!r}; valid kinds: {', '.join(READERS)}")
    return factory(data_cfg, int(seed), Path(cache_dir) if cache_dir is not None else None)
