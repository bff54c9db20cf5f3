"""The reference-loss cache: L_ref(w), L_ref(l) for the exact (t, noise) draws training will make.

The paper's code keeps a second full copy of the 12B model on every GPU to compute the reference
losses. The reference is frozen and the draws are a pure function of (seed, epoch, pair) (see
`fyp.dpo.flow`), so the reference losses of every (epoch, pair) can be computed once, before training,
by the initial policy itself, and training then runs without any reference model.

    train/<name>/ref_loss_w  float32 [E, P]   L_ref(winner) of pair p's draw in epoch e
    train/<name>/ref_loss_l  float32 [E, P]
    attrs ref_cache: the draw settings the cache was made with (seed, timestep sampling, shared noise,
                     mask, normalize, epochs); a cache whose settings differ is recomputed.

The trainer fills it with the policy's DeepSpeed engine before the first step (the initial weights):
each process computes every W-th chunk of pairs; an all-reduce (sum) joins them and rank 0 writes. Under
ZeRO-3 every forward all-gathers the parameters, a collective, so the processes go in `lockstep`: each
makes the same number of forwards (a process out of chunks repeats its last one and drops the result).
Cost: E * P reference forwards, the same number training would make, but without the reference's
memory during training.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import PairData, cache_group
from .losses import denoising_loss


def cache_key(*, seed: int, sampling: str, shared_noise: bool, mask_loss: bool, normalize: str) -> dict:
    return dict(seed=int(seed), sampling=sampling, shared_noise=bool(shared_noise), mask_loss=bool(mask_loss),
                normalize=normalize)


@torch.no_grad()
def reference_losses(transformer, data: PairData, pairs: list[int], epochs: list[int], *, seed: int,
                     scheduler_config, sampling: str, shared_noise: bool, mask_loss: bool, normalize: str,
                     device, dtype, guidance_embeds: bool = True, family=None) -> tuple[torch.Tensor, torch.Tensor]:
    """L_ref(w), L_ref(l) [B] of these pairs' draws: the same computation the live reference does.

    `family` (fyp.dpo.family) makes the draws and predictions; None: FLUX with `scheduler_config`.
    """
    from .family import FluxFamily

    family = family or FluxFamily(scheduler_config=scheduler_config, guidance_embeds=guidance_embeds)
    batch = data.batch(pairs, device, dtype)
    draw = family.draw(pairs, epochs, data, seed=seed, sampling=sampling, shared_noise=shared_noise)
    pred_w, pred_l, target_w, target_l = family.predict_pair(transformer, batch, draw, device, dtype)
    mask = batch.loss_mask if mask_loss else None
    return denoising_loss(pred_w, target_w, mask, normalize), denoising_loss(pred_l, target_l, mask, normalize)


class RefLossCache:
    """Lookup of cached reference losses by (pair, epoch)."""

    def __init__(self, loss_w: torch.Tensor, loss_l: torch.Tensor):
        self.loss_w, self.loss_l = loss_w, loss_l

    @property
    def epochs(self) -> int:
        return self.loss_w.shape[0]

    def lookup(self, pairs: list[int], epochs: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        if max(epochs) >= self.epochs:
            raise IndexError(f"the reference-loss cache holds {self.epochs} epochs; epoch {max(epochs)} was asked for")
        e, p = torch.tensor(epochs), torch.tensor(pairs)
        return self.loss_w[e, p].to(device), self.loss_l[e, p].to(device)


def load_or_build(store, data: PairData, transformer, *, epochs: int, key: dict, batch_size: int,
                  scheduler_config, device, dtype, rank: int = 0, world: int = 1, guidance_embeds: bool = True,
                  family=None,
                  barrier=lambda: None, all_reduce=lambda t: t, lockstep: bool = False) -> RefLossCache:
    """The cache for `epochs` epochs under `key`: read if the store holds a matching one, else computed.

    `lockstep`: every rank makes the same number of forwards (needed when a forward is a collective, ZeRO-3).
    """
    group = cache_group(data.name)
    attrs = dict(store.root[group].attrs).get("ref_cache")
    if attrs and {k: attrs.get(k) for k in key} == key and attrs.get("epochs", 0) >= epochs:
        return RefLossCache(torch.from_numpy(store[f"{group}/ref_loss_w"][:epochs]),
                            torch.from_numpy(store[f"{group}/ref_loss_l"][:epochs]))
    num = data.num_pairs
    loss_w = torch.zeros(epochs, num, dtype=torch.float32)
    loss_l = torch.zeros(epochs, num, dtype=torch.float32)
    chunks = [(epoch, start) for epoch in range(epochs) for start in range(0, num, batch_size)]
    mine = chunks[rank::world]
    rounds = -(-len(chunks) // world) if lockstep else len(mine)
    for i in range(rounds):
        epoch, start = mine[min(i, len(mine) - 1)] if mine else chunks[0]
        pairs = list(range(start, min(num, start + batch_size)))
        lw, ll = reference_losses(transformer, data, pairs, [epoch] * len(pairs), seed=key["seed"],
                                  scheduler_config=scheduler_config, sampling=key["sampling"],
                                  shared_noise=key["shared_noise"], mask_loss=key["mask_loss"],
                                  normalize=key["normalize"], device=device, dtype=dtype,
                                  guidance_embeds=guidance_embeds, family=family)
        if i < len(mine):  # a lockstep filler's result is dropped
            loss_w[epoch, pairs] = lw.float().cpu()
            loss_l[epoch, pairs] = ll.float().cpu()
    loss_w, loss_l = all_reduce(loss_w), all_reduce(loss_l)
    if rank == 0:
        for name, value in (("ref_loss_w", loss_w), ("ref_loss_l", loss_l)):
            path = f"{group}/{name}"
            if path in store:
                del store.root[path]
            store.create_array(path, shape=tuple(value.shape), chunks=tuple(value.shape), dtype=np.float32,
                               fill_value=0)[:] = value.numpy()
        store.root[group].attrs["ref_cache"] = dict(key, epochs=int(epochs))
    barrier()
    return RefLossCache(loss_w, loss_l)
