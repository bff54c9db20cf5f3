"""Preference training (Diffusion-DPO / IPO / CaPO / CaEN) of the FLUX.1 Fill transformer with DeepSpeed.

Reads top to bottom: configuration, processes, data (the latent cache), models (policy, reference or
reference-loss cache), DeepSpeed engines, resume, the loop, checkpoints, export.

    python -m fyp.dpo.train --run DIR [--pairs NAME] [--steps N] [--set train.lr=1e-4 ...]
    torchrun --nproc_per_node 2 -m fyp.dpo.train --run-dir DIR      # CPU: gloo (torchrun claims --run)
    srun --ntasks-per-node=<gpus> python -m fyp.dpo.train --run DIR   # Slurm: rendezvous from SLURM_*

Outputs under <run>/train/<pairs>/: metrics.csv and tb/ (every step), checkpoints/ (DeepSpeed, every
`train.checkpoint_every` steps), transformer/ (the exported diffusers model), done.json.

Determinism: the data order and every (t, noise) draw are pure functions of (train.seed, epoch, pair)
and of the global sample position, so a resumed run replays exactly the uninterrupted one, and the
same global batch over 1 or W processes sees the same pairs and draws.

Preemption: `request_stop()` (or SIGUSR2 once `install_signal_handler()` ran — the CLI does) makes the
loop checkpoint after the current step on every rank and raise `TrainingPreempted`; the CLI turns that
into exit code `REQUEUE_EXIT_CODE` (75). Re-running the same command resumes.
"""
from __future__ import annotations

import argparse
import copy
import csv
import functools
import hashlib
import json
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, RunConfig, TrainConfig, _merge, from_dict, parse_override
from ..run import Run, atomic_write_text
from ..store import StoreError
from . import launch
from .checkpoints import LAYOUT_NAME, UNIVERSAL_SUFFIX, Layout, check_resumable, to_universal, write_layout
from .checkpoints import latest as latest_checkpoint
from .data import PairData, PairsError, PeerFailed, all_ok, build_cache, cache_group, read_pairs
from .family import training_family
from .flow import TIMESTEP_SAMPLING
from .losses import KINDS, MARGIN_KINDS, NORMALIZE, preference_terms
from .metrics import METRIC_NAMES, preference_metrics

log = logging.getLogger("fyp.dpo")

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "checkpointed, run me again"
TRAINABLE = ("all", "attention", "lora")
LR_SCHEDULES = ("constant", "linear", "cosine")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
CSV_FIELDS = ("step",) + METRIC_NAMES + ("grad_norm", "lr", "pairs_per_s", "step_seconds")

_STOP = threading.Event()


class TrainingPreempted(RuntimeError):
    """Training checkpointed at `step` on a stop request and wants to be run again (resumes there)."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"preempted: checkpointed at step {step} in {checkpoint}; run again to resume")
        self.step, self.checkpoint = step, checkpoint


def request_stop() -> None:
    """Ask the running trainer to checkpoint after the current step and stop (the requeue hook)."""
    _STOP.set()


def install_signal_handler(sig: int = signal.SIGUSR2) -> None:
    """Route `sig` (Slurm's warning before the time limit) to `request_stop`; main thread only."""
    signal.signal(sig, lambda *_: request_stop())


def output_dir(run_dir: Path | str, pairs: str) -> Path:
    return Path(run_dir) / "train" / pairs


def export_dir(run_dir: Path | str, pairs: str) -> Path:
    """Where the aligned transformer is exported (what eval loads)."""
    return output_dir(run_dir, pairs) / "transformer"


@dataclass
class TrainResult:
    pairs: str
    steps: int
    start_step: int
    seconds: float
    last: dict
    export: str | None


# -- configuration -----------------------------------------------------------------------------------
def check_train_config(cfg: TrainConfig) -> None:
    checks = [
        (cfg.loss in KINDS, f"train.loss must be one of {', '.join(KINDS)}, got {cfg.loss!r}"),
        (cfg.normalize in NORMALIZE, f"train.normalize must be one of {', '.join(NORMALIZE)}, got {cfg.normalize!r}"),
        (cfg.trainable in TRAINABLE, f"train.trainable must be one of {', '.join(TRAINABLE)}, got {cfg.trainable!r}"),
        (cfg.timestep_sampling in TIMESTEP_SAMPLING,
         f"train.timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}, got {cfg.timestep_sampling!r}"),
        (cfg.lr_schedule in LR_SCHEDULES, f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}"),
        (cfg.zero_stage in (0, 1, 2, 3), f"train.zero_stage must be 0, 1, 2 or 3, got {cfg.zero_stage}"),
        (cfg.steps >= 1 and cfg.batch_size >= 1 and cfg.grad_accum >= 1 and cfg.encode_batch >= 1,
         "train.steps, train.batch_size, train.grad_accum and train.encode_batch must be >= 1"),
        (cfg.beta > 0 and cfg.lr > 0, "train.beta and train.lr must be > 0"),
        (cfg.dist_timeout_minutes > 0, "train.dist_timeout_minutes must be > 0"),
        (cfg.checkpoint_every >= 0 and cfg.warmup_steps >= 0, "train.checkpoint_every and train.warmup_steps must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


TRAIN_DTYPES = ("float32", "bfloat16")


def check_training_dtype(name: str) -> None:
    """Training runs in model.dtype: fp32, or bf16 (DeepSpeed's bf16 mode: bf16 module weights, fp32 master
    weights and optimizer state). float16 is refused: without loss scaling its gradients overflow (a run
    on the tiny model logged grad_norm=inf at every step and never moved)."""
    if name not in TRAIN_DTYPES:
        raise ConfigError(f"training runs in model.dtype {' or '.join(TRAIN_DTYPES)}, got {name!r}; "
                          f"use bfloat16 for mixed precision")


def resolve_config(run: Run, pairs: str | None, steps: int | None, overrides: dict | None) -> RunConfig:
    """The run's config with train overrides (`{"lr": 1e-4}` or dotted `train.lr=...` strings) applied."""
    raw = run.config.to_dict()
    over = dict(overrides or {})
    if pairs is not None:
        over["pairs"] = pairs
    if steps is not None:
        over["steps"] = steps
    for key, value in over.items():  # YAML reads "1e-4" as a string: accept it for float settings
        if isinstance(value, str) and isinstance(raw["train"].get(key), float):
            try:
                over[key] = float(value)
            except ValueError:
                pass
    raw["train"] = {**raw["train"], **over}
    cfg = from_dict(raw)
    check_train_config(cfg.train)
    check_training_dtype(cfg.model.dtype)
    return cfg


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then constant / linear to 0 / cosine to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


# -- data order --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def epoch_order(seed: int, epoch: int, num_pairs: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 7, int(epoch)])).permutation(num_pairs)


def global_indices(step: int, micro: int, rank: int, *, world: int, batch: int, grad_accum: int, num_pairs: int,
                   seed: int) -> tuple[list[int], list[int]]:
    """(pairs, epochs) of one rank's micro-batch: position i of the global stream -> epoch i // P, its order."""
    base = ((step * grad_accum + micro) * world + rank) * batch
    pairs, epochs = [], []
    for i in range(base, base + batch):
        epoch = i // num_pairs
        pairs.append(int(epoch_order(seed, epoch, num_pairs)[i % num_pairs]))
        epochs.append(epoch)
    return pairs, epochs


def epochs_needed(cfg: TrainConfig, world: int, num_pairs: int) -> int:
    return math.ceil(cfg.steps * cfg.grad_accum * world * cfg.batch_size / num_pairs)


# -- processes ---------------------------------------------------------------------------------------
class Dist:
    """The process group (initialised here when the caller has not) and its small collectives."""

    def __init__(self, timeout_minutes: float = 30.0):
        import datetime

        import torch.distributed as dist

        self.dist = dist
        env = launch.apply()
        self.rank, self.world, self.local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
        self.owned = not dist.is_initialized()
        if self.owned:
            import deepspeed

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            # The timeout bounds the longest wait at a collective: the latent cache's encoding (a share
            # of the pairs per rank) runs between two of them.
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                       timeout=datetime.timedelta(minutes=timeout_minutes))
        self.device = torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # cuDNN's fused attention backward failed (mha_graph.execute) on an H200 with torch 2.11/cu130
            # at FLUX width and 1536 tokens; flash / memory-efficient SDPA run the same step fine.
            torch.backends.cuda.enable_cudnn_sdp(False)

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world > 1:
            tensor = tensor.to(self.device)
            self.dist.all_reduce(tensor, op=self.dist.ReduceOp.MAX if op == "max" else self.dist.ReduceOp.SUM)
            tensor = tensor.cpu()
        return tensor

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


# -- models ------------------------------------------------------------------------------------------
def load_transformer_and_scheduler(cfg: RunConfig, zero_init: dict | None = None):
    """The initial transformer (the policy's and the reference's weights) and the scheduler config.

    `zero_init` None: the whole model on this process (the caller moves it to its device and dtype).
    `zero_init` a DeepSpeed ZeRO-3 config: built under `deepspeed.zero.Init`, partitioned over the ranks
    from the start, in the config's precision (bf16 when enabled, else fp32), with the same weights
    (see fyp.dpo.zero3). The tiny model's weights are drawn on the CPU from model.seed either way.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from ..models import resolve_dtype
    from .zero3 import WeightSource, build_partitioned, transformer_folder

    dtype = resolve_dtype(cfg.model.dtype)
    if cfg.model.tiny:
        from ..models import build_tiny_components

        parts = build_tiny_components(cfg.model.seed, cfg.sampling.max_sequence_length)
        transformer, scheduler_config = parts["transformer"], dict(parts["scheduler"].config)
        if zero_init is not None:
            transformer = build_partitioned(dict(transformer.config), WeightSource(transformer.state_dict()),
                                            zero_init, dtype)
        return transformer, scheduler_config
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(cfg.model.pretrained, subfolder="scheduler")
    if zero_init is None:
        transformer = FluxTransformer2DModel.from_pretrained(cfg.model.pretrained, subfolder="transformer",
                                                             torch_dtype=dtype)
    else:
        folder = transformer_folder(cfg.model.pretrained)
        transformer = build_partitioned(FluxTransformer2DModel.load_config(folder), WeightSource.from_folder(folder),
                                        zero_init, dtype)
    return transformer, dict(scheduler.config)


def set_trainable(transformer, cfg: TrainConfig) -> dict | None:
    """Freeze per `train.trainable`; returns the LoRA config dict (for export) when LoRA is used."""
    if cfg.trainable == "lora":
        from peft import LoraConfig

        lora = dict(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights="gaussian",
                    target_modules=LORA_TARGETS)
        transformer.requires_grad_(False)
        transformer.add_adapter(LoraConfig(**lora))  # leaves only the adapters trainable
        return lora
    for name, param in transformer.named_parameters():
        param.requires_grad_(cfg.trainable == "all" or ".attn." in name)
    return None


def deepspeed_config(cfg: TrainConfig, world: int, bf16: bool, with_optimizer: bool = True) -> dict:
    ds = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world,
        "zero_optimization": {"stage": cfg.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if with_optimizer:
        ds["gradient_clipping"] = cfg.grad_clip
        # torch's AdamW (torch_adam): no CPU-Adam / fused-Adam JIT build; fine at one optimizer step per batch.
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                                       "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True,
                                                       "adam_w_mode": True}}
    extra = cfg.options.get("deepspeed") or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"train.options.deepspeed must be a mapping (merged into the DeepSpeed config), "
                          f"got {extra!r}")
    return _merge(ds, extra)  # e.g. {zero_optimization: {reduce_bucket_size: 5.0e+7}}


def unsharded_grad_norm(model) -> float:
    """The global L2 norm of the gradients before clipping (plain data parallel: grads are all-reduced)."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


# -- metrics -----------------------------------------------------------------------------------------
class MetricsLog:
    """metrics.csv (rows past a resume point are dropped) and TensorBoard scalars, rank 0 only."""

    def __init__(self, folder: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = folder / "metrics.csv"
        rows = []
        if self.csv_path.exists():
            with self.csv_path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) < start_step]
        with self.csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder / "tb"), purge_step=start_step)
        except ImportError:  # tensorboard is a dependency; keep CSV if an environment lacks it
            log.warning("tensorboard is not installed: metrics go to metrics.csv only")

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        with self.csv_path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=CSV_FIELDS).writerow({"step": step, **values})
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.enabled and self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path | str, pairs: str) -> list[dict]:
    with (output_dir(run_dir, pairs) / "metrics.csv").open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


# -- the trainer -------------------------------------------------------------------------------------
def train(run_dir: Path | str, pairs: str | None = None, *, steps: int | None = None, overrides: dict | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train on `pairs/<pairs>` (default train.pairs) for train.steps optimizer steps, resuming if possible.

    `stop_after`: stop (with a checkpoint, as on SIGUSR2) once this many steps are done — for tests.
    """
    import deepspeed

    from ..models import build_pipeline, resolve_dtype
    from .export import gather_state_dict
    from .ref_cache import cache_key, load_or_build
    from .zero3 import copies_partitions, partitioned_copy

    begin = time.time()
    run = Run.open(run_dir)
    cfg = resolve_config(run, pairs, steps, overrides)
    tcfg, name = cfg.train, cfg.train.pairs
    out = output_dir(run.dir, name)
    # Every rank checks the pairs before any process group exists: a bad input fails alike on all ranks
    # (one rank raising while the others wait at a barrier would hang them until the gloo/NCCL timeout).
    index, winner, loser, margin, _ = read_pairs(run.store(mode="r"), name)
    if tcfg.loss in MARGIN_KINDS and np.isnan(margin).any():
        raise ConfigError(f"train.loss={tcfg.loss} needs target margins, but pairs/{name} has none "
                          f"(make the pairs with method capo or caen)")
    dist = Dist(tcfg.dist_timeout_minutes)
    rank, world, device = dist.rank, dist.world, dist.device
    dtype = resolve_dtype(cfg.model.dtype)
    try:
        # Data: the ranks encode the pairs once with the frozen VAE and text encoders (the transformer is
        # not loaded for it), outside any zero.Init, each a share of the chunks.
        store = run.store()
        # The margin is part of the cache: pairs remade under the same name with the same winners and
        # losers but another method (ensemble -> caen) must not reuse a cache holding the old margins.
        fingerprint = hashlib.sha1(index.tobytes() + winner.tobytes() + loser.tobytes()
                                   + margin.tobytes()).hexdigest()
        group = cache_group(name)
        cached = bool(group in store and store.root[group].attrs.get("complete") and
                      store.root[group].attrs.get("fingerprint") == fingerprint)
        dist.barrier()  # every rank has read the cache's state before rank 0 may delete it
        if not cached:
            if rank == 0:
                log.info("encoding %d pairs of %s into %s over %d process(es)", len(index), name, group, world)
            pipe = build_pipeline(cfg.model, device=device, max_sequence_length=cfg.sampling.max_sequence_length,
                                  with_transformer=False)
            build_cache(store, pipe, name, cfg.sampling.max_sequence_length, rank=rank, world=world, comm=dist,
                        chunk=tcfg.encode_batch, progress=True)
            del pipe
            if rank == 0:
                store.root[group].attrs["fingerprint"] = fingerprint
        dist.barrier()
        store = run.store()
        data = PairData(store, name)

        # Models: the initial weights are the policy's start and the frozen reference. Under ZeRO-3 (with
        # train.zero_init) both are built partitioned, so no rank ever holds a whole model.
        bf16 = dtype == torch.bfloat16
        ds_train = deepspeed_config(tcfg, world, bf16)
        # Resume: decided before the engine exists, since another world size needs a universal checkpoint
        # (converted once by rank 0) and an engine configured to load it.
        ckpt_dir = out / "checkpoints"
        resume, resume_tag = latest_checkpoint(ckpt_dir), None
        layout = Layout(0, world, tcfg.batch_size, tcfg.grad_accum)
        if resume is not None:
            resume_tag = resume.tag
            if resume.layout is not None and check_resumable(ckpt_dir, resume.layout, layout):
                error = None
                if rank == 0:
                    log.info("checkpoint %s was written by %d process(es), this run has %d: converting it to a "
                             "universal checkpoint", resume.tag, resume.layout.world, world)
                    try:
                        to_universal(ckpt_dir, resume.tag)
                    except Exception as exc:  # noqa: BLE001 - every rank stops, this one with the reason
                        error = exc
                all_ok(dist, error, rank, f"converting {resume.tag} to a universal checkpoint")
                resume_tag = resume.tag + UNIVERSAL_SUFFIX
                ds_train["checkpoint"] = {**ds_train.get("checkpoint", {}), "load_universal": True}
        ds_frozen = deepspeed_config(tcfg, world, bf16, with_optimizer=False)
        zero_init = tcfg.zero_stage == 3 and tcfg.zero_init
        # The model family (FLUX.1 Fill: flow matching; BrushNet: DDPM on a frozen U-Net, fyp.dpo.family)
        # supplies the policy, the draws, the predictions and the export.
        family = training_family(cfg)
        transformer, scheduler_config = family.load(cfg, ds_train if zero_init else None)
        family.to_device(device, dtype)
        if zero_init:
            held = sum(p.ds_tensor.numel() for p in transformer.parameters())
            log.info("transformer built partitioned (deepspeed.zero.Init): %d parameters, %d on rank %d",
                     sum(p.ds_numel for p in transformer.parameters()), held, rank)
        else:
            transformer.to(device=device, dtype=dtype)
        shared_noise = tcfg.loss not in MARGIN_KINDS
        draw_kw = dict(seed=tcfg.seed, sampling=tcfg.timestep_sampling, shared_noise=shared_noise)
        ref_model = None
        if not tcfg.ref_cache:
            if not zero_init:
                ref_model = copy.deepcopy(transformer)
            elif copies_partitions(ds_frozen):
                ref_model = partitioned_copy(transformer, ds_frozen)
            else:  # NVMe-offloaded partitions: build the reference from the weights again
                ref_model = family.load(cfg, ds_frozen)[0]
            ref_model.requires_grad_(False).eval()
        lora = family.set_trainable(transformer, tcfg)
        if tcfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()

        trainable = [p for p in transformer.parameters() if p.requires_grad]
        engine, _, _, _ = deepspeed.initialize(
            model=transformer, model_parameters=trainable, config=ds_train,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_lambda(s, tcfg.warmup_steps, tcfg.steps, tcfg.lr_schedule)),
        )
        if ref_model is not None and tcfg.zero_stage == 3:
            # The reference sharded like the policy, no optimizer: ZeRO-3 gathers it layer by layer.
            ref_model, _, _, _ = deepspeed.initialize(model=ref_model, config=ds_frozen)
            ref_model.eval()
        ref_cache = None
        if tcfg.ref_cache:
            # The policy engine before any step (and before resume) is the reference. LoRA adds a zero
            # (lora_B starts at 0); gradient checkpointing is inactive under no_grad.
            key = cache_key(seed=tcfg.seed, sampling=tcfg.timestep_sampling, shared_noise=shared_noise,
                            mask_loss=tcfg.mask_loss, normalize=tcfg.normalize)
            engine.eval()
            ref_cache = load_or_build(store, data, engine, epochs=epochs_needed(tcfg, world, data.num_pairs),
                                      key=key, batch_size=tcfg.batch_size, scheduler_config=scheduler_config,
                                      device=device, dtype=dtype, rank=rank, world=world,
                                      family=family, barrier=dist.barrier,
                                      all_reduce=dist.all_reduce, lockstep=tcfg.zero_stage == 3)
            engine.train()

        # Resume: DeepSpeed restores weights, optimizer and LR schedule; draws and order are stateless.
        start = 0
        if resume_tag is not None:
            _, client = engine.load_checkpoint(str(ckpt_dir), tag=resume_tag)
            start = int(client["step"])
            if resume.layout is None:  # written before layout.json: the same layout only
                saved = Layout(start, int(client.get("world", 0)), *client.get("batch", [0, 0]))
                if saved.world != world:
                    raise ConfigError(f"checkpoint in {ckpt_dir} was made with world {saved.world} and has no "
                                      f"{LAYOUT_NAME}; resume it with world {saved.world}")
                check_resumable(ckpt_dir, saved, layout)
            log.info("resumed %s at step %d from %s", ckpt_dir, start, resume_tag)

        def save(step: int) -> Path:
            tag = f"step-{step:06d}"
            engine.save_checkpoint(str(ckpt_dir), tag=tag,
                                   client_state=dict(step=step, world=world, batch=[tcfg.batch_size, tcfg.grad_accum]))
            if rank == 0:
                write_layout(ckpt_dir / tag, Layout(step, world, tcfg.batch_size, tcfg.grad_accum))
            dist.barrier()
            return ckpt_dir / tag

        metrics_log = MetricsLog(out, start, enabled=rank == 0)
        mask_on = tcfg.mask_loss
        last: dict = {}
        for step in range(start, tcfg.steps):
            tick = time.time()
            lr = float(engine.get_lr()[0])
            sums = torch.zeros(len(METRIC_NAMES), dtype=torch.float64)
            for micro in range(tcfg.grad_accum):
                rows, epochs = global_indices(step, micro, rank, world=world, batch=tcfg.batch_size,
                                              grad_accum=tcfg.grad_accum, num_pairs=data.num_pairs, seed=tcfg.seed)
                batch = data.batch(rows, device, dtype)
                draw = family.draw(rows, epochs, data, **draw_kw)
                pred_w, pred_l, target_w, target_l = family.predict_pair(engine, batch, draw, device, dtype)
                ref = dict(ref_w=None, ref_l=None)
                if ref_cache is not None:
                    ref["ref_loss_w"], ref["ref_loss_l"] = ref_cache.lookup(rows, epochs, device)
                else:
                    with torch.no_grad():
                        ref["ref_w"], ref["ref_l"] = family.predict_pair(ref_model, batch, draw, device, dtype)[:2]
                terms = preference_terms(pred_w, pred_l, target_w=target_w, target_l=target_l, beta=tcfg.beta,
                                         kind=tcfg.loss, mask=batch.loss_mask if mask_on else None,
                                         margin=batch.margin if tcfg.loss in MARGIN_KINDS else None,
                                         normalize=tcfg.normalize, **ref)
                engine.backward(terms.loss)
                if micro == tcfg.grad_accum - 1 and tcfg.zero_stage == 0:
                    grad_norm = unsharded_grad_norm(transformer)  # DeepSpeed reports none without ZeRO
                engine.step()
                values = preference_metrics(terms)
                sums += torch.stack([values[k].double().cpu() for k in METRIC_NAMES])
            means = dist.all_reduce(sums) / (tcfg.grad_accum * world)
            seconds = time.time() - tick
            if tcfg.zero_stage > 0:
                grad_norm = engine.get_global_grad_norm()
            last = {k: float(v) for k, v in zip(METRIC_NAMES, means)}
            last.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"), lr=lr,
                        pairs_per_s=tcfg.batch_size * tcfg.grad_accum * world / seconds, step_seconds=seconds)
            metrics_log.write(step, last)
            done = step + 1
            if tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0 and done < tcfg.steps:
                save(done)
            stop = _STOP.is_set() or (stop_after is not None and done >= stop_after and done < tcfg.steps)
            if dist.all_reduce(torch.tensor([float(stop)]), op="max").item() > 0 and done < tcfg.steps:
                path = save(done)
                metrics_log.close()
                _STOP.clear()
                # Every rank has its checkpoint on disk before any exits: under `srun --kill-on-bad-exit`
                # the first rank to exit (code 75) ends the others.
                dist.barrier()
                raise TrainingPreempted(done, path)
        metrics_log.close()

        exported = None
        if tcfg.export:
            state = gather_state_dict(engine, tcfg.zero_stage)
            if rank == 0:
                config = dict(engine.module.config)
                exported = str(family.export(state, config, export_dir(run.dir, name), dtype, lora))
            dist.barrier()
        result = TrainResult(name, tcfg.steps, start, time.time() - begin, last, exported)
        if rank == 0:
            atomic_write_text(out / "done.json", json.dumps(asdict(result), indent=1))
        return result
    finally:
        dist.close()


# -- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fyp.dpo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", "--run", dest="run", required=True,
                        help="the run directory (prepared, sampled, scored, paired); under torchrun write "
                             "--run-dir (torchrun's own parser claims the prefix --run)")
    parser.add_argument("--pairs", help="pairs/<NAME> to train on (default: train.pairs)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: train.steps)")
    parser.add_argument("--set", action="append", default=[], metavar="train.KEY=VALUE",
                        help="override a train setting, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--stop-after", type=int, help="checkpoint and stop after this many steps (testing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides: dict = {}
    for text in args.set:
        parsed = parse_override(text)
        if list(parsed) != ["train"]:
            raise SystemExit(f"--set accepts train.* keys only, got {text!r}")
        overrides.update(parsed["train"])
    install_signal_handler()
    try:
        result = train(args.run, args.pairs, steps=args.steps, overrides=overrides, stop_after=args.stop_after)
    except TrainingPreempted as exc:
        log.warning("%s", exc)
        return REQUEUE_EXIT_CODE
    except (ConfigError, PairsError, StoreError, FileNotFoundError) as exc:
        print(f"fyp.dpo.train: {exc}", file=sys.stderr)  # bad input: one line, no traceback
        return 2
    except PeerFailed as exc:  # the failing rank printed its own error
        print(f"fyp.dpo.train: {exc}", file=sys.stderr)
        return 1
    log.info("trained %s for %d steps in %.1fs: %s", result.pairs, result.steps, result.seconds,
             ", ".join(f"{k}={v:.4g}" for k, v in result.last.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
