#!/usr/bin/env python
"""Sampling throughput of a FLUX-sized transformer: K candidates in one batch vs one at a time.

    python benchmarks/gpu/sample_flux.py --out results/sample_flux --max-seconds 300
    python benchmarks/gpu/sample_flux.py --tiny --out /tmp/sf            # CPU smoke test

Needs torch and diffusers (FluxTransformer2DModel, AutoencoderKL) only. The transformer has the real
FLUX.1 Fill config (19 double + 38 single blocks, width 3072 = 24 heads x 128, in_channels 384 =
64 noisy-latent + 64 masked-image + 256 mask channels, out 64, T5 width 4096, CLIP pooled 768, guidance
embedding) with random bf16 weights, built directly on the GPU. At 512x512 the VAE's 8x reduction and
FLUX's 2x2 packing give (512/16)^2 = 1024 image tokens, plus 512 T5 tokens (the paper's setting).

What is left out, and why: the text encoders and the VAE encoder run once per *sample* (prompt and
masked image are encoded once and shared by its K candidates), so their cost is amortised over K and
does not depend on the batching compared here; random tensors of the right shapes stand in for their
outputs. The VAE *decoder* runs once per candidate (one image at a time in the sampler, for batch
invariance): it is measured separately with the real FLUX VAE config, random weights, and added to
the candidate time.

Modes (each a row): batch = K candidates per transformer forward; single = one candidate per
forward; batch-invariant = batch with the sampler's batch-invariant linear layers
(fyp/models/batch_invariant.py, loaded by path). For each, the script measures transformer forwards
(after warm-up; stops early at the time cap and extrapolates), and reports forwards/s, candidates/s for
--steps denoising steps (decoder included), and peak memory. It also checks whether candidate 0
comes out bit-identical from a batch of K and alone (plain and batch-invariant), the property the
sampler relies on. Writes sample_flux.csv (+ invariance.csv) to --out.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

FLUX_FILL = dict(patch_size=1, in_channels=384, out_channels=64, num_layers=19, num_single_layers=38,
                 attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                 pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=16, norm_num_groups=32, use_quant_conv=False,
                use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
TINY = dict(patch_size=1, in_channels=96, out_channels=16, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=True, axes_dims_rope=(4, 6, 6))
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
                latent_channels=4, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False)


def load_batch_invariant():
    path = ROOT / "fyp" / "models" / "batch_invariant.py"
    spec = importlib.util.spec_from_file_location("batch_invariant", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.batch_invariant


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(cls, config, device, dtype, seed=0):
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in bf16, directly on the device
    try:
        with device:
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval().requires_grad_(False)


def inputs(cfg, batch, image_tokens, text_tokens, device, dtype, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noisy = cfg["out_channels"]
    side = int(image_tokens ** 0.5)
    ids = torch.zeros(side, side, 3)
    ids[..., 1] += torch.arange(side)[:, None]
    ids[..., 2] += torch.arange(side)[None, :]

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    # The condition, prompt and pooled embedding are the sample's, shared; noise is per candidate, each
    # from its own generator (candidate i gets the same noise whatever the batch).
    cond = rand(1, image_tokens, cfg["in_channels"] - noisy).expand(batch, -1, -1)
    text = rand(1, text_tokens, cfg["joint_attention_dim"]).expand(batch, -1, -1).contiguous()
    pooled = rand(1, cfg["pooled_projection_dim"]).expand(batch, -1).contiguous()
    noise = torch.cat([torch.randn(1, image_tokens, noisy, generator=torch.Generator().manual_seed(seed + 1 + i))
                       for i in range(batch)]).to(device, dtype)
    return dict(
        hidden_states=torch.cat([noise, cond], dim=2), encoder_hidden_states=text, pooled_projections=pooled,
        timestep=torch.full((batch,), 0.7, device=device, dtype=dtype),
        guidance=torch.full((batch,), 30.0, device=device, dtype=torch.float32),
        img_ids=ids.reshape(-1, 3).to(device, dtype), txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype),
        return_dict=False,
    )


def time_forwards(model, args_, device, budget, warmup=1, repeats=5, mode=contextlib.nullcontext):
    """Seconds per forward: warm-up, then up to `repeats` timed forwards or until `budget` seconds."""
    with torch.no_grad(), mode(model):
        for _ in range(warmup):
            model(**args_)
        sync(device)
        times = []
        start_all = time.perf_counter()
        while len(times) < repeats and (not times or time.perf_counter() - start_all < budget):
            start = time.perf_counter()
            out = model(**args_)[0]
            sync(device)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], len(times), bool(torch.isfinite(out).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (smoke test)")
    parser.add_argument("--candidates", type=int, default=16, help="K")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per mode (median taken)")
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    t_start = time.perf_counter()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    cfg, vae_cfg = (TINY, TINY_VAE) if args.tiny else (FLUX_FILL, FLUX_VAE)
    if args.tiny:
        args.resolution, args.text_tokens = min(args.resolution, 64), min(args.text_tokens, 32)
    scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    image_tokens = (args.resolution // scale // 2) ** 2
    model = build(FluxTransformer2DModel, cfg, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {name}; transformer {params / 1e9:.2f}B params {dtype}; {args.resolution}px = {image_tokens} "
          f"image + {args.text_tokens} text tokens; K={args.candidates}, {args.steps} steps; built in "
          f"{time.perf_counter() - t_start:.1f}s", flush=True)
    batch_invariant = load_batch_invariant()
    k = args.candidates
    budget = max(1.0, (args.max_seconds - (time.perf_counter() - t_start)) / 5)

    # VAE decode of one candidate (the sampler decodes one image at a time).
    vae = build(AutoencoderKL, vae_cfg, device, dtype)
    z = torch.randn(1, vae_cfg["latent_channels"], args.resolution // scale, args.resolution // scale, device=device,
                    dtype=dtype)
    with torch.no_grad():
        vae.decode(z)
        sync(device)
        start = time.perf_counter()
        for _ in range(3):
            vae.decode(z)
        sync(device)
    decode_s = (time.perf_counter() - start) / 3
    del vae
    if device.type == "cuda":
        torch.cuda.empty_cache()

    rows, outs = [], {}
    plain = lambda model: contextlib.nullcontext()  # noqa: E731
    modes = [("single", 1, plain), ("batch", k, plain),
             ("batch-invariant", k, batch_invariant), ("single-invariant", 1, batch_invariant)]
    for mode, batch, ctx in modes:
        if time.perf_counter() - t_start > args.max_seconds:
            print(f"time cap reached; skipping {mode}", flush=True)
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        a = inputs(cfg, batch, image_tokens, args.text_tokens, device, dtype)
        per_forward, measured, finite = time_forwards(model, a, device, budget, repeats=args.repeats, mode=ctx)
        with torch.no_grad(), ctx(model):
            outs[mode] = model(**a)[0][:1].float().cpu()  # candidate 0 (same noise in every mode)
        # K candidates x steps forwards of `batch` candidates each, plus K single-image decodes.
        per_candidate = per_forward * args.steps / batch + decode_s
        rows.append(dict(device=name, mode=mode, batch=batch, candidates=k, steps=args.steps,
                         resolution=args.resolution, image_tokens=image_tokens, text_tokens=args.text_tokens,
                         params_b=round(params / 1e9, 3), forward_s=round(per_forward, 5),
                         forwards_per_s=round(1 / per_forward, 3), decode_s=round(decode_s, 5),
                         candidates_per_s=round(1 / per_candidate, 4),
                         sample_s=round(k * per_candidate, 3), timed_forwards=measured,
                         extrapolated=measured < args.steps, finite=finite,
                         peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else ""))
        print(f"{mode:>17}: batch {batch:>2}  {per_forward * 1e3:9.1f} ms/forward  {1 / per_forward:7.2f} fwd/s  "
              f"{1 / per_candidate:7.3f} cand/s  ({k} candidates x {args.steps} steps: {k * per_candidate:.1f}s; "
              f"{measured} forwards timed)", flush=True)
        del a
    inv = []
    for a_mode, b_mode in (("batch", "single"), ("batch-invariant", "single-invariant")):
        if a_mode in outs and b_mode in outs:
            diff = (outs[a_mode] - outs[b_mode]).abs().max().item()
            inv.append(dict(device=name, compare=f"{a_mode} vs {b_mode}", max_abs_diff=diff, identical=diff == 0))
            print(f"candidate 0, {a_mode} (K={k}) vs {b_mode}: max |diff| {diff:.3g} "
                  f"({'bit-identical' if diff == 0 else 'differs'})")
    print(f"total {time.perf_counter() - t_start:.1f}s")
    if args.out and rows:
        args.out.mkdir(parents=True, exist_ok=True)
        for file, table in (("sample_flux.csv", rows), ("invariance.csv", inv)):
            if table:
                with open(args.out / file, "w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=list(table[0]))
                    writer.writeheader()
                    writer.writerows(table)
        print(f"wrote {args.out}/sample_flux.csv, invariance.csv")


if __name__ == "__main__":
    sys.exit(main())
