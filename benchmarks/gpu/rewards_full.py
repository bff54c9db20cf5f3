"""Per-image cost of every reward model, full-size architectures with random weights (no download), bf16 on a GPU.

    python benchmarks/gpu/rewards_full.py --out out/rewards --max-seconds 420
    python benchmarks/gpu/rewards_full.py --tiny --device cpu --dtype float32 --out /tmp/r   # smoke test

For each model: build through the registry (`full_size_random=True`, or `tiny=True` with --tiny), then time
`score()` on 512x512 uint8 images (the candidates' size; preprocessing, host-to-device copy and the text side
included) at batch 1 and at growing batch sizes, until a batch runs out of memory, the model's time share is
spent, or the per-image cost stops improving. Prints a table next to the paper's per-image costs (SPEC
section 2) and writes <out>/rewards.csv. Models whose builder does not offer `full_size_random` are reported as
skipped. Imports: torch, transformers, open_clip (for hpsv2 / perception) and this repo's fyp.rewards only.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PAPER_SECONDS = {"clipscore": 0.154, "aesthetic": 0.048, "imagereward": 0.0759, "pickscore": 0.0319,
                 "hpsv2": 0.219, "vqascore": 0.288, "unifiedreward": 3.051, "perception": 0.155, "hpsv3": 0.379}
BATCHES = (1, 4, 16, 64, 128, 256)
PROMPTS = ["a red vintage car parked in front of a brick house", "a cat sleeping on a sofa",
           "a bowl of fruit on a wooden table", "a mountain lake at sunrise"]


def builder_accepts(name: str, option: str) -> bool:
    from fyp.rewards import registry

    module, attr = registry._FACTORIES[name].split(":")
    try:
        fn = getattr(__import__(module, fromlist=[attr]), attr)
    except ImportError:
        return False
    params = inspect.signature(fn).parameters
    return option in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_batch(model, batch: int, size: int, device: str, min_seconds: float) -> float:
    """Seconds per image at this batch size (one warm-up call, then repeats for at least `min_seconds`)."""
    g = torch.Generator().manual_seed(batch)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g)
    if device.startswith("cuda"):
        images = images.pin_memory()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    model.score(images, prompts)
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_seconds:
        model.score(images, prompts)
        calls += 1
    sync(device)
    return (time.perf_counter() - start) / (calls * batch)


def bench_model(name: str, args, budget: float) -> dict:
    row = dict(model=name, batch1_s=float("nan"), best_batch=0, best_s=float("nan"),
               paper_s=PAPER_SECONDS.get(name, float("nan")), note="")
    option = "tiny" if args.tiny else "full_size_random"
    if not args.tiny and not builder_accepts(name, "full_size_random"):
        row["note"] = "skipped: builder has no full_size_random option"
        return row
    start = time.perf_counter()
    try:
        from fyp.rewards import build

        kwargs = {"tiny": True} if args.tiny else {"full_size_random": True}
        model = build(name, device=args.device, dtype=args.dtype, batch_size=max(BATCHES), **kwargs) \
            if builder_accepts(name, "batch_size") else build(name, device=args.device, dtype=args.dtype, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the table
        row["note"] = f"build failed ({option}): {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return row
    build_s = time.perf_counter() - start
    start = time.perf_counter()  # the time share covers timing, not building (first imports are slow)
    best = (float("inf"), 0)
    for batch in BATCHES:
        if time.perf_counter() - start > budget:
            row["note"] = f"time share spent before batch {batch}"
            break
        try:
            per_image = time_batch(model, batch, args.size, args.device, args.min_seconds)
        except torch.OutOfMemoryError:
            row["note"] = f"out of memory at batch {batch}"
            torch.cuda.empty_cache()
            break
        if batch == 1:
            row["batch1_s"] = per_image
        if per_image < best[0]:
            best = (per_image, batch)
        elif per_image > best[0] * 1.05:
            break  # past the sweet spot
    row["best_s"], row["best_batch"] = best if best[1] else (float("nan"), 0)
    row["build_s"] = round(build_s, 1)
    del model
    if args.device.startswith("cuda"):
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for rewards.csv")
    parser.add_argument("--max-seconds", type=float, default=420.0, help="total time cap (shared among models)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (smoke test / CPU figures)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per batch size")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on cpu: a shared CPU makes multi-thread timings noise)")
    parser.add_argument("--models", default=",".join(PAPER_SECONDS), help="comma-separated reward names")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.threads or not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads or 1)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    deadline = time.perf_counter() + args.max_seconds
    rows = []
    for i, name in enumerate(names):
        left = deadline - time.perf_counter()
        if left <= 0:
            rows.append(dict(model=name, note="skipped: --max-seconds spent"))
            continue
        rows.append(bench_model(name, args, budget=left / (len(names) - i)))
        print(f"[{time.strftime('%H:%M:%S')}] {rows[-1]}", flush=True)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    mode = "tiny configs" if args.tiny else "full-size, random weights"
    threads = f", {torch.get_num_threads()} CPU thread(s)" if not args.device.startswith("cuda") else ""
    print(f"\nReward per-image cost, {mode}, {args.dtype}, {args.size}px, {device_name}{threads}")
    print(f"{'model':<14}{'batch 1 (s)':>13}{'best (s)':>11}{'at batch':>9}{'paper (s)':>11}{'speed-up':>10}  note")
    for r in rows:
        speedup = r.get("paper_s", float("nan")) / r["best_s"] if r.get("best_s") == r.get("best_s") and r.get("best_s") else float("nan")
        r["speedup_vs_paper"] = round(speedup, 1) if speedup == speedup else ""
        print(f"{r['model']:<14}{r.get('batch1_s', float('nan')):>13.5f}{r.get('best_s', float('nan')):>11.5f}"
              f"{r.get('best_batch', 0):>9}{r.get('paper_s', float('nan')):>11.4f}{speedup:>10.1f}  {r.get('note', '')}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["device", "model", "batch1_s", "best_s", "best_batch", "paper_s", "speedup_vs_paper", "build_s", "peak_gib", "note"]
    with open(out / "rewards.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "device": device_name})
    print(f"wrote {out / 'rewards.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
