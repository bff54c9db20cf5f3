"""The seam between the trainer and a model family (`model.kind`): what differs from model to model.

The trainer (`fyp.dpo.train`) owns the processes, DeepSpeed, the reference, the loss, checkpoints and
the data order; a family owns how pairs are encoded into the latent cache, how the trainable model is
loaded, and the objective of one step: the draws (t, noise), the noisy inputs and the targets, and the
model's forward, which parameters train, and the export. FLUX.1 Fill (flow matching, velocity target)
is `fyp.dpo.flow.FluxFill`; BrushNet (DDPM, epsilon target, the branch trained on a frozen SD1.5 U-Net)
is `fyp.dpo.ddpm.BrushNet`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch


class Objective(Protocol):
    """One step's model-specific part; every draw is a pure function of (seed, epoch, pair)."""

    def key(self) -> dict:
        """The settings the draws depend on (keys the reference-loss cache)."""

    def noised(self, batch, pairs: list[int], epochs: list[int]):
        """The batch's noisy inputs for winner and loser and their targets (`.target_w`, `.target_l`)."""

    def predict(self, model, noised) -> tuple[torch.Tensor, torch.Tensor]:
        """(winner, loser) predictions of `model` on `noised`, shaped like the targets."""


class ModelFamily(Protocol):
    kind: str

    def encode_pairs(self, store, name: str, *, device, rank: int, world: int, comm) -> None:
        """Fill the latent cache `train/<name>` (fyp.dpo.data) with every usable pair, shared over the ranks."""

    def open_pairs(self, store, name: str):
        """The encoded pairs (like fyp.dpo.data.PairData): `num_pairs` and `batch(rows, device, dtype)`, whose
        batches carry at least `loss_mask` (the hole, broadcastable to the predictions) and `margin` [B]."""

    def load_model(self, zero_init: dict | None = None) -> tuple[torch.nn.Module, dict]:
        """(the initial trainable model, the scheduler config); partitioned under `zero_init` (ZeRO-3)."""

    def objective(self, model, scheduler_config: dict, data, *, shared_noise: bool, device, dtype) -> Objective:
        """The step's objective for this model and the encoded pairs `data` (fyp.dpo.data.PairData)."""

    def set_trainable(self, policy: torch.nn.Module, tcfg) -> dict | None:
        """Freeze per `train.trainable`; returns the LoRA config dict (for export) when LoRA is used."""

    def export(self, state: dict, config: dict, out_dir: Path, dtype: torch.dtype, lora: dict | None) -> Path:
        """Write the trained model (full state dict `state`, its `config`) where eval loads it."""


def model_family(cfg) -> ModelFamily:
    """The family of `cfg.model.kind` (cfg: the RunConfig)."""
    from .ddpm import BrushNet
    from .flow import FluxFill

    families = {FluxFill.kind: FluxFill, BrushNet.kind: BrushNet}
    if cfg.model.kind not in families:
        from ..config import ConfigError

        raise ConfigError(f"training has no model family {cfg.model.kind!r}; valid: {', '.join(families)}")
    return families[cfg.model.kind](cfg)
