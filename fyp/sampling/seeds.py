"""The seed of every candidate: a pure function of (run seed, sample id, candidate index k).

    seed(run_seed, sample_id, k) = first 8 bytes (little-endian) of
        sha256(f"fyp-candidate:{run_seed}:{sample_id}:{k}")  with the top bit cleared

so it fits an int64 (the store's `candidates/seed`) and torch.Generator.manual_seed. It depends on the
sample's id, not on its index in the run, the shard it falls in, or the batch it is generated in.
"""
from __future__ import annotations

import hashlib

_INT63 = (1 << 63) - 1


def candidate_seed(run_seed: int, sample_id: str, k: int) -> int:
    digest = hashlib.sha256(f"fyp-candidate:{int(run_seed)}:{sample_id}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & _INT63


def candidate_seeds(run_seed: int, sample_id: str, count: int) -> list[int]:
    """Seeds of candidates 0..count-1 of one sample."""
    return [candidate_seed(run_seed, sample_id, k) for k in range(count)]
