#!/usr/bin/env python
"""Per-image cost of the VLM rewards (vqascore, unifiedreward, hpsv3) at batch 1 and at the best batch.

Full size (default, for a CUDA machine): CLIP-FlanT5-XXL, Qwen2.5-VL-7B (UnifiedReward) and Qwen2-VL-7B + reward
head (HPSv3), built from configs written in code with random weights, in bf16, directly on the GPU (no download).
Tokenizers are byte-level BPE learnt in code from the prompt templates, so sequence lengths are close to the real
ones. Images are random 512x512 (BrushBench's size). UnifiedReward generates exactly --ur-new-tokens tokens per
image (random weights never stop early), which stands in for the length of a real answer.

A time includes preprocessing (PIL, processor) and the model; it is the wall time of `score()` with CUDA
synchronised, divided by the batch size. Paper figures (SPEC section 2, one image, their GPU) are printed beside.

  python benchmarks/gpu/rewards_vlm.py --out results/ --max-seconds 300          # GPU
  python benchmarks/gpu/rewards_vlm.py --tiny --out /tmp/bench --max-seconds 60  # CPU smoke test
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

PAPER_S = {"vqascore": 0.288, "unifiedreward": 3.051, "hpsv3": 0.379}
ARCH = {"vqascore": "CLIP-FlanT5-XXL (CLIP L/14-336 + FlanT5-XXL)", "unifiedreward": "Qwen2.5-VL-7B, generate",
        "hpsv3": "Qwen2-VL-7B + reward head"}
CAPTIONS = ["a red vintage car parked on a cobblestone street", "a bowl of ripe oranges on a wooden table",
            "a golden retriever running through tall grass at sunset", "a snowy mountain cabin with warm lights",
            "a cup of coffee next to an open book", "a futuristic city skyline at night with neon signs"]


def build_full(name: str, device: torch.device, ur_new_tokens: int):
    """The full-size reward with random bf16 weights, constructed on `device`."""
    from fyp.rewards import vlm_common as vc
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            if name == "vqascore":
                from fyp.rewards.vqascore import VQAScoreCLIPFlanT5, full_clip_flant5_xxl, tiny_t5_tokenizer
                return VQAScoreCLIPFlanT5(full_clip_flant5_xxl().eval().requires_grad_(False), tiny_t5_tokenizer())
            if name == "unifiedreward":
                from transformers import Qwen2_5_VLForConditionalGeneration

                from fyp.rewards.unifiedreward import POINTWISE_PROMPT, UnifiedReward, _transformers_answers
                processor = vc.tiny_qwen_processor("qwen2_5_vl", image_px=None, corpus=[POINTWISE_PROMPT] + CAPTIONS)
                model = Qwen2_5_VLForConditionalGeneration(vc.qwen_vl_7b_config("qwen2_5_vl", processor.tokenizer))
                model.eval().requires_grad_(False)
                reward = UnifiedReward(_transformers_answers(model, processor, ur_new_tokens), ur_new_tokens)
                reward.model = model
                return reward
            if name == "hpsv3":
                from fyp.rewards.hpsv3 import (HPSv3, HPSv3Model, INSTRUCTION, PROMPT_WITH_SPECIAL_TOKEN,
                                               REWARD_TOKEN)
                processor = vc.tiny_qwen_processor("qwen2_vl", extra_special_tokens=(REWARD_TOKEN,), image_px=None,
                                                   corpus=[INSTRUCTION + PROMPT_WITH_SPECIAL_TOKEN] + CAPTIONS)
                model = HPSv3Model(vc.qwen_vl_7b_config("qwen2_vl", processor.tokenizer))
                model.lm_head = torch.nn.Identity()  # the reward never uses the LM head
                model.eval().requires_grad_(False)
                model.rm_head.float()
                return HPSv3(model, processor)
    finally:
        torch.set_default_dtype(previous)
    raise ValueError(name)


def build_tiny(name: str, device: torch.device):
    from fyp.rewards import build
    return build(name, tiny=True, device=str(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch(reward, images, prompts, device, min_seconds: float, max_calls: int) -> tuple[float, int]:
    reward.score(images, prompts)  # warm-up (kernels, allocator, lazy init)
    sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        reward.score(images, prompts)
        sync(device)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_calls:
            return elapsed / (calls * images.shape[0]), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for rewards_vlm.csv")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="total budget; each model gets a share")
    parser.add_argument("--tiny", action="store_true", help="tiny configs on CPU (smoke test)")
    parser.add_argument("--models", default="vqascore,hpsv3,unifiedreward")
    parser.add_argument("--batches", default="1,4,8,16,32,64")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--ur-new-tokens", type=int, default=128, help="tokens UnifiedReward generates per image")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each batch size at least this long")
    args = parser.parse_args()

    names = [n for n in args.models.split(",") if n]
    unknown = set(names) - set(PAPER_S)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; valid: {', '.join(PAPER_S)}")
    batches = sorted(int(b) for b in args.batches.split(","))
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if not args.tiny and device.type != "cuda":
        parser.error("full-size models need a CUDA GPU; use --tiny for a CPU smoke test")
    size = 32 if args.tiny else args.size
    os.makedirs(args.out, exist_ok=True)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {gpu}; torch {torch.__version__}; budget {args.max_seconds:.0f} s", flush=True)

    rows = []
    started = time.perf_counter()
    for index, name in enumerate(names):
        budget_end = started + args.max_seconds * (index + 1) / len(names)
        t0 = time.perf_counter()
        reward = build_tiny(name, device) if args.tiny else build_full(name, device, args.ur_new_tokens)
        build_s = time.perf_counter() - t0
        params = sum(p.numel() for p in reward.model.parameters()) / 1e9
        print(f"{name}: built {params:.2f} B parameters in {build_s:.1f} s", flush=True)
        g = torch.Generator().manual_seed(0)
        best = None
        for batch in batches:
            if time.perf_counter() > budget_end:
                print(f"{name}: budget spent before batch {batch}", flush=True)
                break
            images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g)
            prompts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                per_image, calls = time_batch(reward, images, prompts, device, args.min_seconds, max_calls=20)
            except torch.OutOfMemoryError:
                print(f"{name}: out of memory at batch {batch}", flush=True)
                break
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
            row = dict(model=name, architecture=ARCH[name] + (" (tiny)" if args.tiny else ""), device=gpu,
                       dtype="float32" if args.tiny else "bfloat16", image_px=size, batch=batch,
                       per_image_s=per_image, calls=calls, paper_s=PAPER_S[name],
                       speedup_vs_paper=PAPER_S[name] / per_image, peak_mem_gib=peak, build_s=build_s,
                       new_tokens=args.ur_new_tokens if name == "unifiedreward" else "")
            rows.append(row)
            best = row if best is None or per_image < best["per_image_s"] else best
            print(f"{name:14s} batch {batch:3d}: {per_image:.4f} s/image ({calls} calls), paper {PAPER_S[name]} s, "
                  f"x{row['speedup_vs_paper']:.1f}, peak {peak:.1f} GiB", flush=True)
        if best is not None:
            best["best"] = True
        del reward
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    fields = ["model", "architecture", "device", "dtype", "image_px", "batch", "per_image_s", "calls", "paper_s",
              "speedup_vs_paper", "peak_mem_gib", "build_s", "new_tokens", "best"]
    path = os.path.join(args.out, "rewards_vlm.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})
    print("\n| model | batch 1 s/image | best batch | best s/image | paper s/image | speed-up at best |")
    print("|---|---|---|---|---|---|")
    for name in names:
        mine = [r for r in rows if r["model"] == name]
        if not mine:
            continue
        one = next((r for r in mine if r["batch"] == 1), None)
        best = min(mine, key=lambda r: r["per_image_s"])
        print(f"| {name} | {one['per_image_s']:.4f} | {best['batch']} | {best['per_image_s']:.4f} | "
              f"{PAPER_S[name]} | x{best['speedup_vs_paper']:.1f} |" if one else f"| {name} | - |")
    print(f"\nwrote {path}; total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
