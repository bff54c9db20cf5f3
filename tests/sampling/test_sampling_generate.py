"""Candidate seeds and the per-sample generator (no store)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fyp.config import load_preset
from fyp.models import build_pipeline
from fyp.sampling import candidate_seed, candidate_seeds, generate_candidates
from fyp.sampling.generate import CPU_THREADS_ENV


def test_seed_function_is_documented_and_stable():
    # The documented formula, spelled out: sha256 of "fyp-candidate:{run_seed}:{id}:{k}", 8 bytes LE, top bit off.
    import hashlib

    digest = hashlib.sha256(b"fyp-candidate:0:train-000003:2").digest()
    assert candidate_seed(0, "train-000003", 2) == int.from_bytes(digest[:8], "little") & (2**63 - 1)
    seeds = candidate_seeds(0, "train-000003", 16)
    assert len(set(seeds)) == 16 and all(0 <= s < 2**63 for s in seeds)
    assert seeds[:4] == candidate_seeds(0, "train-000003", 4)  # k' < K: a prefix of the same seeds
    assert candidate_seeds(1, "train-000003", 4) != seeds[:4]
    assert candidate_seeds(0, "train-000004", 4) != seeds[:4]


@pytest.fixture(scope="module")
def setup():
    cfg = load_preset("tiny")
    pipe = build_pipeline(cfg.model, max_sequence_length=cfg.sampling.max_sequence_length)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:50, 10:40] = 1
    return cfg, pipe, image, mask


def test_candidates_do_not_depend_on_the_callers_thread_count(setup, monkeypatch):
    cfg, pipe, image, mask = setup
    seeds = candidate_seeds(0, "x", 4)
    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    results, inside = [], []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        results.append(generate_candidates(pipe, "a red circle", image, mask, seeds, cfg.sampling,
                                           on_batch=lambda n: inside.append(torch.get_num_threads())))
        assert torch.get_num_threads() == threads  # restored
    torch.set_num_threads(before)
    assert inside == [1, 1]
    assert np.array_equal(results[0].images, results[1].images)
    assert np.array_equal(results[0].latents, results[1].latents)
    monkeypatch.setenv(CPU_THREADS_ENV, "2")
    generate_candidates(pipe, "a red circle", image, mask, seeds[:1], cfg.sampling,
                        on_batch=lambda n: inside.append(torch.get_num_threads()))
    assert inside[-1] == 2


def test_the_hole_changes_and_the_prompt_matters(setup):
    cfg, pipe, image, mask = setup
    seeds = candidate_seeds(0, "x", 2)
    a = generate_candidates(pipe, "a red circle", image, mask, seeds, cfg.sampling)
    b = generate_candidates(pipe, "a green square", image, mask, seeds, cfg.sampling)
    assert a.images.shape == (2, 64, 64, 3) and a.images.dtype == np.uint8
    assert not np.array_equal(a.images, b.images)
    assert a.latents.dtype == np.float16 and a.latents.shape == (2, 4, 16, 16)
