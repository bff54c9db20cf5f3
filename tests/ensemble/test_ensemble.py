"""fyp.ensemble against an independent, naive implementation written straight from SPEC section 3.

The naive code below uses Python loops and float64 and shares nothing with fyp.ensemble or kernels/
(not even the tie hash, which is re-derived from its documented definition).
"""
from __future__ import annotations

import math
import os
import zlib

import numpy as np
import pytest
import scipy.stats
import torch

import fyp.ensemble as ens

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton kernel runs in numpy on a CPU (as kernels/conftest.py)
M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------- naive
def naive_priority(seed: int, n: int, k: int) -> int:
    """murmur3 fmix32 of (seed * 0x9E3779B1 + n * 0x85EBCA77 + k * 0xC2B2AE3D) mod 2^32 (docs/ensemble.md)."""
    h = ((seed & M32) * 0x9E3779B1 + n * 0x85EBCA77 + k * 0xC2B2AE3D) & M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def naive_rank(row: list[float], k: int, ties: str) -> float:
    higher = sum(1 for x in row if x > row[k])
    if ties == "min":
        return 1 + higher
    if ties == "average":  # positions higher+1 .. higher+equal, averaged
        equal = sum(1 for x in row if x == row[k])
        return sum(range(higher + 1, higher + equal + 1)) / equal
    return 1 + len({x for x in row if x > row[k]})  # dense


def naive_win_rate(row: list[float], j: int, kind: str) -> float:
    K = len(row)
    if kind == "capo":
        terms = [1 / (1 + math.exp(-(row[j] - row[i]))) for i in range(K) if i != j]
    else:
        terms = [1.0 if row[j] > row[i] else 0.0 for i in range(K) if i != j]
    return sum(terms) / (K - 1)


def naive_values(scores: np.ndarray, mode: str, weights=None) -> np.ndarray:
    N, M, K = scores.shape
    w = [1.0] * M if weights is None else [float(x) for x in weights]
    out = np.full((N, K), np.nan)
    for n in range(N):
        usable = [m for m in range(M) if w[m] > 0 and all(math.isfinite(x) for x in scores[n, m])]
        if not usable:
            continue
        for k in range(K):
            if mode in ("min", "average", "dense"):
                per = [naive_rank(list(scores[n, m]), k, mode) for m in usable]
            else:
                per = [naive_win_rate(list(scores[n, m]), k, mode) for m in usable]
            out[n, k] = sum(w[m] * v for m, v in zip(usable, per)) / sum(w[m] for m in usable)
    return out


def naive_pairs(values: np.ndarray, higher_is_better: bool, seed: int, tol: float, offset: int = 0):
    """winner, loser, valid per sample from ensemble values, with the documented tie-break."""
    winners, losers, valid = [], [], []
    for n, row in enumerate(values):
        if np.isnan(row).all():
            winners.append(-1), losers.append(-1), valid.append(False)
            continue
        key = [-x if higher_is_better else x for x in row]
        best, worst = min(key), max(key)
        code = [(naive_priority(seed, n + offset, k), k) for k in range(len(row))]
        win = min(c for c, x in zip(code, key) if x <= best + tol)[1]
        lose = max(c for c, x in zip(code, key) if x >= worst - tol)[1]
        ok = worst - best > tol
        winners.append(win if ok else -1), losers.append(lose if ok else -1), valid.append(ok)
    return np.array(winners), np.array(losers), np.array(valid)


# ---------------------------------------------------------------------------------------------- data
def make_scores(n=40, m=4, k=6, seed=0, levels=4, nan_rate=0.05) -> np.ndarray:
    """Scores with many ties (few levels), scattered NaNs and infs, a sample with every model usable,
    a sample with no usable model, a sample whose candidates all tie, and a sample missing one model."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, levels, size=(n, m, k)).astype(np.float32) + rng.choice([0, 0.5], size=(n, m, 1))
    s[rng.random((n, m, k)) < nan_rate] = np.nan
    s[0] = np.arange(m * k, dtype=np.float32).reshape(m, k) % levels  # no NaN: never a NaN row
    s[1] = np.nan
    s[2] = 1.0
    s[3, 0, 0] = np.inf
    s[4, 1, :] = np.nan
    return s


WEIGHTINGS = {
    "unit": None,
    "random": [0.3, 1.7, 0.9, 2.2],
    "with-zero": [1.0, 0.0, 2.0, 0.5],
}


# ---------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("ties", ["min", "average", "dense"])
@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_mean_rank_matches_naive(ties, weighting):
    # crc32, not hash(): str hashes change per process (PYTHONHASHSEED), so hash() gave each CI run
    # different data, and one draw left sample 0 with no usable model.
    s = make_scores(seed=zlib.crc32(f"{ties}/{weighting}".encode()) % 1000)
    got = ens.mean_rank(s, WEIGHTINGS[weighting], ties=ties)
    want = naive_values(s.astype(np.float64), ties, WEIGHTINGS[weighting])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.isnan(got[1]).all() and not np.isnan(got[0]).any()


@pytest.mark.parametrize("kind", ["capo", "caen"])
@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_calibrated_reward_matches_naive(kind, weighting):
    s = make_scores(seed=7, levels=6)
    s[5, 0] = np.linspace(-30, 30, s.shape[2])  # large gaps: sigmoid saturates
    got = ens.calibrated_reward(s, kind, WEIGHTINGS[weighting])
    want = naive_values(s.astype(np.float64), kind, WEIGHTINGS[weighting])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    finite = got[~np.isnan(got).any(1)]
    assert (finite >= 0).all() and (finite <= 1).all()


def test_mean_rank_known_values():
    s = np.array([[[3.0, 3.0, 1.0, 5.0], [1.0, 2.0, 3.0, 4.0]]], np.float32)
    np.testing.assert_array_equal(ens.mean_rank(s[:, :1], ties="min"), [[2, 2, 4, 1]])
    np.testing.assert_array_equal(ens.mean_rank(s[:, :1], ties="average"), [[2.5, 2.5, 4, 1]])
    np.testing.assert_array_equal(ens.mean_rank(s[:, :1], ties="dense"), [[2, 2, 3, 1]])
    # two models: (2.5, 4), (2.5, 3), (4, 2), (1, 1) averaged
    np.testing.assert_array_equal(ens.mean_rank(s), [[3.25, 2.75, 3.0, 1.0]])
    np.testing.assert_allclose(ens.mean_rank(s, weights=[3.0, 1.0]), [[2.875, 2.625, 3.5, 1.0]])


def test_missing_model_is_left_out_of_that_sample_only():
    rng = np.random.default_rng(1)
    s = rng.random((3, 3, 5)).astype(np.float32)
    s[0, 2, 4] = np.nan
    got = ens.mean_rank(s)
    np.testing.assert_allclose(got[0], ens.mean_rank(s[:1, :2])[0])  # model 2 left out of sample 0
    np.testing.assert_allclose(got[1:], ens.mean_rank(s[1:]))
    result = ens.run_ensemble(s, "average")
    assert result.models_used.tolist() == [2, 3, 3]


def test_inf_counts_as_missing():
    s = np.random.default_rng(2).random((2, 2, 4)).astype(np.float32)
    s[0, 0, 1] = np.inf
    np.testing.assert_allclose(ens.mean_rank(s)[0], ens.mean_rank(s[:1, 1:])[0])


def test_numpy_in_numpy_out_and_torch_in_torch_out():
    s = make_scores(n=6)
    assert isinstance(ens.mean_rank(s), np.ndarray)
    t = ens.calibrated_reward(torch.from_numpy(s), "caen")
    assert isinstance(t, torch.Tensor) and t.shape == (6, s.shape[2])


def test_caen_with_unit_weights_and_no_ties_orders_like_the_vanilla_ensemble():
    s = np.random.default_rng(3).normal(size=(200, 5, 8)).astype(np.float32)
    rank = ens.mean_rank(s, ties="average")
    caen = ens.calibrated_reward(s, "caen")
    # R_En = (K - E) / (K - 1) exactly when nothing ties
    np.testing.assert_allclose(caen, (s.shape[2] - rank) / (s.shape[2] - 1), atol=1e-6)
    a = ens.select_pairs(s, list("abcde"), "ensemble")
    b = ens.select_pairs(s, list("abcde"), "caen", weights={r: 1.0 for r in "abcde"})
    np.testing.assert_array_equal(a.winner, b.winner)
    np.testing.assert_array_equal(a.loser, b.loser)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("mode", ["min", "average", "dense", "caen", "capo"])
def test_kernels_match_naive(backend, mode):
    """The compiled kernels against the naive code directly (not only against the reference)."""
    s = make_scores(n=10, m=4, k=5, seed=21, levels=3)
    w = WEIGHTINGS["with-zero"]
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    result = ens.run_ensemble(torch.from_numpy(s).to(device), mode, w, seed=9, backend=backend)
    want = naive_values(s.astype(np.float64), mode, w)
    np.testing.assert_allclose(result.values.cpu().numpy(), want, rtol=1e-6, atol=1e-6)
    winner, loser, valid = naive_pairs(want, mode in ("capo", "caen"), seed=9, tol=1e-5 if mode == "capo" else 1e-9)
    ok = result.status.cpu().numpy() == 0
    np.testing.assert_array_equal(ok, valid)
    np.testing.assert_array_equal(result.winner.cpu().numpy()[ok], winner[valid])
    np.testing.assert_array_equal(result.loser.cpu().numpy()[ok], loser[valid])


# ---------------------------------------------------------------------------------------------- pairs
REWARDS = ["clipscore", "vqascore", "perception", "hpsv2"]


def _expected(method, s, seed, **kw):
    """(values, higher_is_better, tol, weights) of a method, from the naive code and SPEC's weights."""
    used, w = REWARDS, None
    if method == "filtered":
        used = [r for r in REWARDS if r != "vqascore"]
    if method == "single":
        used = [kw["reward"]]
    sub = s[:, [REWARDS.index(r) for r in used]].astype(np.float64)
    if method == "linear":
        w = [kw["weights"][r] for r in used]
    if method == "softmax":
        g = np.array([kw["weights"][r] for r in used]) / kw["temperature"]
        w = list(np.exp(g - g.max()) / np.exp(g - g.max()).sum())
    if method == "caen":
        w = [2.0 if r in ("clipscore", "perception") else 5 / 7 for r in used]
    mode = method if method in ("capo", "caen") else kw.get("ties", "average")
    values = naive_values(sub, mode, w)
    return values, method in ("capo", "caen"), (1e-5 if method == "capo" else 1e-9)


JUDGE = {"clipscore": 80.0, "vqascore": 78.5, "perception": 81.0, "hpsv2": 83.0}
METHOD_CASES = [
    ("ensemble", {}), ("ensemble", {"ties": "min"}), ("ensemble", {"ties": "dense"}), ("filtered", {}),
    ("linear", {"weights": JUDGE}), ("softmax", {"weights": JUDGE, "temperature": 2.0}), ("capo", {}), ("caen", {}),
    ("single", {"reward": "hpsv2"}),
]


@pytest.mark.parametrize("method,kw", METHOD_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHOD_CASES)])
def test_select_pairs_matches_naive(method, kw):
    s = make_scores(n=60, m=4, k=6, seed=11, levels=3)
    got = ens.select_pairs(s, REWARDS, method, seed=5, **kw)
    values, higher, tol = _expected(method, s, 5, **kw)
    winner, loser, valid = naive_pairs(values, higher, seed=5, tol=tol)
    np.testing.assert_array_equal(got.valid, valid)
    np.testing.assert_array_equal(got.winner, winner)
    np.testing.assert_array_equal(got.loser, loser)
    assert (got.winner[got.valid] != got.loser[got.valid]).all()
    if method in ("capo", "caen"):
        rows = np.nonzero(valid)[0]
        np.testing.assert_allclose(got.margin[rows], values[rows, winner[rows]] - values[rows, loser[rows]], atol=1e-6)
        assert (got.margin[rows] > 0).all() and np.isnan(got.margin[~valid]).all()
    else:
        assert np.isnan(got.margin).all()
    assert not got.valid[1] and got.status[1] == 1  # no usable model
    assert not got.valid[2] and got.status[2] == 2  # all tied


def test_select_pairs_reports_left_out_models_and_counts():
    s = make_scores(n=30)
    sel = ens.select_pairs(s, REWARDS, "ensemble")
    finite = np.isfinite(s).all(-1)
    assert sel.left_out == {r: int((~finite[:, j]).sum()) for j, r in enumerate(REWARDS)}
    counts = sel.counts()
    assert counts["samples"] == 30 and counts["pairs"] == int(sel.valid.sum())
    assert counts["no usable reward model"] >= 1 and counts["all candidates tied"] >= 1


def test_candidate_scaling_reranks_the_first_k_candidates():
    s = make_scores(n=50, k=8, seed=4, levels=5)
    full = ens.select_pairs(s[:, :, :4], REWARDS, "caen", seed=2)
    scaled = ens.select_pairs(s, REWARDS, "caen", seed=2, candidates=4)
    np.testing.assert_array_equal(scaled.winner, full.winner)
    np.testing.assert_array_equal(scaled.margin, full.margin)
    assert scaled.candidates == 4 and (scaled.winner[scaled.valid] < 4).all()
    with pytest.raises(ValueError, match="candidates"):
        ens.select_pairs(s, REWARDS, candidates=9)
    with pytest.raises(ValueError, match="candidates"):
        ens.select_pairs(s, REWARDS, candidates=1)


def test_tie_break_is_seeded_reproducible_and_chunk_independent():
    s = np.zeros((400, 1, 4), np.float32)
    s[:, 0, :2] = 1.0  # candidates 0 and 1 tie for best, 2 and 3 for worst
    a = ens.select_pairs(s, ["x"], "ensemble", seed=0)
    again = ens.select_pairs(s, ["x"], "ensemble", seed=0)
    other = ens.select_pairs(s, ["x"], "ensemble", seed=1)
    np.testing.assert_array_equal(a.winner, again.winner)
    assert set(a.winner) == {0, 1} and set(a.loser) == {2, 3}
    assert 120 < (a.winner == 0).sum() < 280  # the hash spreads ties evenly
    assert (a.winner != other.winner).any()
    part = ens.select_pairs(s[100:200], ["x"], "ensemble", seed=0, sample_offset=100)
    np.testing.assert_array_equal(part.winner, a.winner[100:200])


def test_random_pairs_are_distinct_seeded_and_uniform():
    s = np.full((3000, 2, 4), np.nan, np.float32)  # random needs no scores
    a = ens.select_pairs(s, ["x", "y"], "random", seed=3)
    b = ens.select_pairs(s, ["x", "y"], "random", seed=3)
    c = ens.select_pairs(s, ["x", "y"], "random", seed=4)
    assert a.valid.all() and (a.winner != a.loser).all()
    np.testing.assert_array_equal(a.winner, b.winner)
    assert (a.winner != c.winner).mean() > 0.5
    pairs = np.bincount(a.winner * 4 + a.loser, minlength=16).reshape(4, 4)
    off = pairs[~np.eye(4, dtype=bool)]
    assert off.min() > 3000 / 12 * 0.75 and off.max() < 3000 / 12 * 1.25  # 12 ordered pairs, ~uniform


def test_method_errors_are_clear():
    s = make_scores(n=5)
    with pytest.raises(ValueError, match="unknown pairs method 'best'"):
        ens.select_pairs(s, REWARDS, "best")
    with pytest.raises(ValueError, match="needs a reward model"):
        ens.select_pairs(s, REWARDS, "single")
    with pytest.raises(ValueError, match="not scored"):
        ens.select_pairs(s, REWARDS, "single", reward="hpsv3")
    with pytest.raises(ValueError, match="takes no weights"):
        ens.select_pairs(s, REWARDS, "ensemble", weights=JUDGE)
    with pytest.raises(ens.WeightError, match="no value for hpsv2"):
        ens.select_pairs(s, REWARDS, "linear", weights={"clipscore": 1, "vqascore": 1, "perception": 1})
    with pytest.raises(ValueError, match="4 reward models but 3"):
        ens.select_pairs(s, REWARDS[:3])
    with pytest.raises(ValueError, match="unknown tie method"):
        ens.mean_rank(s, ties="max")
    with pytest.raises(ValueError, match="3 weights for 4"):
        ens.mean_rank(s, weights=[1, 2, 3])
    with pytest.raises(ValueError, match=">= 0"):
        ens.mean_rank(s, weights=[1, -2, 3, 1])
    with pytest.raises(ValueError, match=r"\[N, M, K\]"):
        ens.mean_rank(s[0])


# ---------------------------------------------------------------------------------------------- weights
def test_weight_helpers():
    rewards = ["clipscore", "aesthetic", "vqascore", "perception"]
    assert ens.filtered_subset(rewards) == ["clipscore", "aesthetic", "perception"]
    assert ens.filtered_subset(rewards, keep=["perception", "clipscore"]) == ["clipscore", "perception"]
    with pytest.raises(ens.WeightError, match="not among"):
        ens.filtered_subset(rewards, keep=["hpsv9"])
    with pytest.raises(ens.WeightError, match="does not score"):
        ens.filtered_subset(["clipscore"])
    assert ens.caen_weights(rewards) == [2.0, 5 / 7, 5 / 7, 2.0]
    g = {"clipscore": 80.0, "aesthetic": 82.0, "vqascore": 79.0, "perception": 81.0}
    assert ens.linear_weights(g, rewards) == [80.0, 82.0, 79.0, 81.0]
    soft = ens.softmax_weights(g, rewards, temperature=1.0)
    assert abs(sum(soft) - 1) < 1e-12 and soft[1] == max(soft)
    np.testing.assert_allclose(soft, np.exp([1, 3, 0, 2]) / np.exp([1, 3, 0, 2]).sum())
    hot = ens.softmax_weights(g, rewards, temperature=1e6)
    np.testing.assert_allclose(hot, 0.25, atol=1e-5)
    with pytest.raises(ens.WeightError, match="temperature"):
        ens.softmax_weights(g, rewards, temperature=0)
    paper = ens.PAPER_JUDGE_SCORES["flux-fill"]
    assert len(paper) == 9 and paper["hpsv2"] == 84.699


def test_linear_default_weights_are_the_papers_judge_scores():
    names = list(ens.PAPER_JUDGE_SCORES["flux-fill"])
    s = np.random.default_rng(5).normal(size=(20, len(names), 4)).astype(np.float32)
    sel = ens.select_pairs(s, names, "linear")
    assert sel.weights == pytest.approx([ens.PAPER_JUDGE_SCORES["flux-fill"][r] for r in names])
    caen = ens.select_pairs(s, names, "caen")
    assert caen.weights[names.index("clipscore")] == 2.0 and caen.weights[names.index("hpsv3")] == pytest.approx(5 / 7)


# ---------------------------------------------------------------------------------------------- agreement
def test_kendall_tau_matrix_matches_scipy():
    rng = np.random.default_rng(6)
    s = rng.integers(0, 4, size=(25, 3, 6)).astype(np.float32)
    s[0, 1, 2] = np.nan  # model 1 unusable in sample 0
    s[1, 2] = 2.0  # model 2 ties everything in sample 1: tau undefined
    tau, count = ens.kendall_tau_matrix(s)
    for a in range(3):
        for b in range(3):
            vals = []
            for n in range(25):
                x, y = s[n, a], s[n, b]
                if not (np.isfinite(x).all() and np.isfinite(y).all()):
                    continue
                t = scipy.stats.kendalltau(x, y).statistic
                if np.isfinite(t):
                    vals.append(t)
            assert count[a, b] == len(vals)
            np.testing.assert_allclose(tau[a, b], np.mean(vals), atol=1e-9)
    assert count[1, 1] == 24 and count[2, 2] == 24
