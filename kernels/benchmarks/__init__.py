"""Benchmark helpers of the kernels (pytest `--benchmark` runs and benchmarks/gpu/ scripts)."""
