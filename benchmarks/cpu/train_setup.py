"""What the trainer's set-up costs each rank before `deepspeed.initialize`: wall time, peak RSS, bytes read.

A toy run (8 pairs) whose model is a local diffusers folder: the toy's tiny VAE and text encoders and a
wider transformer (width 1024 = 8 heads x 128, 2 double + 4 single blocks, ~150M parameters, fp32,
~600 MB of safetensors). `fyp.dpo.train` runs under torchrun with 2 processes, ZeRO-3, zero.Init and a
live reference (`train.ref_cache: false`), so the set-up is: the latent cache's encoding, the policy
built partitioned and loaded, the reference, then `deepspeed.initialize`. Each rank records its figures
at its first `deepspeed.initialize` call and exits there.

    python benchmarks/cpu/train_setup.py --out DIR [--procs 2 --double 2 --single 4 --heads 8]

Prints a table and writes DIR/train_setup.csv. rchar (from /proc/self/io) counts bytes read through
read() calls: the trainer reads safetensors with plain reads, so the weights read are in it (diffusers'
`from_pretrained` memory-maps instead and does not show there; the peak RSS does).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PAIRS = "brightness"


def make_model_folder(folder: Path, args) -> int:
    """A FluxFillPipeline folder: the toy's VAE / text encoders, a wider transformer. Returns its parameters."""
    import torch
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    from fyp.config import load_preset
    from fyp.models import build_tiny_components

    cfg = load_preset("toy")
    parts = build_tiny_components(cfg.model.seed, cfg.sampling.max_sequence_length)
    small = dict(parts["transformer"].config)
    torch.manual_seed(0)
    parts["transformer"] = FluxTransformer2DModel(
        patch_size=1, in_channels=small["in_channels"], out_channels=small["out_channels"],
        num_layers=args.double, num_single_layers=args.single, attention_head_dim=128,
        num_attention_heads=args.heads, joint_attention_dim=small["joint_attention_dim"],
        pooled_projection_dim=small["pooled_projection_dim"], guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    FluxFillPipeline(**parts).save_pretrained(folder, max_shard_size="200MB")
    return sum(p.numel() for p in parts["transformer"].parameters())


def child() -> None:
    """One rank: the trainer, stopped at its first deepspeed.initialize with the figures written out."""
    import deepspeed

    from fyp.dpo import train as trainer

    start = time.time()

    def record(*_, **__):
        io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().split("\n") if line)
        rank = int(os.environ.get("RANK", "0"))
        Path(os.environ["SETUP_OUT"], f"rank{rank}.json").write_text(json.dumps(dict(
            rank=rank, seconds=time.time() - start,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            read_mb=int(io["rchar"]) / 2**20)))
        raise SystemExit(0)

    deepspeed.initialize = record
    trainer.main(sys.argv[2:])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--label", default="", help="a name for this code version in the table")
    args = parser.parse_args()

    from fyp import config as config_mod
    from fyp.dpo.toy import make_toy_run

    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = make_model_folder(work / "model", args)
    run = make_toy_run(work / "run", {"data": {"samples": 8}}, pairs=PAIRS)
    cfg = config_mod.load(run.dir / "config.yaml")
    cfg.model.tiny, cfg.model.pretrained = False, str(work / "model")
    config_mod.save(cfg, run.dir / "config.yaml")

    figures = work / "figures"
    figures.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", SETUP_OUT=str(figures), MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
           str(Path(__file__).resolve()), "--child", "--run-dir", str(run.dir), "--pairs", PAIRS,
           "--set", "train.zero_stage=3", "--set", "train.ref_cache=false", "--steps", "1"]
    began = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = [json.loads((figures / f"rank{r}.json").read_text()) for r in range(args.procs)]
    print(f"transformer {params / 1e6:.0f}M parameters, {args.procs} processes, total {time.time() - began:.1f} s")
    print(f"| version | rank | s to deepspeed.initialize | peak RSS MB | read() MB |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {args.label} | {row['rank']} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} | {row['read_mb']:.0f} |")
    path = args.out / "train_setup.csv"
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, ["label", "params", "procs", "rank", "seconds", "peak_rss_mb", "read_mb"])
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(dict(label=args.label, params=params, procs=args.procs, **row))


if __name__ == "__main__":
    main()
