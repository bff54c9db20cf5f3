"""Peak memory and step time of a DPO training step with a live reference model vs the reference-loss cache.

A FLUX-width transformer (diffusers FluxTransformer2DModel: width 3072 = 24 heads x 128, 384 input
channels, 64 out, T5 width 4096, CLIP pooled 768, guidance embedding) with random weights and a few
double / single blocks (the real model has 19 / 38), bf16 on a GPU. One pair per step: the policy runs
winner and loser in one batch of 2 with gradients; the reference either runs the same batch under
no_grad (mode `live`, the paper's code) or is replaced by two precomputed per-sample losses (mode
`cache`). AdamW on every parameter, gradient checkpointing on (as in the paper). Each mode runs in a
fresh subprocess so peak memory is its own (CUDA max_memory_allocated; on a CPU, ru_maxrss).

    python benchmarks/gpu/train_refcache.py --out DIR [--double 2 --single 4 --tokens 1024 --text 512]
    python benchmarks/gpu/train_refcache.py --tiny --out DIR        # CPU smoke test (the toy's transformer)

Needs torch, numpy and diffusers (the trainer's own flow/loss code is imported from the repository).
Prints a table and writes DIR/train_refcache.csv. `--max-seconds` caps each mode's timed loop.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def transformer_config(args) -> dict:
    if args.tiny:  # the toy preset's transformer (fyp.models.flux_fill.build_tiny_components)
        return dict(patch_size=1, in_channels=96, out_channels=16, num_layers=1, num_single_layers=1,
                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                    guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return dict(patch_size=1, in_channels=384, out_channels=64, num_layers=args.double, num_single_layers=args.single,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def run_mode(args) -> dict:
    import torch
    from diffusers import FluxTransformer2DModel

    from fyp.dpo.flow import image_ids, noisy_and_target, predict
    from fyp.dpo.losses import denoising_loss, preference_terms

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:  # as in fyp.dpo.train: cuDNN's SDPA backward failed on the H200 (torch 2.11/cu130) at these shapes
        torch.backends.cuda.enable_cudnn_sdp(False)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    cfg = transformer_config(args)
    with torch.device(device):  # build on the device: initialising 1B+ parameters on a CPU is slow
        policy = FluxTransformer2DModel(**cfg).to(dtype=dtype)
    if args.checkpointing:
        policy.enable_gradient_checkpointing()
    policy.train()
    reference = None
    if args.mode == "live":
        with torch.device(device):
            reference = FluxTransformer2DModel(**cfg).to(dtype=dtype).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.01)

    tokens, text = (16, 8) if args.tiny else (args.tokens, args.text)
    side = int(tokens ** 0.5)
    channels, cond = cfg["out_channels"], cfg["in_channels"] - cfg["out_channels"]
    gen = torch.Generator("cpu").manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    x0_w, x0_l, noise = rand(1, tokens, channels), rand(1, tokens, channels), rand(1, tokens, channels)
    condition, prompt, pooled = rand(1, tokens, cond), rand(1, text, cfg["joint_attention_dim"]), \
        rand(1, cfg["pooled_projection_dim"])
    mask = (torch.rand(1, tokens, 1, generator=gen) > 0.5).to(device=device, dtype=dtype)
    sigma = torch.tensor([0.6])
    ids = image_ids(side, side, device, dtype)
    x_w, t_w = noisy_and_target(x0_w, noise, sigma)
    x_l, t_l = noisy_and_target(x0_l, noise, sigma)
    inputs = (torch.cat([x_w, x_l]), torch.cat([condition] * 2), torch.cat([sigma] * 2).to(device),
              torch.cat([prompt] * 2), torch.cat([pooled] * 2), ids)
    cached = None
    if args.mode == "cache":  # what the cache holds: two floats per pair and draw (computed beforehand)
        with torch.no_grad():
            ref_w, ref_l = predict(policy, *inputs).chunk(2)
            cached = (denoising_loss(ref_w, t_w, mask), denoising_loss(ref_l, t_l, mask))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        pred_w, pred_l = predict(policy, *inputs).chunk(2)
        if cached is None:
            with torch.no_grad():
                ref_w, ref_l = predict(reference, *inputs).chunk(2)
            kw = dict(ref_w=ref_w, ref_l=ref_l)
        else:
            kw = dict(ref_w=None, ref_l=None, ref_loss_w=cached[0], ref_loss_l=cached[1])
        terms = preference_terms(pred_w, pred_l, target_w=t_w, target_l=t_l, beta=2000.0, mask=mask, **kw)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, begin = [], time.time()
    for _ in range(args.steps):
        tick = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - tick)
        if time.time() - begin > args.max_seconds:
            break
    params = sum(p.numel() for p in policy.parameters())
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return dict(mode=args.mode, device=torch.cuda.get_device_name() if cuda else "cpu", dtype=str(dtype).split(".")[-1],
                double=cfg["num_layers"], single=cfg["num_single_layers"], width=cfg["num_attention_heads"] *
                cfg["attention_head_dim"], params_m=round(params / 1e6, 1), tokens=tokens, text=text,
                steps=len(times), step_ms=round(1000 * statistics.median(times), 2),
                peak_gib=round(peak, 3), peak_kind="cuda_max_allocated" if cuda else "cpu_max_rss")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tiny", action="store_true", help="the toy transformer on small shapes (CPU smoke test)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    parser.add_argument("--double", type=int, default=2, help="double-stream blocks (FLUX.1: 19)")
    parser.add_argument("--single", type=int, default=4, help="single-stream blocks (FLUX.1: 38)")
    parser.add_argument("--tokens", type=int, default=1024, help="image tokens (512 px: 1024)")
    parser.add_argument("--text", type=int, default=512, help="T5 tokens")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="cap on each mode's timed loop")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--mode", choices=("live", "cache"), help=argparse.SUPPRESS)  # one mode, in a child
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return 0
    rows = []
    for mode in ("live", "cache"):
        cmd = [sys.executable, __file__, "--mode", mode] + [a for a in sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "train_refcache.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = ["mode", "device", "dtype", "double", "single", "width", "params_m", "tokens", "steps", "step_ms", "peak_gib"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    live, cache = rows
    print(f"reference-loss cache: step time x{live['step_ms'] / cache['step_ms']:.2f} faster, "
          f"peak memory {live['peak_gib'] - cache['peak_gib']:+.3f} GiB less ({cache['peak_kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
