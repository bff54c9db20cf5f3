"""Data readers (synthetic, BrushData, BrushBench, EditBench, RORem) and the prepare stage.

Every reader is an indexable, deterministic dataset of `Sample(image uint8 [R,R,3], mask uint8 [R,R]
with 1 = hole, prompt, id)` at the preset's resolution; bad items come back as invalid Samples with a
one-line reason, never as exceptions. See docs/data.md.
"""
from .base import Reader, ReaderError
from .registry import READERS, build_reader
from .rle import RLEError, rle_decode, rle_encode
from .sample import BadSample, Sample

__all__ = ["READERS", "BadSample", "RLEError", "Reader", "ReaderError", "Sample", "build_reader",
           "rle_decode", "rle_encode"]
