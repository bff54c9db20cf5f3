"""Build-on-first-use loader of the C++/OpenMP rank-ensemble kernel (kernels/csrc/rank_ensemble.cpp).

torch.utils.cpp_extension compiles it once per source/flags hash and caches it in
$TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions); later processes load the cached .so in
milliseconds. The first build takes about a minute on a busy 2-core machine. No -march=native: the
cache may sit on a file system shared by cluster nodes with different CPUs; the hot loop is compiled
for AVX2 and for baseline x86-64 instead, picked at load time (target_clones in the .cpp).

The extension's name carries a digest of the source and flags: checkouts of different versions
sharing one cache (several worktrees, or cluster nodes on one home directory) each get their own
build folder. With one fixed name they rebuilt the same folder in turn (minutes per first call on
the shared dev box) and a process could load another version's .so.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

SOURCE = Path(__file__).parent / "csrc" / "rank_ensemble.cpp"
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]  # no FMA: the reference's bits (see the .cpp)
LDFLAGS = ["-fopenmp"]


def extension_name() -> str:
    """fyp_rank_ensemble_<12 hex digits of sha256(source, flags)>."""
    digest = hashlib.sha256(SOURCE.read_bytes() + repr((CFLAGS, LDFLAGS)).encode()).hexdigest()[:12]
    return f"fyp_rank_ensemble_{digest}"

_lock = threading.Lock()
_module = None


class KernelBuildError(RuntimeError):
    """The C++ kernel could not be compiled or loaded."""


def load(verbose: bool = False):
    """The compiled extension module (built on the first call in a fresh cache)."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            raise KernelBuildError(
                f"the CPU rank-ensemble kernel needs a C++ compiler and none was found ({compiler!r} is not on PATH); "
                "install g++ (e.g. `apt-get install g++`) or use backend='reference'")
        from torch.utils import cpp_extension

        try:
            _module = cpp_extension.load(name=extension_name(), sources=[str(SOURCE)], extra_cflags=CFLAGS,
                                         extra_ldflags=LDFLAGS, verbose=verbose)
        except Exception as exc:  # noqa: BLE001 - one clear line, the compiler log is in the cause
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise KernelBuildError(f"building the CPU rank-ensemble kernel from {SOURCE} failed: {first} "
                                   "(rerun with verbose=True for the compiler log, or use backend='reference')") from exc
    return _module


def rank_ensemble_cpp(scores, weights, mode_id: int, seed_term: int, sample_offset: int, capo_tol: float):
    return tuple(load().rank_ensemble_cpu(scores, weights, mode_id, seed_term, sample_offset, capo_tol))
