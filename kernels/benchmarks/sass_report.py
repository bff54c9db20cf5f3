#!/usr/bin/env python
"""Static SASS report of the Triton rank-ensemble kernels, compiled ahead of time for a GPU target
with no GPU present (Triton ships ptxas and nvdisasm).

    python -m kernels.benchmarks.sass_report [--arch 90] [--k 16] [--m 9] [--maxnreg R] [--csv OUT.csv]

Why: on the H200 the old loop kernel ran N = 1e6, M = 9, K = 16 in 0.85 ms, far from HBM speed; it was
issue-bound. The number of instructions a warp issues per sample is therefore the figure to cut, and it
can be read from the compiled code on any machine. Per kernel and mode this prints registers per thread,
spills, the static instruction count, the instructions in the per-model loop body, and for the rows
variant (one thread per sample, one pass through that loop per model) an issue estimate:

    warp instructions per sample = ((total - loop) + M * body) / 32
    issue-bound time            = N * that / (SMs * 4 schedulers * clock)

The estimate ignores stalls and assumes the loop body runs once per model. Where the body holds two
alternative paths (CaPO: the shifted form, and the direct sigmoid for blocks spanning more than 80) only
the smaller one is counted. Memory time at N = 1e6 (653 MB moved) is 0.39 ms at 50% of an H100 SXM's 3.35 TB/s.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":  # compile for real: under TRITON_INTERPRET triton.jit makes interpreter functions
    os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels.rank_ensemble_reference import MODES  # noqa: E402
from kernels.rank_ensemble_triton import (default_block_n, default_maxnreg, kernel_and_constants,  # noqa: E402
                                          runtime_sizes)

# 1.755 GHz: a conservative sustained clock (the SXM part boosts to 1.98 GHz)
H100_SXM = dict(name="H100 SXM", sms=132, clock_hz=1.755e9)
_POINTERS = {"scores_ptr": "*fp32", "weights_ptr": "*fp32", "values_ptr": "*fp32", "winner_ptr": "*i32",
             "loser_ptr": "*i32", "used_ptr": "*i32", "status_ptr": "*i8"}


def nvidia_tool(name: str) -> str:
    """Path of a CUDA binary Triton bundles (ptxas, nvdisasm, cuobjdump)."""
    import triton.backends.nvidia as nv

    path = Path(nv.__file__).parent / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this Triton wheel does not bundle {name}")
    return str(path)


def compile_kernel(variant: str, mode: str, k: int, num_warps: int, block_n: int | None, arch: int,
                   maxnreg: int | None = None, prefetch: bool = False):
    """Compile one kernel configuration for `sm_{arch}`, as the launcher would run it on a GPU; returns
    Triton's compiled object."""
    block_n = block_n or default_block_n(k, variant, num_warps)
    fn, constants = kernel_and_constants(variant, k, MODES.index(mode), block_n, fast_rcp=True, prefetch=prefetch)
    sizes = ("N", "M", "K")[:len(runtime_sizes(variant, 0, 0, k))]
    signature = dict(_POINTERS, **{name: "i32" for name in sizes}, seed_term="i32", sample_offset="i32",
                     capo_tol="fp32")
    signature.update({name: "constexpr" for name in constants})
    options = {"num_warps": num_warps, "enable_fp_fusion": False}
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants),
                          target=GPUTarget("cuda", arch, 32), options=options)


def parse_sass(text: str) -> tuple[list[str], list[tuple[int, int]], list[tuple[int, int, int]]]:
    """Instructions (opcode and operands), loops as (first, last) instruction indices of each backward
    branch, and if/else diamonds as (conditional branch, else start, join) indices, from nvdisasm's output."""
    instructions, labels, loops, diamonds = [], {}, [], []
    for line in text.splitlines():
        label = re.match(r"^\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        ins = re.match(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
        if ins:
            instructions.append(ins.group(1))
    targets = {}
    for index, ins in enumerate(instructions):
        target = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", ins)
        if target and target.group(1) in labels:
            targets[index] = labels[target.group(1)]
            if targets[index] <= index:
                loops.append((targets[index], index))
    for index, target in targets.items():  # `@P BRA else; then...; BRA join; else: ...; join:`
        before_else = target - 1
        if (target > index and instructions[index].startswith("@") and before_else in targets
                and not instructions[before_else].startswith("@") and targets[before_else] > target):
            diamonds.append((index, target, targets[before_else]))
    return instructions, loops, diamonds


def resource_usage(cubin: Path) -> dict:
    out = subprocess.run([nvidia_tool("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                         text=True, check=True).stdout
    found = dict(re.findall(r"(REG|LOCAL):(\d+)", out))
    return {"registers": int(found.get("REG", 0)), "local_bytes": int(found.get("LOCAL", 0))}


def report(variant: str, mode: str, k: int, m: int, num_warps: int, arch: int, block_n: int | None = None,
           maxnreg: int | None = None, prefetch: bool = False, device: dict = H100_SXM) -> dict:
    if maxnreg is None and variant == "rows":  # the launcher's default cap
        maxnreg = default_maxnreg(k)
    compiled = compile_kernel(variant, mode, k, num_warps, block_n, arch, maxnreg or None, prefetch)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([nvidia_tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
        usage = resource_usage(cubin)
    instructions, loops, diamonds = parse_sass(sass)
    outer = max(loops, key=lambda span: span[1] - span[0]) if loops else None
    body = outer[1] - outer[0] + 1 if outer else 0
    outside = len(instructions) - body
    if outer:  # of two alternative paths in the loop only one runs: count the smaller (CaPO's shifted one)
        for branch, else_start, join in diamonds:
            if outer[0] <= branch and join <= outer[1]:
                body -= max(else_start - branch - 1, join - else_start)
    row = dict(variant=variant, mode=mode, K=k, M=m, num_warps=num_warps, maxnreg=maxnreg or "", prefetch=int(prefetch),
               sm=f"sm_{arch}", registers=usage["registers"], spill_bytes=usage["local_bytes"],
               static_instructions=len(instructions), model_loop_body=body, loops=len(loops))
    if variant == "rows":
        per_sample = (outside + m * body) / 32
        seconds = 1e6 * per_sample / (device["sms"] * 4 * device["clock_hz"])
        row.update(warp_instructions_per_sample=round(per_sample, 1),
                   issue_bound_ms_at_1e6=round(seconds * 1e3, 3))
    return row


def describe(r: dict) -> str:
    line = (f"{r['variant']:5} {r['mode']:8} K={r['K']} warps={r['num_warps']} prefetch={r['prefetch']} {r['sm']}: "
            f"regs {r['registers']:3} spill {r['spill_bytes']:3} B, {r['static_instructions']:5} instr, "
            f"loop body {r['model_loop_body']:4}")
    if "warp_instructions_per_sample" in r:
        line += (f", {r['warp_instructions_per_sample']} warp instr/sample -> issue-bound "
                 f"{r['issue_bound_ms_at_1e6']} ms at N=1e6 on {H100_SXM['name']}")
    return line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100/H200)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--m", type=int, default=9)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--variants", default="rows,loop,tile")
    parser.add_argument("--num-warps", default="4", help="comma-separated")
    parser.add_argument("--maxnreg", type=int, default=None, help="register cap; default: the launcher's (rows: 96 for K <= 16, else 128), 0 = none")
    parser.add_argument("--prefetch", action="store_true", help="rows: load the next model's tile first")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for variant in args.variants.split(","):
        for mode in args.modes.split(","):
            for warps in (int(w) for w in args.num_warps.split(",")):
                rows.append(report(variant, mode, args.k, args.m, warps if variant == "rows" else 2, args.arch,
                                   maxnreg=args.maxnreg, prefetch=args.prefetch and variant == "rows"))
                print(describe(rows[-1]), flush=True)
    if args.csv:
        fields = list(dict.fromkeys(key for r in rows for key in r))
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
