"""The run store: the one module that owns the Zarr layout every stage reads and writes.

Layout (documented in docs/store.md; these paths are a contract between stages):

    samples/image    uint8  [N,H,W,3]     chunk (1,H,W,3)
    samples/mask     uint8  [N,H,W]       chunk (1,H,W)        1 = hole, 0 = keep
    samples/prompt   str    [N]           chunk (S,)
    samples/id       str    [N]           chunk (S,)
    samples/valid    bool   [N]           chunk (S,)
    samples/reason   str    [N]           chunk (S,)           why a sample is invalid ("" if valid)
    samples/done     bool   [N]           chunk (S,)           written by the prepare stage
    candidates/image uint8  [N,K,H,W,3]   chunk (1,K,H,W,3)
    candidates/seed  int64  [N,K]         chunk (S,K)
    candidates/done  bool   [N]           chunk (S,)
    candidates/latent float16 [N,K,C,h,w] chunk (1,K,C,h,w)    only with sampling.save_latents
    scores/<reward>/value float32 [N,K]   chunk (S,K)          NaN until scored
    scores/<reward>/done  bool    [N]     chunk (S,)
    pairs/<name>/winner   int32 [N]       candidate index k of the winner (-1 if no pair)
    pairs/<name>/loser    int32 [N]       candidate index k of the loser (-1 if no pair)
    pairs/<name>/margin   float32 [N]     target margin R(w) - R(l) (CaPO/CaEN), NaN otherwise
    pairs/<name>/valid    bool  [N]       a usable pair exists; attrs: method, rewards, weights, ties,
                                          seed, candidates (k'), counts. Written by the single-task pairs stage.
    train/<pairs>/...                     latent cache and reference-loss cache of the train stage
    eval/...                              written by the eval stage

S is the shard size, ceil(N / shards): shard s owns samples [s*S, min(N, (s+1)*S)), hence whole chunks
of every array, so concurrent tasks never write the same chunk. Every array of the sharded stages is
created up front by `RunStore.create`; tasks write array data only, never metadata or attributes;
`consolidate` runs once, at finalisation. No sharding codec: a partial shard write would rewrite the
whole shard and lose a neighbour's data.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

LAYOUT_VERSION = 1
STORE_NAME = "store.zarr"

# Consolidated metadata is a zarr-python extension for v3; we use it knowingly.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)


class StoreError(RuntimeError):
    """The store is missing, inconsistent, or asked for something it does not hold."""


class ShardError(ValueError):
    """A shard index outside the run's shards."""


@dataclass(frozen=True)
class Shape:
    n: int
    k: int
    height: int
    width: int
    shards: int

    @property
    def shard_size(self) -> int:
        return max(1, math.ceil(self.n / self.shards))


def shard_bounds(n: int, shards: int, shard: int) -> tuple[int, int]:
    """[start, stop) of the samples owned by `shard`."""
    if not 0 <= shard < shards:
        raise ShardError(f"shard index {shard} is outside this run's shards 0-{shards - 1}")
    size = max(1, math.ceil(n / shards))
    return min(n, shard * size), min(n, (shard + 1) * size)


class RunStore:
    """A handle on `<run>/store.zarr`."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = Path(path)
        self.root = group
        attrs = dict(group.attrs)
        try:
            self.shape = Shape(attrs["n"], attrs["k"], attrs["height"], attrs["width"], attrs["shards"])
        except KeyError as exc:
            raise StoreError(f"{self.path} has no run layout attributes ({exc}); was it made by prepare?") from None
        self.rewards: list[str] = list(attrs.get("rewards", []))

    # -- opening and creating ------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: Path | str, mode: str = "r+") -> "RunStore":
        path = Path(run_dir) / STORE_NAME
        if not path.exists():
            raise StoreError(f"no run store at {path}; run `python -m hpc.submit prepare --run {run_dir}` first")
        # Always read live metadata: arrays created after consolidation must be visible.
        return cls(path, zarr.open_group(path, mode=mode, use_consolidated=False))

    @classmethod
    def create(
        cls,
        run_dir: Path | str,
        shape: Shape,
        rewards: list[str],
        latent_shape: tuple[int, int, int] | None = None,
    ) -> "RunStore":
        path = Path(run_dir) / STORE_NAME
        if path.exists():
            raise StoreError(f"{path} already exists; a run is prepared once (use a new --run directory)")
        group = zarr.open_group(path, mode="w-", zarr_format=3)
        group.attrs.update(
            dict(layout_version=LAYOUT_VERSION, n=shape.n, k=shape.k, height=shape.height, width=shape.width,
                 shards=shape.shards, shard_size=shape.shard_size, rewards=list(rewards))
        )
        n, k, h, w, s = shape.n, shape.k, shape.height, shape.width, shape.shard_size

        def arr(name, dims, chunks, dtype, fill):
            group.create_array(name, shape=dims, chunks=chunks, dtype=dtype, fill_value=fill,
                               compressors=zarr.codecs.ZstdCodec(level=3) if dtype != str else "auto")

        arr("samples/image", (n, h, w, 3), (1, h, w, 3), "uint8", 0)
        arr("samples/mask", (n, h, w), (1, h, w), "uint8", 0)
        arr("samples/prompt", (n,), (s,), str, "")
        arr("samples/id", (n,), (s,), str, "")
        arr("samples/valid", (n,), (s,), "bool", False)
        arr("samples/reason", (n,), (s,), str, "")
        arr("samples/done", (n,), (s,), "bool", False)
        arr("candidates/image", (n, k, h, w, 3), (1, k, h, w, 3), "uint8", 0)
        arr("candidates/seed", (n, k), (s, k), "int64", -1)
        arr("candidates/done", (n,), (s,), "bool", False)
        if latent_shape is not None:
            arr("candidates/latent", (n, k, *latent_shape), (1, k, *latent_shape), "float16", 0)
        for reward in rewards:
            cls._create_reward_arrays(group, reward, shape)
        store = cls(path, group)
        store.consolidate()
        return store

    @staticmethod
    def _create_reward_arrays(group: zarr.Group, reward: str, shape: Shape) -> None:
        s = shape.shard_size
        group.create_array(f"scores/{reward}/value", shape=(shape.n, shape.k), chunks=(s, shape.k),
                           dtype="float32", fill_value=float("nan"))
        group.create_array(f"scores/{reward}/done", shape=(shape.n,), chunks=(s,), dtype="bool", fill_value=False)

    def add_reward(self, reward: str) -> None:
        """Create the score arrays of a reward not in the preset (from the submitting process only)."""
        if f"scores/{reward}/value" in self:
            return
        self._create_reward_arrays(self.root, reward, self.shape)
        self.rewards.append(reward)
        self.root.attrs["rewards"] = self.rewards
        self.consolidate()

    # -- access --------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        try:
            self.root[name]
            return True
        except KeyError:
            return False

    def __getitem__(self, name: str) -> zarr.Array:
        try:
            return self.root[name]
        except KeyError:
            raise StoreError(f"{self.path} has no array {name!r}") from None

    def shard_slice(self, shard: int) -> slice:
        return slice(*shard_bounds(self.shape.n, self.shape.shards, shard))

    def done_count(self, name: str) -> tuple[int, int]:
        """(done, total) of a boolean done mask such as 'candidates/done'."""
        mask = self[name][:]
        return int(np.count_nonzero(mask)), int(mask.size)

    def pending_shards(self, name: str) -> list[int]:
        """Shards whose samples are not all marked done in `name`."""
        mask = self[name][:]
        return [s for s in range(self.shape.shards) if not mask[self.shard_slice(s)].all()]

    def create_array(self, name: str, **kwargs) -> zarr.Array:
        """Create an array for a single-task stage (pairs, eval). Never call from a sharded task."""
        return self.root.create_array(name, **kwargs)

    def consolidate(self) -> None:
        zarr.consolidate_metadata(self.path)


# -- path helpers of the pairs stage (writes engineer; to merge with the layout's named accessors) ------
def score_values_path(reward: str) -> str:
    """The [N, K] float32 scores of one reward."""
    return f"scores/{reward}/value"


def score_done_path(reward: str) -> str:
    """The [N] bool done mask of one reward's scores."""
    return f"scores/{reward}/done"


def pairs_group_path(name: str) -> str:
    """The group of one pairs selection (winner, loser, margin, valid; its attrs carry the done mark)."""
    return f"pairs/{name}"
