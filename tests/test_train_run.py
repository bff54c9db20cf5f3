"""The trainer end to end on a small toy run: ZeRO-3 over 1 and 2 CPU processes, exact resume, the
reference-loss cache, the export loading into FluxFillPipeline, and the train stage.

Each training runs in a subprocess (as on a cluster: own process group, own DeepSpeed state). The first
DeepSpeed run on a fresh machine JIT-compiles its shared-memory comm op (~40 s, cached in
~/.cache/torch_extensions).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fyp.dpo.train import REQUEUE_EXIT_CODE, export_dir, read_metrics

pytestmark = pytest.mark.timeout(900)

PAIRS = "brightness"
STEPS = 4
# Full fine-tuning under ZeRO-3; a global batch of 2 pairs (1 process x 2, or 2 processes x 1).
COMMON = ["--set", "train.zero_stage=3", "--set", "train.lr=1e-3", "--set", "train.beta=500",
          "--set", "train.warmup_steps=0", "--set", "train.checkpoint_every=0", "--steps", str(STEPS)]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _train(run_dir: Path, *args: str, procs: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = launcher + ["-m", "fyp.dpo.train", "--run-dir", str(run_dir), "--pairs", PAIRS, *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=800)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _losses(run_dir: Path) -> np.ndarray:
    return np.array([row["loss"] for row in read_metrics(run_dir, PAIRS)])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    from fyp.dpo.toy import make_toy_run

    run_dir = tmp_path_factory.mktemp("train") / "base"
    make_toy_run(run_dir, {"data": {"samples": 8}}, pairs=PAIRS)
    return run_dir


def _copy(base: Path, name: str) -> Path:
    target = base.parent / name
    shutil.copytree(base, target)
    return target


@pytest.fixture(scope="module")
def single(base_run) -> Path:
    """One process, batch 2, ZeRO-3, 4 steps, exported (also builds the latent cache the copies reuse)."""
    run_dir = _copy(base_run, "single")
    _train(run_dir, *COMMON, "--set", "train.batch_size=2")
    return run_dir


def test_metrics_are_logged_every_step(single):
    rows = read_metrics(single, PAIRS)
    assert [int(r["step"]) for r in rows] == list(range(STEPS))
    for key in ("loss", "implicit_accuracy", "mse_policy_w", "mse_policy_l", "mse_ref_w", "mse_ref_l",
                "reward_margin", "grad_norm", "lr", "pairs_per_s"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)  # policy == reference at step 0
    assert rows[0]["grad_norm"] > 0 and rows[-1]["loss"] != rows[0]["loss"]
    assert (single / "train" / PAIRS / "tb").is_dir()


def test_zero3_two_processes_match_one(single, base_run):
    run_dir = _copy(base_run, "two")
    _train(run_dir, *COMMON, "--set", "train.batch_size=1", procs=2)
    np.testing.assert_allclose(_losses(run_dir), _losses(single), rtol=1e-4, atol=1e-5)
    accuracy = [r["implicit_accuracy"] for r in read_metrics(run_dir, PAIRS)]
    assert accuracy == [r["implicit_accuracy"] for r in read_metrics(single, PAIRS)]


def test_resume_reproduces_the_loss_sequence(single, base_run):
    run_dir = _copy(base_run, "resumed")
    first = _train(run_dir, *COMMON, "--set", "train.batch_size=2", "--stop-after", "2", check=False)
    assert first.returncode == REQUEUE_EXIT_CODE, first.stderr[-3000:]
    assert len(_losses(run_dir)) == 2 and (run_dir / "train" / PAIRS / "checkpoints" / "latest").exists()
    _train(run_dir, *COMMON, "--set", "train.batch_size=2")
    np.testing.assert_allclose(_losses(run_dir), _losses(single), rtol=0, atol=1e-7)


def test_reference_loss_cache_gives_the_same_training(single, base_run):
    run_dir = _copy(base_run, "refcache")
    _train(run_dir, *COMMON, "--set", "train.batch_size=2", "--set", "train.ref_cache=true")
    rows, live = read_metrics(run_dir, PAIRS), read_metrics(single, PAIRS)
    np.testing.assert_allclose([r["mse_ref_w"] for r in rows], [r["mse_ref_w"] for r in live], rtol=1e-5)
    np.testing.assert_allclose(_losses(run_dir), _losses(single), rtol=1e-4, atol=1e-5)
    from fyp.run import Run

    store = Run.open(run_dir).store()
    pairs = store.root[f"train/{PAIRS}"].attrs["pairs"]
    assert store[f"train/{PAIRS}/ref_loss_w"].shape == (-(-STEPS * 2 // pairs), pairs)


def test_export_loads_in_flux_fill_pipeline_and_generates(single):
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    from fyp.models import build_pipeline
    from fyp.run import Run

    cfg = Run.open(single).config
    base = build_pipeline(cfg.model, max_sequence_length=cfg.sampling.max_sequence_length)
    transformer = FluxTransformer2DModel.from_pretrained(export_dir(single, PAIRS))
    assert (export_dir(single, PAIRS) / "diffusion_pytorch_model.safetensors").exists()
    changed = [not torch.equal(a, b) for a, b in zip(transformer.state_dict().values(),
                                                        base.transformer.state_dict().values())]
    assert any(changed)  # training moved the weights
    pipe = FluxFillPipeline(**{**base.components, "transformer": transformer.eval()})
    res = cfg.data.resolution
    image = (np.random.default_rng(0).random((res, res, 3)) * 255).astype(np.uint8)
    mask = np.zeros((res, res), np.uint8)
    mask[8:24, 8:24] = 255
    from PIL import Image

    out = pipe(prompt="a red circle", image=Image.fromarray(image), mask_image=Image.fromarray(mask), height=res,
               width=res, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=32,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, res, res, 3) and np.isfinite(out).all()


def test_train_stage_in_process_lora(base_run):
    """The stage hpc/ calls: one task, single process, here with LoRA (exported fused), ZeRO-2,
    gradient checkpointing and the IPO loss."""
    run_dir = _copy(base_run, "stage")
    code = ("import sys; from fyp.stages import execute_shard; "
            f"print(execute_shard('train', {str(run_dir)!r}, 0, None, dict(pairs={PAIRS!r}, steps=2, "
            "set=['train.trainable=lora', 'train.lora_rank=4', 'train.lr=0.01', 'train.zero_stage=2', 'train.gradient_checkpointing=true', 'train.loss=ipo'])))")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from fyp.run import Run
    from fyp.stages import get_stage

    run = Run.open(run_dir)
    assert get_stage("train").pending_shards(run, None, dict(pairs=PAIRS, steps=2)) == []
    assert run.task_records("train")[0]["state"] == "done"
    from diffusers import FluxTransformer2DModel

    exported = FluxTransformer2DModel.from_pretrained(export_dir(run_dir, PAIRS))
    assert not any("lora" in key for key in exported.state_dict())
