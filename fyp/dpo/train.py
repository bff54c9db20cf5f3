"""Preference training (Diffusion-DPO / IPO / CaPO / CaEN) of FLUX.1 Fill or BrushNet with DeepSpeed.

Reads top to bottom: configuration and processes; what is built before the loop (`build`: the latent
cache, policy and reference or reference-loss cache, DeepSpeed engines, loss backend, resume); the step
(`train_step`); checkpoints and export; `train()` puts them together. What is particular to a model
family (encoding the pairs, loading the model, the draws, noising, targets and forward) sits behind
`fyp.dpo.family` (FLUX.1 Fill: `fyp.dpo.flow.FluxFill`; BrushNet: `fyp.dpo.ddpm.BrushNet`).

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
from typing import Callable

import numpy as np
import torch

from ..config import ConfigError, RunConfig, TrainConfig, check, from_dict, merge, parse_overrides
from ..hold import hold_point
from ..run import Run, atomic_write_text
from ..store import StoreError
from . import launch
from .checkpoints import Checkpoints, Layout, UntrustedCheckpoint
from .data import PairData, PairsError, PeerFailed, read_pairs
from .family import ModelFamily, Objective, model_family
from .losses import MARGIN_KINDS, PreferenceTerms, loss_backend
from .metrics import METRIC_NAMES, preference_metrics

log = logging.getLogger("fyp.dpo")

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "checkpointed, run me again"
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
    """Every train setting against its type in fyp.config (allowed values, bounds): one line if bad."""
    check(cfg, "train")


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
    cfg = from_dict(merge(raw, {"train": over}))  # the same types and coercion as at prepare
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

    def gather(self, obj) -> list:
        """`obj` of every rank, in rank order (small picklable objects between this job's own processes)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


# -- models ------------------------------------------------------------------------------------------
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
    return merge(ds, extra)  # e.g. {zero_optimization: {reduce_bucket_size: 5.0e+7}}


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


# -- built before the loop ---------------------------------------------------------------------------
def pairs_fingerprint(run: Run, cfg: RunConfig) -> str:
    """Check the pairs and fingerprint them with what the latent cache depends on.

    Called by every rank before any process group exists: a bad input fails alike on all ranks (one rank
    raising while the others wait at a barrier would hang them until the gloo/NCCL timeout). The margin
    is part of the fingerprint: pairs remade under the same name with the same winners and losers but
    another method (ensemble -> caen) must not reuse a cache holding the old margins; so is the hole's
    downsampling, which the cache stores.
    """
    tcfg, name = cfg.train, cfg.train.pairs
    index, winner, loser, margin, _ = read_pairs(run.store(mode="r"), name)
    if tcfg.loss in MARGIN_KINDS and np.isnan(margin).any():
        raise ConfigError(f"train.loss={tcfg.loss} needs target margins, but pairs/{name} has none "
                          f"(make the pairs with method capo or caen)")
    return hashlib.sha1(index.tobytes() + winner.tobytes() + loser.tobytes() + margin.tobytes()
                        + tcfg.mask_downsample.encode()).hexdigest()


def latent_cache(run: Run, cfg: RunConfig, family: ModelFamily, dist: Dist, fingerprint: str) -> PairData:
    """The encoded pairs: reused when the store holds a complete cache of the same pairs, else encoded
    once by the ranks (each a share of the chunks) with the frozen encoders, outside any zero.Init."""
    name, store = cfg.train.pairs, run.store()
    group = store.train_cache(name)
    cached = bool(group.attrs.get("complete") and group.attrs.get("fingerprint") == fingerprint)
    dist.barrier()  # every rank has read the cache's state before rank 0 may delete it
    if not cached:
        if dist.rank == 0:
            log.info("encoding pairs of %s into %s over %d process(es)", name, group, dist.world)
        family.encode_pairs(store, name, device=dist.device, rank=dist.rank, world=dist.world, comm=dist)
        if dist.rank == 0:
            group.update_attrs(fingerprint=fingerprint)
    dist.barrier()
    return family.open_pairs(run.store(), name)


@dataclass
class Models:
    policy: torch.nn.Module  # trainable (frozen parts per train.trainable), not yet wrapped by DeepSpeed
    scheduler_config: dict
    reference: torch.nn.Module | None  # the frozen initial weights; None with train.ref_cache
    lora: dict | None  # the LoRA config (for export) when train.trainable is lora


def build_models(cfg: RunConfig, family: ModelFamily, dist: Dist, ds_train: dict, ds_frozen: dict) -> Models:
    """The policy and the frozen reference from the initial weights. Under ZeRO-3 with train.zero_init
    both are built partitioned, so no rank ever holds a whole model."""
    from ..models import resolve_dtype
    from .zero3 import copies_partitions, partitioned_copy

    tcfg = cfg.train
    zero_init = tcfg.zero_stage == 3 and tcfg.zero_init
    policy, scheduler_config = family.load_model(ds_train if zero_init else None)
    if zero_init:
        held = sum(p.ds_tensor.numel() for p in policy.parameters())
        log.info("policy built partitioned (deepspeed.zero.Init): %d parameters, %d on rank %d",
                 sum(p.ds_numel for p in policy.parameters()), held, dist.rank)
    else:
        policy.to(device=dist.device, dtype=resolve_dtype(cfg.model.dtype))
    reference = None
    if not tcfg.ref_cache:  # copied before LoRA or freezing touch the policy
        if not zero_init:
            reference = copy.deepcopy(policy)
        elif copies_partitions(ds_frozen):
            reference = partitioned_copy(policy, ds_frozen)
        else:  # NVMe-offloaded partitions: build the reference from the weights again
            reference = family.load_model(ds_frozen)[0]
        reference.requires_grad_(False).eval()
    lora = family.set_trainable(policy, tcfg)
    if tcfg.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    policy.train()
    return Models(policy, scheduler_config, reference, lora)


def build_engine(tcfg: TrainConfig, policy: torch.nn.Module, ds_train: dict):
    """The policy's DeepSpeed engine: ZeRO, AdamW over the trainable parameters, warm-up and LR schedule."""
    import deepspeed

    trainable = [p for p in policy.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=policy, model_parameters=trainable, config=ds_train,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, tcfg.warmup_steps, tcfg.steps, tcfg.lr_schedule)),
    )
    return engine


class LiveReference:
    """The frozen reference model, run on the step's noisy inputs."""

    def __init__(self, model, objective: Objective):
        self.model, self.objective = model, objective

    def terms(self, rows: list[int], epochs: list[int], noised) -> dict:
        with torch.no_grad():
            ref_w, ref_l = self.objective.predict(self.model, noised)
        return dict(ref_w=ref_w, ref_l=ref_l)


class CachedReference:
    """The reference's losses looked up in the reference-loss cache (no reference model)."""

    def __init__(self, cache, device):
        self.cache, self.device = cache, device

    def terms(self, rows: list[int], epochs: list[int], noised) -> dict:
        ref_loss_w, ref_loss_l = self.cache.lookup(rows, epochs, self.device)
        return dict(ref_w=None, ref_l=None, ref_loss_w=ref_loss_w, ref_loss_l=ref_loss_l)


def build_reference(cfg: RunConfig, models: Models, engine, objective: Objective, data: PairData, store,
                    dist: Dist, ds_frozen: dict) -> LiveReference | CachedReference:
    import deepspeed

    from ..models import resolve_dtype
    from .ref_cache import load_or_build

    tcfg = cfg.train
    if not tcfg.ref_cache:
        reference = models.reference
        if tcfg.zero_stage == 3:  # sharded like the policy, no optimizer: ZeRO-3 gathers it layer by layer
            reference, _, _, _ = deepspeed.initialize(model=reference, config=ds_frozen)
            reference.eval()
        return LiveReference(reference, objective)
    # The policy engine before any step (and before resume) is the reference. LoRA adds a zero (lora_B
    # starts at 0); gradient checkpointing is inactive under no_grad.
    engine.eval()
    cache = load_or_build(store, data, engine, objective, epochs=epochs_needed(tcfg, dist.world, data.num_pairs),
                          mask_loss=tcfg.mask_loss, normalize=tcfg.normalize, batch_size=tcfg.batch_size,
                          device=dist.device, dtype=resolve_dtype(cfg.model.dtype), rank=dist.rank,
                          world=dist.world, barrier=dist.barrier, all_reduce=dist.all_reduce,
                          lockstep=tcfg.zero_stage == 3)
    engine.train()
    return CachedReference(cache, dist.device)


@dataclass
class Trainer:
    """Everything built before the loop."""

    cfg: RunConfig
    dist: Dist
    out: Path  # <run>/train/<pairs>
    data: PairData
    engine: object  # the policy's DeepSpeed engine
    objective: Objective  # the model family's draws, noising, targets and forward
    reference: LiveReference | CachedReference
    loss_fn: Callable[..., PreferenceTerms]  # train.loss_backend's preference_terms
    checkpoints: Checkpoints
    start: int  # the first step to run (> 0 when resumed)
    lora: dict | None
    dtype: torch.dtype
    family: ModelFamily


def build(run: Run, cfg: RunConfig, dist: Dist, fingerprint: str) -> Trainer:
    """Latent cache, models, DeepSpeed engines, reference, loss backend, resume: in that order."""
    from ..models import resolve_dtype

    tcfg = cfg.train
    out = output_dir(run.dir, tcfg.pairs)
    backend, loss_fn = loss_backend(tcfg.loss_backend, dist.device)
    if dist.rank == 0:
        log.info("preference loss: %s (train.loss_backend=%s)", backend, tcfg.loss_backend)
    family = model_family(cfg)
    data = latent_cache(run, cfg, family, dist, fingerprint)
    dtype = resolve_dtype(cfg.model.dtype)
    ds_train = deepspeed_config(tcfg, dist.world, dtype == torch.bfloat16)
    ds_frozen = deepspeed_config(tcfg, dist.world, dtype == torch.bfloat16, with_optimizer=False)
    # The resume is planned before the engine exists: another world size needs a universal checkpoint
    # (converted once by rank 0) and an engine configured to load it.
    checkpoints = Checkpoints(out / "checkpoints", Layout(0, dist.world, tcfg.batch_size, tcfg.grad_accum), dist)
    checkpoints.plan_resume(ds_train)
    models = build_models(cfg, family, dist, ds_train, ds_frozen)
    engine = build_engine(tcfg, models.policy, ds_train)
    objective = family.objective(models.policy, models.scheduler_config, data,
                                 shared_noise=tcfg.loss not in MARGIN_KINDS, device=dist.device, dtype=dtype)
    reference = build_reference(cfg, models, engine, objective, data, run.store(), dist, ds_frozen)
    start = checkpoints.load(engine)  # weights, optimizer, LR schedule; draws and order are stateless
    return Trainer(cfg, dist, out, data, engine, objective, reference, loss_fn, checkpoints, start, models.lora,
                   dtype, family)


# -- the step ----------------------------------------------------------------------------------------
def train_step(t: Trainer, step: int) -> dict:
    """One optimizer step over train.grad_accum micro-batches; the metrics averaged over every rank."""
    tcfg, dist = t.cfg.train, t.dist
    tick = time.time()
    lr = float(t.engine.get_lr()[0])
    sums = torch.zeros(len(METRIC_NAMES), dtype=torch.float64)
    grad_norm = None
    for micro in range(tcfg.grad_accum):
        rows, epochs = global_indices(step, micro, dist.rank, world=dist.world, batch=tcfg.batch_size,
                                      grad_accum=tcfg.grad_accum, num_pairs=t.data.num_pairs, seed=tcfg.seed)
        batch = t.data.batch(rows, dist.device, t.dtype)
        noised = t.objective.noised(batch, rows, epochs)
        pred_w, pred_l = t.objective.predict(t.engine, noised)  # winner and loser in one batch of 2B
        terms = t.loss_fn(pred_w, pred_l, target_w=noised.target_w, target_l=noised.target_l, beta=tcfg.beta,
                          kind=tcfg.loss, mask=batch.loss_mask if tcfg.mask_loss else None,
                          margin=batch.margin if tcfg.loss in MARGIN_KINDS else None, normalize=tcfg.normalize,
                          **t.reference.terms(rows, epochs, noised))
        t.engine.backward(terms.loss)
        if micro == tcfg.grad_accum - 1 and tcfg.zero_stage == 0:
            grad_norm = unsharded_grad_norm(t.engine.module)  # DeepSpeed reports none without ZeRO
        t.engine.step()
        values = preference_metrics(terms)
        sums += torch.stack([values[k].double().cpu() for k in METRIC_NAMES])
    means = dist.all_reduce(sums) / (tcfg.grad_accum * dist.world)
    seconds = time.time() - tick
    if tcfg.zero_stage > 0:
        grad_norm = t.engine.get_global_grad_norm()
    metrics = {k: float(v) for k, v in zip(METRIC_NAMES, means)}
    metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"), lr=lr,
                   pairs_per_s=tcfg.batch_size * tcfg.grad_accum * dist.world / seconds, step_seconds=seconds)
    return metrics


# -- checkpoints and export --------------------------------------------------------------------------
def checkpoint_or_stop(t: Trainer, done: int, stop_after: int | None, metrics_log: MetricsLog) -> None:
    """Checkpoint every train.checkpoint_every steps; on a stop request agreed by every rank (or at
    `stop_after`), checkpoint and raise TrainingPreempted."""
    steps = t.cfg.train.steps
    every = t.cfg.train.checkpoint_every
    if every and done % every == 0 and done < steps:
        t.checkpoints.save(t.engine, done)
    stop = _STOP.is_set() or (stop_after is not None and done >= stop_after and done < steps)
    if t.dist.all_reduce(torch.tensor([float(stop)]), op="max").item() > 0 and done < steps:
        path = t.checkpoints.save(t.engine, done)
        metrics_log.close()
        _STOP.clear()
        # Every rank has its checkpoint on disk before any exits: under `srun --kill-on-bad-exit` the first
        # rank to exit (code 75) ends the others.
        t.dist.barrier()
        raise TrainingPreempted(done, path)


def export(t: Trainer, run: Run) -> str | None:
    """The aligned model as its family writes it (gathered to rank 0 under ZeRO-3; LoRA fused): FLUX's
    transformer as a diffusers folder, BrushNet's branch in the official layout."""
    from .export import gather_state_dict

    if not t.cfg.train.export:
        return None
    state = gather_state_dict(t.engine, t.cfg.train.zero_stage)
    exported = None
    if t.dist.rank == 0:
        exported = str(t.family.export(state, dict(t.engine.module.config), export_dir(run.dir, t.cfg.train.pairs),
                                       t.dtype, t.lora))
    t.dist.barrier()
    return exported


# -- the trainer -------------------------------------------------------------------------------------
def train(run_dir: Path | str, pairs: str | None = None, *, steps: int | None = None, overrides: dict | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train on `pairs/<pairs>` (default train.pairs) for train.steps optimizer steps, resuming if possible.

    `stop_after`: stop (with a checkpoint, as on SIGUSR2) once this many steps are done — for tests.
    """
    begin = time.time()
    run = Run.open(run_dir)
    cfg = resolve_config(run, pairs, steps, overrides)
    fingerprint = pairs_fingerprint(run, cfg)
    dist = Dist(cfg.train.dist_timeout_minutes)
    try:
        t = build(run, cfg, dist, fingerprint)
        metrics_log = MetricsLog(t.out, t.start, enabled=dist.rank == 0)
        last: dict = {}
        for step in range(t.start, cfg.train.steps):
            last = train_step(t, step)
            metrics_log.write(step, last)
            checkpoint_or_stop(t, step + 1, stop_after, metrics_log)
        metrics_log.close()
        result = TrainResult(cfg.train.pairs, cfg.train.steps, t.start, time.time() - begin, last, export(t, run))
        if dist.rank == 0:
            hold_point(run.dir, "train.export")  # exported, done.json not yet
            atomic_write_text(t.out / "done.json", json.dumps(asdict(result), indent=1))
        return result
    finally:
        dist.close()


# -- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fyp.dpo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", "--run", dest="run", required=True,
                        help="the run directory (prepared, sampled, scored, paired); under torchrun write "
                             "--run-dir (torchrun's own parser claims the prefix --run)")
    from .stage import TrainStage  # one table of options: the CLI, this launcher and the chain

    for option in TrainStage.options:
        parser.add_argument(option.flag, **option.kwargs)
    parser.add_argument("--stop-after", type=int, help="checkpoint and stop after this many steps (testing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install_signal_handler()
    try:
        overrides = parse_overrides(args.set, section="train")
        result = train(args.run, args.pairs, steps=args.steps, overrides=overrides, stop_after=args.stop_after)
    except TrainingPreempted as exc:
        log.warning("%s", exc)
        return REQUEUE_EXIT_CODE
    except (ConfigError, PairsError, StoreError, UntrustedCheckpoint, FileNotFoundError) as exc:
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
