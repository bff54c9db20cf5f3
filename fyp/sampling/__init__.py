"""Candidate sampling: K inpainting candidates per sample, one seed each (see docs/sampling.md)."""
from .generate import generate_candidates
from .seeds import candidate_seed, candidate_seeds

__all__ = ["candidate_seed", "candidate_seeds", "generate_candidates"]
