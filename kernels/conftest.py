"""`pytest kernels` checks the kernels; `pytest kernels --benchmark` also runs their benchmarks.

Benchmarks are pytest-benchmark tests marked `@pytest.mark.benchmark`; without `--benchmark` they are
skipped, so correctness runs stay fast. On a CPU-only machine Triton kernels run under
TRITON_INTERPRET=1 (set here before triton is imported) with small shapes.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the kernel benchmarks (pytest-benchmark); skipped otherwise")


def pytest_configure(config):
    config.addinivalue_line("markers", "benchmark: a speed benchmark, run only with --benchmark")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest kernels --benchmark`")
    for item in items:
        if "benchmark" in item.keywords and item.get_closest_marker("benchmark"):
            item.add_marker(skip)
