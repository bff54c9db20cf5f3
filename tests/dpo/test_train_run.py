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


def _train(run_dir: Path, *args: str, procs: int = 1, check: bool = True, pairs: str = PAIRS,
           env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = launcher + ["-m", "fyp.dpo.train", "--run-dir", str(run_dir), "--pairs", pairs, *args]
    proc = subprocess.run(cmd, env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=800)
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
    """Two ranks share the latent cache's encoding (chunks of 3 pairs dealt round-robin) and build the
    reference as a partition-to-partition copy of the policy. The cache is bit-identical to one process
    encoding the same chunks; the losses match one process's to 1e-4."""
    from fyp.dpo.data import build_cache
    from fyp.models import build_pipeline
    from fyp.run import Run

    run_dir = _copy(base_run, "two")
    proc = _train(run_dir, *COMMON, "--set", "train.batch_size=1", "--set", "train.encode_batch=3", procs=2)
    assert "over 2 process(es)" in proc.stderr
    np.testing.assert_allclose(_losses(run_dir), _losses(single), rtol=1e-4, atol=1e-5)
    accuracy = [r["implicit_accuracy"] for r in read_metrics(run_dir, PAIRS)]
    assert accuracy == [r["implicit_accuracy"] for r in read_metrics(single, PAIRS)]

    alone = Run.open(_copy(base_run, "cache-one-process"))
    cfg = alone.config
    pipe = build_pipeline(cfg.model, max_sequence_length=cfg.sampling.max_sequence_length, with_transformer=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the training processes (OMP_NUM_THREADS=1): the same reduction order
    try:
        build_cache(alone.store(), pipe, PAIRS, cfg.sampling.max_sequence_length, chunk=3)
    finally:
        torch.set_num_threads(threads)
    ours, theirs = Run.open(run_dir).store().train_cache(PAIRS), alone.store().train_cache(PAIRS)
    assert ours.attrs["pairs"] > 6  # three chunks: ranks 0, 1, 0
    for key in ("sample", "latent_w", "latent_l", "condition", "loss_mask", "prompt_embeds", "pooled", "margin"):
        np.testing.assert_array_equal(ours[key][:], theirs[key][:], err_msg=key)


def test_a_rank_failing_to_encode_stops_every_rank_with_its_error(base_run):
    """A corrupt sample image in the chunk rank 1 encodes: rank 1 raises the read error and rank 0 says
    which rank failed; neither waits at a barrier (gloo's timeout is 30 minutes). The cache is left
    incomplete, so the next run rebuilds it."""
    from fyp.dpo.data import read_pairs
    from fyp.run import Run

    run_dir = _copy(base_run, "corrupt")
    store = Run.open(run_dir).store(mode="r")
    index = read_pairs(store, PAIRS)[0]
    # pair 4: the second chunk of 3, rank 1's (its block of samples holds no sample of rank 0's chunks)
    store.block_file(store.samples.image, index[4]).write_bytes(b"not zstd")
    proc = _train(run_dir, *COMMON, "--set", "train.batch_size=1", "--set", "train.encode_batch=3", procs=2,
                  check=False)
    assert proc.returncode != 0
    assert f"fyp.dpo.train: rank 1 failed while encoding pairs into {store.train_cache(PAIRS)}; see its log" in proc.stderr
    assert f"{store.samples.image.path} is damaged at sample {index[4]} (" in proc.stderr
    assert "fyp/dpo/data.py" not in proc.stderr  # one-line errors, no worker traceback (torchrun prints its own)
    assert not Run.open(run_dir).store().train_cache(PAIRS).attrs.get("complete", False)


class _Planted:
    """Unpickling this creates a marker file (what a pickle planted in checkpoints/ could do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_reproduces_the_loss_sequence_and_refuses_planted_pickles(single, base_run, tmp_path):
    """A stopped run resumes to the uninterrupted run's losses. Before that, copies of the stopped run with
    a pickle planted in checkpoints/ (a checkpoint file replaced; a folder `latest` was pointed at) are
    refused with one line naming the file, and the pickle never runs (DeepSpeed would unpickle it)."""
    import pickle

    run_dir = _copy(base_run, "resumed")
    first = _train(run_dir, *COMMON, "--set", "train.batch_size=2", "--stop-after", "2", check=False)
    assert first.returncode == REQUEUE_EXIT_CODE, first.stderr[-3000:]
    ckpt = run_dir / "train" / PAIRS / "checkpoints"
    assert len(_losses(run_dir)) == 2 and (ckpt / "latest").read_text().strip() == "step-000002"
    assert (ckpt / "step-000002" / "manifest.json").exists()

    marker = tmp_path / "planted-pickle-ran"
    payload = pickle.dumps(_Planted(marker))
    replaced = _copy(run_dir, "planted-file")
    target = replaced / "train" / PAIRS / "checkpoints" / "step-000002" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    target.write_bytes(payload)
    proc = _train(replaced, *COMMON, "--set", "train.batch_size=2", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("fyp.dpo.train: ")]
    assert line == [f"fyp.dpo.train: checkpoint file {target} does not match the SHA-256 recorded when it was saved "
                    f"(changed or replaced since): refusing to load it; delete the checkpoint"], proc.stderr[-3000:]
    pointed = _copy(run_dir, "planted-folder")
    folder = pointed / "train" / PAIRS / "checkpoints" / "step-000009"
    shutil.copytree(pointed / "train" / PAIRS / "checkpoints" / "step-000002", folder)
    (folder / "manifest.json").unlink()
    (folder / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(payload)
    (folder.parent / "latest").write_text("step-000009")
    proc = _train(pointed, *COMMON, "--set", "train.batch_size=2", check=False)
    assert proc.returncode == 2 and f"checkpoint {folder} has no manifest.json" in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists()

    _train(run_dir, *COMMON, "--set", "train.batch_size=2")
    np.testing.assert_allclose(_losses(run_dir), _losses(single), rtol=0, atol=1e-7)


def test_resume_on_another_number_of_processes_continues_the_same_training(single, base_run):
    """Stopped at step 2 on 2 processes x batch 1, resumed on 1 process x batch 2 (the same 2 pairs per
    step) through a DeepSpeed universal checkpoint: the losses are those of the uninterrupted run. A resume
    with another number of pairs per step is refused with one line."""
    import json

    run_dir = _copy(base_run, "rescaled")
    _train(run_dir, *COMMON, "--set", "train.batch_size=1", "--stop-after", "2", procs=2, check=False)
    ckpt = run_dir / "train" / PAIRS / "checkpoints"
    assert json.loads((ckpt / "step-000002" / "layout.json").read_text()) == \
        dict(step=2, world=2, batch=1, grad_accum=1)
    refused = _train(run_dir, *COMMON, "--set", "train.batch_size=1", check=False)
    assert refused.returncode == 2
    assert "= 2 pairs per step; this run has 1 x 1 x 1 = 1: resume with the same number" in refused.stderr
    proc = _train(run_dir, *COMMON, "--set", "train.batch_size=2")
    assert "from step-000002-universal" in proc.stderr and (ckpt / "step-000002-universal" / "layout.json").exists()
    assert (ckpt / "step-000002-universal" / "manifest.json").exists()  # verified before it was loaded
    np.testing.assert_allclose(_losses(run_dir), _losses(single), rtol=1e-4, atol=1e-5)


def test_triton_loss_backend_gives_the_torch_losses(single, base_run):
    """train.loss_backend=triton (the fused kernel, here in Triton's interpreter on the CPU) trains like the
    torch backend (`single`: auto, which is torch on a CPU): the same per-step losses over 4 steps of
    ZeRO-3 training, to fp32 rounding amplified by beta (500 / 2 times a difference of MSEs)."""
    run_dir = _copy(base_run, "triton")
    proc = _train(run_dir, *COMMON, "--set", "train.batch_size=2", "--set", "train.loss_backend=triton",
                  env={"TRITON_INTERPRET": "1"})
    assert "preference loss: triton (train.loss_backend=triton)" in proc.stderr
    rows, torch_rows = read_metrics(run_dir, PAIRS), read_metrics(single, PAIRS)
    assert len(rows) == STEPS
    np.testing.assert_allclose(_losses(run_dir), _losses(single), rtol=1e-4, atol=1e-6)
    for key in ("mse_policy_w", "mse_policy_l", "mse_ref_w", "mse_ref_l"):
        np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in torch_rows], rtol=1e-5, err_msg=key)
    assert _losses(run_dir)[-1] != _losses(run_dir)[0]  # it trained
    refused = _train(_copy(base_run, "triton-no-interpreter"), *COMMON, "--set", "train.loss_backend=triton",
                     check=False, env={"TRITON_INTERPRET": "0"})
    assert refused.returncode == 2 and "train.loss_backend=triton on a CPU needs TRITON_INTERPRET=1" in refused.stderr


def test_reference_loss_cache_gives_the_same_training(single, base_run):
    run_dir = _copy(base_run, "refcache")
    _train(run_dir, *COMMON, "--set", "train.batch_size=2", "--set", "train.ref_cache=true")
    rows, live = read_metrics(run_dir, PAIRS), read_metrics(single, PAIRS)
    np.testing.assert_allclose([r["mse_ref_w"] for r in rows], [r["mse_ref_w"] for r in live], rtol=1e-5)
    np.testing.assert_allclose(_losses(run_dir), _losses(single), rtol=1e-4, atol=1e-5)
    from fyp.run import Run

    store = Run.open(run_dir).store()
    pairs = store.train_cache(PAIRS).attrs["pairs"]
    assert store.train_cache(PAIRS)["ref_loss_w"].shape == (-(-STEPS * 2 // pairs), pairs)


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


@pytest.mark.parametrize("loss", ["caen", "capo"])
def test_margin_losses_train_end_to_end(base_run, loss):
    """CaEN / CaPO through the CLI under ZeRO-3: pairs made by the pairs stage with that method carry
    R(w) - R(l), and every logged step's loss is (margin of that step's pair - inside)^2."""
    from fyp.dpo.train import global_indices
    from fyp.run import Run
    from fyp.stages import execute_shard

    run_dir = _copy(base_run, loss)
    execute_shard("pairs", run_dir, 0, None, {"method": loss, "name": loss})
    beta = 500.0  # COMMON's; one pair per step so the logged batch means are that pair's values
    _train(run_dir, *COMMON, "--set", "train.batch_size=1", "--set", f"train.loss={loss}", pairs=loss)

    store = Run.open(run_dir).store(mode="r")
    pairs_margin = store.pairs(loss).margin[:]
    margin = store.train_cache(loss)["margin"][:]  # the latent cache's copy, one per usable pair
    np.testing.assert_array_equal(margin, pairs_margin[store.train_cache(loss)["sample"][:]])
    assert np.isfinite(margin).all() and (margin > 0).all()
    if loss == "caen":  # one reward, no ties: R_En(best) - R_En(worst) = 1 - 0
        np.testing.assert_allclose(margin, 1.0)
    else:  # CaPO's calibrated rewards differ pair by pair
        assert len(np.unique(margin)) == len(margin)

    rows = read_metrics(run_dir, loss)
    assert [int(r["step"]) for r in rows] == list(range(STEPS))
    for step, row in enumerate(rows):
        assert all(np.isfinite(v) for v in row.values()), row
        (pair,), _ = global_indices(step, 0, 0, world=1, batch=1, grad_accum=1, num_pairs=len(margin), seed=0)
        inside = -(beta / 2) * ((row["mse_policy_w"] - row["mse_ref_w"]) - (row["mse_policy_l"] - row["mse_ref_l"]))
        assert row["reward_margin"] == pytest.approx(inside, abs=1e-3 * max(1.0, abs(inside)))
        assert row["loss"] == pytest.approx((margin[pair] - row["reward_margin"]) ** 2, rel=1e-5, abs=1e-9)
    # Step 0: policy == reference, inside = 0, so the loss is the pair's squared margin (DPO would give log 2).
    first_pair = global_indices(0, 0, 0, world=1, batch=1, grad_accum=1, num_pairs=len(margin), seed=0)[0][0]
    assert rows[0]["reward_margin"] == 0.0
    assert rows[0]["loss"] == pytest.approx(float(margin[first_pair]) ** 2, rel=1e-6)
    assert any(r["reward_margin"] != 0.0 for r in rows[1:])  # the policy moved
    assert (export_dir(run_dir, loss) / "diffusion_pytorch_model.safetensors").exists()
    assert (run_dir / "train" / loss / "done.json").exists()


def test_margin_loss_without_margins_is_a_one_line_error(base_run, capsys):
    """loss=caen on pairs made without a margin (the single method): exit 2 and one line, before any
    process group or model is set up (so every rank of a multi-process run fails alike)."""
    from fyp.dpo.train import main
    from fyp.run import Run

    assert main(["--run", str(base_run), "--pairs", PAIRS, "--set", "train.loss=caen"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fyp.dpo.train: ") and "\n" not in err, err
    pairs = str(Run.open(base_run).store(mode="r").pairs(PAIRS))
    assert "train.loss=caen needs target margins" in err and pairs in err and "capo or caen" in err
    assert not (base_run / "train").exists()  # failed before encoding the latent cache


def test_bf16_zero3_keeps_fp32_master_weights(single, base_run):
    """model.dtype=bfloat16: DeepSpeed's bf16 mode over gloo on the CPU. The module weights are bf16, the
    optimizer's master weights and Adam moments fp32; the losses track the fp32 run's; the export is bf16."""
    from safetensors.torch import load_file

    from fyp import config as config_mod

    run_dir = _copy(base_run, "bf16")
    cfg = config_mod.load(run_dir / "config.yaml")
    cfg.model.dtype = "bfloat16"
    config_mod.save(cfg, run_dir / "config.yaml")
    _train(run_dir, *COMMON, "--set", "train.batch_size=2", "--set", "train.checkpoint_every=2")

    rows, fp32 = read_metrics(run_dir, PAIRS), read_metrics(single, PAIRS)
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # bf16 policy == bf16 reference at step 0
    for key in ("mse_policy_w", "mse_policy_l"):  # same pairs and draws, bf16 rounding only
        assert rows[0][key] == pytest.approx(fp32[0][key], rel=3e-2)
    assert rows[0]["grad_norm"] > 0 and rows[-1]["loss"] != rows[0]["loss"]

    ckpt = run_dir / "train" / PAIRS / "checkpoints" / "step-000002"
    # DeepSpeed checkpoint files this test just wrote (trusted; they pickle non-tensor state)
    model_states = torch.load(ckpt / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu",
                              weights_only=False)
    assert {v.dtype for v in model_states["module"].values()} == {torch.bfloat16}
    optim = torch.load(ckpt / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", map_location="cpu",
                       weights_only=False)["optimizer_state_dict"]
    total = sum(s.numel() for group in model_states["param_shapes"] for s in group.values())
    masters = optim["fp32_flat_groups"]
    assert {t.dtype for t in masters} == {torch.float32} and sum(t.numel() for t in masters) == total
    moments = [t for state in optim["optimizer_state_dict"]["state"].values()
               for k, t in state.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {t.dtype for t in moments} == {torch.float32}

    exported = load_file(export_dir(run_dir, PAIRS) / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in exported.values()} == {torch.bfloat16}


def test_zero_init_from_a_pretrained_folder_matches_the_whole_model(base_run, tmp_path):
    """ZeRO-3 builds the transformer partitioned (deepspeed.zero.Init, train.zero_init, the default) and
    loads a diffusers folder of sharded safetensors into it module by module; over 2 processes, with the
    reference-loss cache filled in lockstep (batch 3 of 8 pairs: 9 chunks, 5 on rank 0 and 4 on rank 1),
    it trains exactly like the whole model built on one process with a live reference. ZeRO-3 keeps
    parameters under 1e5 elements whole on every rank (all of the tiny model's): a persistence threshold
    of 0 makes every forward all-gather, so a rank with a chunk fewer would hang without the lockstep."""
    from diffusers import FluxFillPipeline

    from fyp import config as config_mod
    from fyp.models import build_tiny_components

    folder = tmp_path / "flux-fill"
    FluxFillPipeline(**build_tiny_components(0, 32)).save_pretrained(folder, max_shard_size="100KB")
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()

    whole = _copy(base_run, "whole")
    _train(whole, *COMMON, "--set", "train.batch_size=6", "--set", "train.zero_init=false")
    part = _copy(base_run, "partitioned")
    cfg = config_mod.load(part / "config.yaml")
    cfg.model.tiny, cfg.model.pretrained = False, str(folder)
    config_mod.save(cfg, part / "config.yaml")
    proc = _train(part, *COMMON, "--set", "train.batch_size=3", "--set", "train.ref_cache=true", "--set",
                  "train.options.deepspeed.zero_optimization.stage3_param_persistence_threshold=0", procs=2)
    assert "built partitioned (deepspeed.zero.Init)" in proc.stderr

    rows, ref = read_metrics(part, PAIRS), read_metrics(whole, PAIRS)
    for key in ("loss", "mse_policy_w", "mse_policy_l", "mse_ref_w", "mse_ref_l", "reward_margin"):
        np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in ref], rtol=1e-4, atol=1e-5, err_msg=key)
