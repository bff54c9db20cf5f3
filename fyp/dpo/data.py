"""The training set of preference pairs: read from `pairs/<name>`, encoded once into `train/<name>/` of the store.

Cache layout (written by the train task's ranks before training, chunks of pairs dealt round-robin;
P = number of usable pairs):

    train/<name>/sample       int64   [P]         sample index n of each pair
    train/<name>/latent_w     float32 [P, L, 4C]  packed VAE latents (posterior mean) of the winner
    train/<name>/latent_l     float32 [P, L, 4C]  ... of the loser
    train/<name>/condition    float32 [P, L, 4C + 4s^2]  FLUX Fill condition (masked image + mask)
    train/<name>/loss_mask    float32 [P, L, 4]   the hole at latent resolution, packed (tile C times)
    train/<name>/prompt_embeds float32 [P, T, D]  T5 sequence embeddings
    train/<name>/pooled       float32 [P, Dp]     CLIP pooled embedding
    train/<name>/margin       float32 [P]         R(w) - R(l) from the pairs (NaN unless CaPO / CaEN)
    train/<name>/condition_l  (BrushNet only) the loser's own condition; there `condition` is the winner's,
                              and latents / conditions / loss_mask keep the [P, C, h, w] layout (not packed)
    attrs: complete, pairs, method, latent_hw, max_sequence_length

Winner and loser latents are the sampler's own final latents when the run saved them
(`sampling.save_latents`, `candidates/latent`): no VAE round trip, which matters for a VAE whose
decode(encode(x)) is far from x (the tiny random one); otherwise the candidate images are VAE-encoded.
`complete` is written last: a cache without it (a crash half-way) is rebuilt. The hole at latent
resolution (`train.mask_downsample`): "any" (default) makes a latent pixel hole when any pixel of its
s x s block is; "nearest" takes the block's top-left pixel, as `F.interpolate(mask, size=(h, w))` does in
the official code (a smaller hole: 11.2% vs 15.4% of the area on the test masks).
Pair order is the sample order; the trainer shuffles by index (`fyp.dpo.train.global_indices`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
from tqdm import tqdm

from ..config import MaskDownsample
from ..models import helpers
from ..store import RunStore, StoreError

ENCODE_CHUNK = 8  # pairs encoded per VAE / text-encoder call (train.encode_batch)


CACHE_KEYS = ("latent_w", "latent_l", "condition", "loss_mask", "prompt_embeds", "pooled")


class PairsError(RuntimeError):
    """The pairs to train on are missing or empty."""


@dataclass
class Batch:
    latent_w: torch.Tensor
    latent_l: torch.Tensor
    condition: torch.Tensor
    loss_mask: torch.Tensor  # [B, L, 4C]
    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    margin: torch.Tensor
    condition_l: torch.Tensor | None = None  # the loser's own condition (BrushNet); None = `condition`


def read_pairs(store: RunStore, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """(sample index, winner k, loser k, margin) of the usable pairs of `pairs/<name>`, and its attrs."""
    group = store.pairs(name)
    if "valid" not in group:
        have = store.pair_names()
        raise PairsError(f"the store has no pairs named {name!r} (has: {', '.join(have) or 'none'}); "
                         f"make them first (`python -m hpc.submit pairs --run <run> --method ... --name {name}`)")
    valid = group.valid[:].astype(bool)
    if "valid" in store.samples:
        valid &= store.samples.valid[:].astype(bool)
    winner, loser = group.winner[:], group.loser[:]
    valid &= (winner >= 0) & (loser >= 0) & (winner != loser)
    index = np.flatnonzero(valid)
    if index.size == 0:
        raise PairsError(f"{group} holds no usable pair; check the pairs stage's counts")
    margin = group.margin[:] if "margin" in group else np.full(len(valid), np.nan, np.float32)
    attrs = group.attrs
    return index, winner[index].astype(np.int64), loser[index].astype(np.int64), margin[index].astype(np.float32), attrs


MASK_DOWNSAMPLE = get_args(MaskDownsample)  # the allowed values live in fyp.config


def hole_at_latent(mask: np.ndarray, scale: int, mode: str = "any") -> np.ndarray:
    """uint8 [B,H,W] (1 = hole) -> float32 [B,1,h,w]: 1 where any pixel of the s x s block is hole ("any"),
    or where its top-left pixel is ("nearest": torch's nearest interpolation, src = floor(dst * s))."""
    if mode not in MASK_DOWNSAMPLE:
        raise ValueError(f"mask_downsample must be one of {', '.join(MASK_DOWNSAMPLE)}, got {mode!r}")
    if mode == "nearest":
        return (mask[:, ::scale, ::scale] > 0).astype(np.float32)[:, None]
    b, height, width = mask.shape
    blocks = mask.reshape(b, height // scale, scale, width // scale, scale)
    return (blocks.max(axis=(2, 4)) > 0).astype(np.float32)[:, None]


class PeerFailed(RuntimeError):
    """Another rank failed (its own log holds the error); this rank stops too."""


class _Alone:
    """The collectives of a single process (no process group)."""

    def barrier(self) -> None:
        pass

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor


def all_ok(comm, error: BaseException | None, rank: int, what: str) -> None:
    """Raise on every rank when any rank failed `what` (a rank raising alone would leave the others waiting
    at the next collective until the gloo / NCCL timeout)."""
    failed = comm.all_reduce(torch.tensor([0.0 if error is None else float(rank + 1)]), op="max")
    if error is not None:
        raise error
    if failed.item() > 0:
        raise PeerFailed(f"rank {int(failed.item()) - 1} failed while {what}; see its log")


def build_cache(store: RunStore, pipe, name: str, max_sequence_length: int, *, rank: int = 0, world: int = 1,
                comm=None, chunk: int = ENCODE_CHUNK, progress: bool = False, mask_downsample: str = "any",
                condition_per_side: bool = False) -> None:
    """Encode every usable pair once (winner, loser, condition, prompt) into `train/<name>/`.

    Over `world` processes (`comm`: barrier and all_reduce) the chunks of `chunk` pairs are dealt
    round-robin. Rank 0 first encodes chunk 0, which fixes the arrays' shapes, and creates them; every
    array has one pair per chunk, so the ranks never write the same zarr chunk. A chunk is encoded alike
    on any rank, so the cache does not depend on the number of processes. Rank 0 marks it complete last.
    """
    comm = comm or _Alone()
    index, winner, loser, margin, attrs = read_pairs(store, name)
    group = store.train_cache(name)
    count = len(index)
    scale = pipe.vae_scale_factor
    images, masks, prompts = store.candidates.image, store.samples.mask, store.samples.prompt
    sample_images = store.samples.image
    saved = store.candidates.latent if "latent" in store.candidates else None
    ops = helpers(pipe)  # the model family's encoders (FLUX.1 Fill or BrushNet)
    keys = CACHE_KEYS + (("condition_l",) if condition_per_side else ())
    arrays: dict = {}

    def put(key: str, start: int, value: torch.Tensor | np.ndarray) -> None:
        value = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if key not in arrays:
            arrays[key] = group.create_array(key, shape=(count, *value.shape[1:]),
                                             chunks=(1, *value.shape[1:]), dtype=value.dtype, fill_value=0)
        arrays[key][start:start + len(value)] = value

    def encode(start: int) -> None:
        rows = slice(start, min(count, start + chunk))
        samples = [int(n) for n in index[rows]]
        mask = np.stack([store.read_rows(masks, n) for n in samples])
        for key, side in (("latent_w", winner[rows]), ("latent_l", loser[rows])):
            if saved is not None:  # the sampler's own final latents: exactly what was decoded and scored
                latents = torch.from_numpy(np.stack([store.read_rows(saved, n)[int(k)]
                                                     for n, k in zip(samples, side)]).astype(np.float32))
            else:
                latents = ops.encode_image_latents(pipe, np.stack([store.read_rows(images, n)[int(k)]
                                                                   for n, k in zip(samples, side)]))
            put(key, start, ops.to_tokens(latents))
        if condition_per_side:  # BrushNet: winner and loser each conditioned on their own masked image
            for key, side in (("condition", winner[rows]), ("condition_l", loser[rows])):
                own = np.stack([store.read_rows(images, n)[int(k)] for n, k in zip(samples, side)])
                put(key, start, ops.encode_condition(pipe, own, mask))
        else:  # FLUX: the condition comes from the original (masked) sample image, as when sampling
            source = np.stack([store.read_rows(sample_images, n) for n in samples])
            put("condition", start, ops.encode_condition(pipe, source, mask))
        put("loss_mask", start, ops.to_tokens(torch.from_numpy(hole_at_latent(mask, scale, mask_downsample))))
        text = ops.encode_prompt(pipe, [str(store.read_rows(prompts, n)) for n in samples],
                                 max_sequence_length)
        put("prompt_embeds", start, text.prompt_embeds)
        put("pooled", start, text.pooled)

    starts = list(range(0, count, chunk))
    mine = starts[1:][(rank - 1) % world::world]  # rank 0 holds chunk 0 already
    bar = tqdm(total=len(starts), desc=f"encode {name}", unit="chunk", file=sys.stderr,
               disable=not progress or rank != 0)
    error = None
    if rank == 0:
        try:
            group.delete()  # an incomplete or stale cache: rebuild from scratch
            encode(0)
            put("sample", 0, index)
            put("margin", 0, margin)
        except Exception as exc:  # noqa: BLE001 - re-raised on this rank by all_ok
            error = exc
    all_ok(comm, error, rank, f"creating {group}")
    bar.update(1)
    if rank != 0:
        arrays.update({key: group[key] for key in keys})
    try:
        for start in mine:
            encode(start)
            bar.update(min(world, bar.total - bar.n))  # the other ranks advance alike
    except Exception as exc:  # noqa: BLE001
        error = exc
    bar.close()
    all_ok(comm, error, rank, f"encoding pairs into {group}")
    if rank == 0:
        latent_hw = [store.shape.height // scale, store.shape.width // scale]
        group.update_attrs(pairs=count, method=attrs.get("method", name), latent_hw=latent_hw,
                           max_sequence_length=int(max_sequence_length), mask_downsample=mask_downsample,
                           complete=True)
    comm.barrier()


class PairData:
    """Random access to the encoded pairs (read from the store's cache arrays, row by row)."""

    def __init__(self, store: RunStore, name: str):
        group = store.train_cache(name)
        if not group.attrs.get("complete", False):
            raise StoreError(f"{store.path} has no complete latent cache {group}; the train task builds it")
        self.name, self.store, self.group = name, store, group
        attrs = group.attrs
        self.num_pairs = int(attrs["pairs"])
        self.latent_hw = tuple(attrs["latent_hw"])
        keys = CACHE_KEYS + (("condition_l",) if "condition_l" in group else ())
        self._arrays = {key: group[key] for key in keys}
        self.margin = torch.from_numpy(group["margin"][:])
        self.samples = group["sample"][:]
        self.latent_tokens = self._arrays["latent_w"].shape[1:]  # (L, 4C)

    def batch(self, rows: list[int], device, dtype) -> Batch:
        def load(key):
            return torch.from_numpy(np.stack([self._arrays[key][r] for r in rows])).to(device=device, dtype=dtype)

        mask = load("loss_mask")
        if mask.dim() == 3:  # FLUX's packed [B, L, 4] hole: tile to the 4C channels of a token
            mask = mask.repeat(1, 1, self.latent_tokens[1] // 4)
        return Batch(load("latent_w"), load("latent_l"), load("condition"), mask,
                     load("prompt_embeds"), load("pooled"), self.margin[rows].to(device=device, dtype=torch.float32),
                     load("condition_l") if "condition_l" in self._arrays else None)
