"""The C++ and Triton rank-ensemble kernels against the PyTorch reference.

Indices, model counts and status must be equal; values equal to 1e-6. Inputs carry many ties (few
distinct levels), NaNs, infs, samples with no usable model, all-tied samples and zero weights. Triton
runs under TRITON_INTERPRET=1 on a CPU (kernels/conftest.py), so its shapes stay small. The reference
itself is checked against a naive implementation of SPEC section 3 in tests/ensemble/test_ensemble.py.
"""
from __future__ import annotations

import pytest
import torch

import kernels
from kernels.rank_ensemble_ops import ensemble
from kernels.rank_ensemble_reference import MODES

# the interpreter computes NaN arithmetic in numpy, which warns; the NaNs are the point of these inputs
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")]
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def make_scores(n, m, k, seed=0, levels=4, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, levels, (n, m, k), generator=g).float() + 0.25 * torch.randint(0, 2, (n, m, 1), generator=g)
    s[torch.rand(n, m, k, generator=g) < 0.04] = float("nan")
    if n > 3:
        s[1] = float("nan")  # no usable model
        s[2] = 0.5  # every candidate tied
        s[3, 0, k // 2] = float("inf")
    return s.to(device)


def make_weights(kind, m, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    if kind == "none":
        return None
    w = torch.rand(m, generator=g) * 2
    if kind == "zero":
        w[m // 2] = 0.0
    if kind == "integer":
        w = torch.randint(1, 4, (m,), generator=g).float()
    return w


def assert_same(got, want):
    assert torch.equal(got.winner.cpu(), want.winner.cpu()), (got.winner, want.winner)
    assert torch.equal(got.loser.cpu(), want.loser.cpu()), (got.loser, want.loser)
    assert torch.equal(got.models_used.cpu(), want.models_used.cpu())
    assert torch.equal(got.status.cpu(), want.status.cpu())
    torch.testing.assert_close(got.values.cpu(), want.values.cpu(), rtol=0, atol=1e-6, equal_nan=True)


# ------------------------------------------------------------------------------------------------ C++
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weighting", ["none", "random", "zero", "integer"])
@pytest.mark.parametrize("shape", [(257, 9, 16), (64, 3, 5), (33, 1, 2)])
def test_cpp_matches_reference(mode, weighting, shape):
    n, m, k = shape
    s = make_scores(n, m, k, seed=n + m + k, levels=3 if k < 8 else 6)
    w = make_weights(weighting, m, seed=k)
    kw = dict(seed=11, sample_offset=1000)
    assert_same(ensemble(s, mode, w, backend="cpp", **kw), ensemble(s, mode, w, backend="reference", **kw))


def test_cpp_continuous_scores_and_large_ranges():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(500, 9, 16, generator=g) * torch.tensor([0.01, 1, 10, 100, 1000, 1, 1, 1, 1]).view(1, 9, 1)
    for mode in MODES:
        assert_same(ensemble(s, mode, backend="cpp"), ensemble(s, mode, backend="reference"))


def test_cpp_uses_every_thread_count_consistently():
    s = make_scores(300, 5, 8, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ensemble(s, "average", backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert_same(ensemble(s, "average", backend="cpp"), one)


def test_cpp_rejects_non_cpu_backend_mismatch():
    with pytest.raises(ValueError, match="unknown backend"):
        ensemble(make_scores(4, 2, 4), "min", backend="cuda-magic")


# ------------------------------------------------------------------------------------------------ Triton
TRITON_SHAPES = [(8, 3, 4), (8, 9, 16), (8, 5, 7), (5, 4, 13)]


@pytest.mark.parametrize("variant", ["rows", "loop", "tile"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=["x".join(map(str, s)) for s in TRITON_SHAPES])
def test_triton_matches_reference(mode, shape, variant):
    from kernels.rank_ensemble_ops import CAPO_TIE_TOL, MODE_IDS, seed_term
    from kernels.rank_ensemble_triton import default_variant, rank_ensemble_triton

    n, m, k = shape
    s = make_scores(n, m, k, seed=m * k, levels=3, device=DEVICE)
    for weighting in ("none", "zero"):
        w = make_weights(weighting, m, seed=n)
        w_dev = (torch.ones(m) if w is None else w).to(DEVICE)
        got = rank_ensemble_triton(s, w_dev, MODE_IDS[mode], seed_term(7), 123_456, CAPO_TIE_TOL, variant=variant)
        want = ensemble(s, mode, w, backend="reference", seed=7, sample_offset=123_456)
        assert_same(kernels.EnsembleResult(*got), want)
    if variant == default_variant(k):  # the public entry point takes this path
        assert_same(ensemble(s, mode, w, backend="triton", seed=7, sample_offset=123_456), want)


@pytest.mark.parametrize("variant", ["rows", "loop", "tile"])
@pytest.mark.parametrize("mode", ["average", "capo"])
def test_triton_blocks_and_seeds(mode, variant):
    """Several programs (N not a multiple of the block), a seed whose hash term exceeds 2^31."""
    from kernels.rank_ensemble_ops import CAPO_TIE_TOL, MODE_IDS, seed_term
    from kernels.rank_ensemble_triton import rank_ensemble_triton

    s = make_scores(13, 3, 6, seed=1, levels=3, device=DEVICE)
    w = torch.rand(3, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    seed = 2**31 + 5
    assert seed_term(seed) >= 2**31
    got = rank_ensemble_triton(s, w, MODE_IDS[mode], seed_term(seed), 40, CAPO_TIE_TOL, block_n=4,
                               variant=variant, num_warps=1)
    want = ensemble(s, mode, w, backend="reference", seed=seed, sample_offset=40)
    assert_same(kernels.EnsembleResult(*got), want)


@pytest.mark.parametrize("mode", MODES)
def test_triton_rows_continuous_scores_every_scale(mode):
    """Continuous scores from 1e-2 to 1e4 apart: CaPO's shifted form (e^(s - max)) and, for blocks where a
    usable row spans more than 80, its direct-sigmoid path; the other modes on distinct values."""
    from kernels.rank_ensemble_ops import CAPO_TIE_TOL, MODE_IDS, seed_term
    from kernels.rank_ensemble_triton import rank_ensemble_triton

    g = torch.Generator().manual_seed(5)
    for scale in (0.01, 1.0, 30.0, 1e4):
        s = torch.randn(40, 4, 16, generator=g) * scale
        s[5, 1, 3], s[6, 2, 0] = float("inf"), float("nan")  # unusable rows must not pick CaPO's path
        w = torch.rand(4, generator=g)
        got = rank_ensemble_triton(s.to(DEVICE), w.to(DEVICE), MODE_IDS[mode], seed_term(7), 0, CAPO_TIE_TOL,
                                   variant="rows", block_n=32)
        assert_same(kernels.EnsembleResult(*got), ensemble(s, mode, w, backend="reference", seed=7))


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("mode", ["average", "capo"])
def test_triton_rows_prefetch(mode, m):
    """The prefetching loop (model m + 1's tile loaded before model m is compared) gives the same result."""
    from kernels.rank_ensemble_ops import CAPO_TIE_TOL, MODE_IDS, seed_term
    from kernels.rank_ensemble_triton import rank_ensemble_triton

    s = make_scores(9, m, 8, seed=2, levels=3, device=DEVICE)
    w = torch.rand(m, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = rank_ensemble_triton(s, w, MODE_IDS[mode], seed_term(4), 3, CAPO_TIE_TOL, variant="rows", block_n=4,
                               num_warps=1, prefetch=True)
    assert_same(kernels.EnsembleResult(*got), ensemble(s, mode, w, backend="reference", seed=4, sample_offset=3))


def test_triton_rows_largest_k_and_the_variant_choice():
    from kernels.rank_ensemble_ops import CAPO_TIE_TOL, MODE_IDS, seed_term
    from kernels.rank_ensemble_triton import MAX_ROWS_CANDIDATES, default_variant, rank_ensemble_triton

    assert MAX_ROWS_CANDIDATES == 32
    assert default_variant(16) == "rows" and default_variant(32) == "rows" and default_variant(33) == "loop"
    s = make_scores(6, 2, 32, seed=3, levels=5, device=DEVICE)
    got = rank_ensemble_triton(s, torch.ones(2, device=DEVICE), MODE_IDS["average"], seed_term(1), 0, CAPO_TIE_TOL)
    assert_same(kernels.EnsembleResult(*got), ensemble(s, "average", None, backend="reference", seed=1))
    with pytest.raises(ValueError, match="rows variant handles K <= 32"):
        rank_ensemble_triton(make_scores(2, 1, 33), torch.ones(1), 0, 0, 0, CAPO_TIE_TOL, variant="rows")
    with pytest.raises(ValueError, match="unknown Triton variant"):
        rank_ensemble_triton(make_scores(2, 1, 4), torch.ones(1), 0, 0, 0, CAPO_TIE_TOL, variant="warp")


def test_triton_refuses_too_many_candidates():
    s = torch.zeros(2, 1, 200, device=DEVICE)
    with pytest.raises(ValueError, match="K <= 128"):
        ensemble(s, "min", backend="triton")


def test_triton_kernels_compile_for_sm90_without_spills(tmp_path):
    """The interpreter never runs Triton's GPU compiler, so a kernel that only fails there (a layout, an
    if/else over tuples, inline assembly) would pass every test above. Compile for sm_90 ahead of time
    (Triton bundles ptxas) in a process without TRITON_INTERPRET, and read registers and spills."""
    import csv
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "sass.csv"
    for variants, modes, extra in (("rows", "average,dense,capo", []), ("rows", "average", ["--prefetch"]),
                                   ("loop", "average", [])):
        subprocess.run([sys.executable, "-m", "kernels.benchmarks.sass_report", "--variants", variants, "--modes", modes,
                        "--maxnreg", "96", "--csv", str(out), *extra], check=True, env=env, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        rows = list(csv.DictReader(out.open()))
        assert [r["mode"] for r in rows] == modes.split(",")
        for r in rows:
            assert r["sm"] == "sm_90" and int(r["static_instructions"]) > 100
            assert 0 < int(r["registers"]) <= 96 and int(r["spill_bytes"]) == 0, r
            if variants == "rows":  # one pass of the per-model loop per model, and it holds the comparisons
                assert int(r["model_loop_body"]) >= 120 * 4, r


# ------------------------------------------------------------------------------------------------ API
def test_public_api_returns_values_or_pairs():
    s = make_scores(16, 4, 6)
    values = kernels.rank_ensemble(s, ties="dense", backend="reference")
    assert values.shape == (16, 6) and values.dtype == torch.float32
    res = kernels.calibrated_reward(s, "caen", backend="cpp", return_pairs=True)
    assert isinstance(res, kernels.EnsembleResult)
    assert res.winner.dtype == torch.int32 and res.status.dtype == torch.int8
    assert res.status[1] == 1 and res.winner[1] == -1 and torch.isnan(res.values[1]).all()
    assert res.status[2] == 2
    ok = res.status == 0
    rows = torch.nonzero(ok).squeeze(1)
    assert (res.values[rows, res.winner[rows].long()] > res.values[rows, res.loser[rows].long()]).all()
    with pytest.raises(ValueError, match="unknown tie method"):
        kernels.rank_ensemble(s, ties="ordinal")
    with pytest.raises(ValueError, match="unknown calibrated reward"):
        kernels.calibrated_reward(s, "dpo")
    with pytest.raises(ValueError, match="K >= 2"):
        kernels.calibrated_reward(s[:, :, :1], "capo")


def test_cpp_build_error_is_clear_without_a_compiler(monkeypatch):
    import kernels.rank_ensemble_cpp as cpp

    monkeypatch.setattr(cpp, "_module", None)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(cpp.KernelBuildError, match="needs a C\\+\\+ compiler"):
        cpp.load()


def test_sass_report_finds_loops_and_alternative_paths():
    """The report's parser on a hand-written nvdisasm listing: a loop with an if/else inside."""
    from kernels.benchmarks.sass_report import parse_sass

    text = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/              @!P0 BRA `(.L_x_1) ;
        /*0030*/                   FADD R3, R2, R2 ;
        /*0040*/                   FADD R3, R3, R2 ;
        /*0050*/                   BRA `(.L_x_2) ;
.L_x_1:
        /*0060*/                   FMUL R3, R2, R2 ;
.L_x_2:
        /*0070*/                   ISETP.NE.AND P1, PT, R5, RZ, PT ;
        /*0080*/               @P1 BRA `(.L_x_0) ;
        /*0090*/                   EXIT ;
"""
    instructions, loops, diamonds = parse_sass(text)
    assert len(instructions) == 10 and instructions[0].startswith("MOV")
    assert loops == [(1, 8)]  # LDG .. the backward branch
    assert diamonds == [(2, 6, 7)]  # the branch, the else block (FMUL), the join (ISETP)


def test_cpp_extension_name_tracks_source_and_flags(monkeypatch, tmp_path):
    """Checkouts with different sources or flags must not share (and rebuild) one extension folder."""
    from kernels import rank_ensemble_cpp as cpp

    name = cpp.extension_name()
    assert name.startswith("fyp_rank_ensemble_") and len(name) == len("fyp_rank_ensemble_") + 12
    assert cpp.extension_name() == name
    monkeypatch.setattr(cpp, "CFLAGS", [*cpp.CFLAGS, "-DFYP_OTHER"])
    assert cpp.extension_name() != name
    monkeypatch.undo()
    other = tmp_path / "rank_ensemble.cpp"
    other.write_bytes(cpp.SOURCE.read_bytes() + b"\n// another version\n")
    monkeypatch.setattr(cpp, "SOURCE", other)
    assert cpp.extension_name() != name
