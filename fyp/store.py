"""The run store: the one module that owns the Zarr layout every stage reads and writes.

Layout version 2 (documented in docs/store.md; these paths are a contract between stages):

    samples/image    uint8  [N,H,W,3]     block (B,H,W,3) of inner chunks (1,H,W,3)   sharding codec
    samples/mask     uint8  [N,H,W]       block (B,H,W) of inner chunks (1,H,W)       1 = hole, 0 = keep
    samples/prompt   str    [N]           chunk (B,)
    samples/id       str    [N]           chunk (B,)
    samples/valid    bool   [N]           chunk (B,)
    samples/reason   str    [N]           chunk (B,)           why a sample is invalid ("" if valid)
    samples/done     bool   [N]           chunk (B,)           written by the prepare stage
    candidates/image uint8  [N,K,H,W,3]   block (B,K,H,W,3) of inner chunks (1,K,H,W,3)
    candidates/seed  int64  [N,K]         chunk (B,K)
    candidates/done  bool   [N]           chunk (B,)
    candidates/latent float16 [N,K,C,h,w] block (B,K,C,h,w) of inner chunks (1,K,C,h,w); only with save_latents
    scores/<reward>/value float32 [N,K]   chunk (B,K)          NaN until scored
    scores/<reward>/done  bool    [N]     chunk (B,)
    pairs/<name>/{winner,loser,margin,valid}   written by the single-task pairs stage
    train/<pairs>/...                     latent cache and reference-loss cache of the train stage
    eval/<benchmark>/<model>/tasks/{metrics,done,notes}   per eval shard, written by its task
    eval/<benchmark>/<model>/...          the rest: written by the eval stage's finalisation

B is the block size (`Shape.block`), S the shard size, a multiple of B: shard s owns samples
[s*S, min(N, (s+1)*S)), hence whole blocks of every array, and a task writes each block once, when all
its samples are finished (the data arrays first, the done mask last). So concurrent tasks never write
the same file, a killed task loses at most its unfinished block, and the store holds about
(arrays * N / B) files, all in one directory per array (chunk keys `c.<i>.0...`, no nesting).

Every array of the sharded stages is created up front by `RunStore.create` with write_empty_chunks, so
every written block has a file: a missing or undecodable block of a sample its stage marks done is
damage (`read_rows` refuses it with one line; `verify` finds it and marks the block not done). Tasks write
array data only, never metadata or attributes; `consolidate` runs once, at finalisation.

Every other module reaches the store through the named accessors (`store.samples`, `store.candidates`,
`store.scores(reward)`, `store.pairs(name)`, `store.train_cache(pairs)`, `store.eval(benchmark, model)`,
`store.eval_tasks(benchmark, model)`):
no path is spelled outside this file.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

LAYOUT_VERSION = 2
STORE_NAME = "store.zarr"
CHUNK_KEYS = {"name": "default", "separator": "."}  # c.<i>.0.0: one file per block, no directory per axis
BLOCK_FILES_PER_DIR = 8192  # the block size grows with N to keep an array's directory under this many files
BLOCK_MIN, BLOCK_MAX = 16, 256  # a block holds at most 256 samples: a sample task buffers one block in memory

# Consolidated metadata is a zarr-python extension for v3; we use it knowingly.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)


class StoreError(RuntimeError):
    """The store is missing, inconsistent, or asked for something it does not hold."""


class DamagedError(StoreError):
    """A block its stage marks done is missing or cannot be decoded."""


class ShardError(ValueError):
    """A shard index outside the run's shards."""


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def _pow2_ceil(x: int) -> int:
    return 1 << max(0, (max(1, x) - 1).bit_length())


def block_size(n: int, shards: int) -> int:
    """Samples per block: enough that N / B stays under BLOCK_FILES_PER_DIR (at least BLOCK_MIN, at most
    BLOCK_MAX), and at most half a shard, so a shard has two blocks or more and a kill loses part of it."""
    target = min(BLOCK_MAX, max(BLOCK_MIN, _pow2_ceil(math.ceil(n / BLOCK_FILES_PER_DIR))))
    return max(1, min(target, _pow2_floor(math.ceil(n / max(1, shards)) // 2)))


@dataclass(frozen=True)
class Shape:
    n: int
    k: int
    height: int
    width: int
    shards: int
    block: int = field(default=0)  # 0: block_size(n, shards)

    def __post_init__(self):
        if self.block <= 0:
            object.__setattr__(self, "block", block_size(self.n, self.shards))

    @property
    def shard_size(self) -> int:
        """Samples per shard: ceil(N / shards) rounded up to whole blocks (trailing shards may be empty)."""
        return self.block * max(1, math.ceil(math.ceil(self.n / self.shards) / self.block))


def shard_bounds(n: int, shards: int, shard: int, block: int = 1) -> tuple[int, int]:
    """[start, stop) of the samples owned by `shard` (shards of whole blocks of `block` samples)."""
    if not 0 <= shard < shards:
        raise ShardError(f"shard index {shard} is outside this run's shards 0-{shards - 1}")
    size = block * max(1, math.ceil(math.ceil(n / shards) / block))
    return min(n, shard * size), min(n, (shard + 1) * size)


# -- named parts of the store ------------------------------------------------------------------------
class _Array:
    """An array of a Part, by name: `store.candidates.image` is `candidates/image`."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, part, owner):
        return self if part is None else part[self.name]


class Part:
    """A group of the store (`samples`, `scores/<reward>`, `pairs/<name>`, ...): its arrays and attributes."""

    def __init__(self, store: "RunStore", path: str):
        self.store, self.path = store, path

    def __str__(self) -> str:
        return self.path

    def __getitem__(self, name: str) -> zarr.Array:
        return self.store._node(f"{self.path}/{name}")

    def __contains__(self, name: str) -> bool:
        return self.store._has(f"{self.path}/{name}")

    @property
    def exists(self) -> bool:
        return self.store._has(self.path)

    @property
    def attrs(self) -> dict:
        """The group's attributes ({} when the group does not exist yet)."""
        return dict(self.store._node(self.path).attrs) if self.exists else {}

    def update_attrs(self, **values) -> None:
        """Set attributes (single-task writers and finalisations only)."""
        self.store.root.require_group(self.path).attrs.update(values)

    def create_array(self, name: str, **kwargs) -> zarr.Array:
        """Create an array in this group (single-task stages only: pairs, train, eval)."""
        return self.store.root.create_array(f"{self.path}/{name}", **kwargs)

    def delete(self, name: str | None = None) -> None:
        """Delete this group, or one of its arrays; nothing happens if it does not exist."""
        path = f"{self.path}/{name}" if name else self.path
        if self.store._has(path):
            del self.store.root[path]

    def groups(self) -> list[str]:
        """Names of the sub-groups (e.g. the models of an eval benchmark)."""
        return sorted(self.store._node(self.path).group_keys()) if self.exists else []

    def arrays(self) -> dict[str, zarr.Array]:
        """Every array under this group, by path relative to it."""
        if not self.exists:
            return {}
        return {name: node for name, node in self.store._node(self.path).members(max_depth=None)
                if isinstance(node, zarr.Array)}

    def files(self, pattern: str):
        """Files under this group matching a glob (e.g. temp files a killed writer left)."""
        return (self.store.path / self.path).rglob(pattern)

    def part(self, name: str) -> "Part":
        return Part(self.store, f"{self.path}/{name}")


class Samples(Part):
    image, mask, prompt, id, valid, reason, done = (_Array() for _ in range(7))


class Candidates(Part):
    image, seed, done, latent = (_Array() for _ in range(4))


class Scores(Part):
    value, done = _Array(), _Array()


class Pairs(Part):
    winner, loser, margin, valid = (_Array() for _ in range(4))


class EvalTasks(Part):
    """What the eval stage's tasks write: per item, its metrics as one JSON object (`metrics`; the metric
    names depend on what scored, so they are not columns) and `done`; per shard, its metric failures,
    reasons and info as JSON (`notes`). Chunks of one eval shard each, created by the submitting process."""
    metrics, done, notes = _Array(), _Array(), _Array()


# Which stage writes each top-level group, and the `hpc.submit` arguments that redo it.
PRODUCERS = {"samples": "prepare", "candidates": "sample", "scores": "score"}


class RunStore:
    """A handle on `<run>/store.zarr`."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = Path(path)
        self.root = group  # private to this module: other modules use the named accessors
        attrs = dict(group.attrs)
        try:
            self.shape = Shape(attrs["n"], attrs["k"], attrs["height"], attrs["width"], attrs["shards"],
                               attrs.get("block", 1))
        except KeyError as exc:
            raise StoreError(f"{self.path} has no run layout attributes ({exc}); was it made by prepare?") from None
        version = attrs.get("layout_version")
        if version != LAYOUT_VERSION:
            raise StoreError(f"{self.path} has store layout {version}, this version of the suite reads layout "
                             f"{LAYOUT_VERSION} only; prepare a new run (`python -m hpc.submit prepare --run NEW_DIR ...`)")
        self.rewards: list[str] = list(attrs.get("rewards", []))

    # -- opening and creating ------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: Path | str, mode: str = "r+") -> "RunStore":
        path = Path(run_dir) / STORE_NAME
        if not path.exists():
            raise StoreError(f"no run store at {path}; run `python -m hpc.submit prepare --run {run_dir}` first")
        try:  # always read live metadata: arrays created after consolidation must be visible
            group = zarr.open_group(path, mode=mode, use_consolidated=False)
        except Exception as exc:  # noqa: BLE001 - a damaged zarr.json raises JSON, value or type errors
            raise StoreError(f"{path / 'zarr.json'} is damaged ({_first_line(exc)}); restore it or prepare a new run") from None
        return cls(path, group)

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
                 shards=shape.shards, shard_size=shape.shard_size, block=shape.block, rewards=list(rewards))
        )
        n, k, h, w = shape.n, shape.k, shape.height, shape.width
        arr = lambda name, dims, dtype, fill: _create(group, name, dims, dtype, fill, shape.block)
        arr("samples/image", (n, h, w, 3), "uint8", 0)
        arr("samples/mask", (n, h, w), "uint8", 0)
        arr("samples/prompt", (n,), str, "")
        arr("samples/id", (n,), str, "")
        arr("samples/valid", (n,), "bool", False)
        arr("samples/reason", (n,), str, "")
        arr("samples/done", (n,), "bool", False)
        arr("candidates/image", (n, k, h, w, 3), "uint8", 0)
        arr("candidates/seed", (n, k), "int64", -1)
        arr("candidates/done", (n,), "bool", False)
        if latent_shape is not None:
            arr("candidates/latent", (n, k, *latent_shape), "float16", 0)
        for reward in rewards:
            cls._create_reward_arrays(group, reward, shape)
        store = cls(path, group)
        store.consolidate()
        return store

    @staticmethod
    def _create_reward_arrays(group: zarr.Group, reward: str, shape: Shape) -> None:
        _create(group, f"scores/{reward}/value", (shape.n, shape.k), "float32", float("nan"), shape.block)
        _create(group, f"scores/{reward}/done", (shape.n,), "bool", False, shape.block)

    def add_reward(self, reward: str) -> None:
        """Create the score arrays of a reward not in the preset (from the submitting process only)."""
        if self.scores(reward).exists:
            return
        self._create_reward_arrays(self.root, reward, self.shape)
        self.rewards.append(reward)
        self.root.attrs["rewards"] = self.rewards
        self.consolidate()

    def update_attrs(self, **values) -> None:
        """Set run-level attributes (the submitting process only, e.g. the rewards a run scores)."""
        self.root.attrs.update(values)

    # -- the named parts -------------------------------------------------------------------------
    @property
    def samples(self) -> Samples:
        return Samples(self, "samples")

    @property
    def candidates(self) -> Candidates:
        return Candidates(self, "candidates")

    def scores(self, reward: str) -> Scores:
        return Scores(self, f"scores/{reward}")

    def pairs(self, name: str) -> Pairs:
        return Pairs(self, f"pairs/{name}")

    def pair_names(self) -> list[str]:
        return Part(self, "pairs").groups()

    def train_cache(self, pairs: str) -> Part:
        """The train stage's latent and reference-loss caches for one set of pairs."""
        return Part(self, f"train/{pairs}")

    def eval(self, benchmark: str, model: str) -> Part:
        return Part(self, f"eval/{benchmark}/{model}")

    def eval_tasks(self, benchmark: str, model: str) -> EvalTasks:
        """The arrays the eval tasks of one (benchmark, model) write (see `create_eval_tasks`)."""
        return EvalTasks(self, f"eval/{benchmark}/{model}/tasks")

    def create_eval_tasks(self, benchmark: str, model: str, n: int, shards: int) -> EvalTasks:
        """Create the eval tasks' arrays for n items in `shards` shards (the submitting process only; kept
        when they exist with this shape). One chunk per shard: a task writes its shard's rows once, whole."""
        part = self.eval_tasks(benchmark, model)
        size = max(1, math.ceil(n / max(1, shards)))
        if "done" in part and part.done.shape == (n,) and part.done.chunks == (size,) and part.notes.shape == (shards,):
            return part
        for name, dims, chunks, dtype, fill in (("metrics", (n,), (size,), str, ""), ("notes", (shards,), (1,), str, ""),
                                                ("done", (n,), (size,), "bool", False)):
            self.root.create_array(f"{part.path}/{name}", shape=dims, chunks=chunks, dtype=dtype, fill_value=fill,
                                   chunk_key_encoding=CHUNK_KEYS, overwrite=True, config={"write_empty_chunks": True})
        self.consolidate()
        return part

    def eval_results(self) -> list[tuple[str, str]]:
        """(benchmark, model) of every finalised eval result in the store."""
        bench = Part(self, "eval")
        return [(b, m) for b in bench.groups() for m in bench.part(b).groups() if "id" in bench.part(b).part(m)]

    def arrays(self) -> dict[str, zarr.Array]:
        """Every array of the store, by path (for whole-store comparisons)."""
        return {name: node for name, node in self.root.members(max_depth=None) if isinstance(node, zarr.Array)}

    # -- generic access (paths stay inside this module) -------------------------------------------
    def _has(self, path: str) -> bool:
        try:
            self.root[path]
            return True
        except KeyError:
            return False
        except Exception as exc:  # noqa: BLE001 - damaged metadata
            raise StoreError(f"{self.path / path / 'zarr.json'} is damaged ({_first_line(exc)}); "
                             f"restore it or re-run the stage that wrote {path}") from None

    def _node(self, path: str):
        try:
            node = self.root[path]
        except KeyError:
            raise StoreError(f"{self.path} has no {path!r}") from None
        except Exception as exc:  # noqa: BLE001 - damaged metadata
            raise StoreError(f"{self.path / path / 'zarr.json'} is damaged ({_first_line(exc)}); "
                             f"restore it or re-run the stage that wrote {path}") from None
        # write_empty_chunks is not stored in the metadata: every handle sets it, so a written block always
        # has a file (a fill-valued block too) and a missing file means damage.
        return node.with_config({"write_empty_chunks": True}) if isinstance(node, zarr.Array) else node

    # -- shards and blocks -------------------------------------------------------------------------
    def shard_slice(self, shard: int) -> slice:
        return slice(*shard_bounds(self.shape.n, self.shape.shards, shard, self.shape.block))

    def blocks(self, span: slice) -> list[slice]:
        """The blocks of a shard's span, in order (each lies inside the span: shards hold whole blocks)."""
        b = self.shape.block
        return [slice(start, min(span.stop, start + b)) for start in range(span.start, span.stop, b)]

    def done_count(self, done: zarr.Array) -> tuple[int, int]:
        """(done, total) of a boolean done mask such as `store.candidates.done`."""
        mask = done[:]
        return int(np.count_nonzero(mask)), int(mask.size)

    def pending_shards(self, done: zarr.Array) -> list[int]:
        """Shards whose samples are not all marked done in `done`."""
        mask = done[:]
        return [s for s in range(self.shape.shards) if not mask[self.shard_slice(s)].all()]

    def consolidate(self) -> None:
        zarr.consolidate_metadata(self.path)

    # -- checked reads -----------------------------------------------------------------------------
    def read_rows(self, array: zarr.Array, rows) -> np.ndarray:
        """array[rows] (a slice, an index or an index list along the sample axis) for rows its stage marks
        done; a missing or undecodable block raises DamagedError naming the array, the sample and the fix."""
        index = np.arange(self.shape.n)[rows] if isinstance(rows, slice) else np.atleast_1d(np.asarray(rows))
        for first in self._missing_blocks(array, np.unique(index // _rows_per_file(array))):
            raise DamagedError(self._damage(array, int(first), "its block file is missing"))
        try:
            return array[rows] if isinstance(rows, (slice, int, np.integer)) else array.oindex[index]
        except Exception as exc:  # noqa: BLE001 - zarr / codec errors have many types
            raise DamagedError(self._damage(array, int(index.min()), _first_line(exc))) from None

    def _missing_blocks(self, array: zarr.Array, blocks) -> list[int]:
        """Blocks (by index) of `array` without a file; their first samples."""
        per = _rows_per_file(array)
        folder = self.path / array.path
        rest = (0,) * (array.ndim - 1)
        return [int(b) * per for b in blocks
                if not (folder / array.metadata.encode_chunk_key((int(b), *rest))).exists()]

    def _damage(self, array: zarr.Array, sample: int, why: str) -> str:
        top = array.path.split("/")[0]
        stage = PRODUCERS.get(top, "the stage that wrote it")
        extra = f" --reward {array.path.split('/')[1]}" if top == "scores" else ""
        run = self.path.parent
        return (f"{self.path.name}/{array.path} is damaged at sample {sample} ({why}); run `python -m fyp.store "
                f"verify --run {run} --stage {stage}{extra}`, then `python -m hpc.submit {stage} --run {run}{extra}`")

    def block_file(self, array: zarr.Array, sample: int) -> Path:
        """The file holding `sample`'s block of a sharded-stage array (tests damage it on purpose)."""
        rest = (0,) * (array.ndim - 1)
        return self.path / array.path / array.metadata.encode_chunk_key((int(sample) // _rows_per_file(array), *rest))

    # -- finding and undoing damage ----------------------------------------------------------------
    def outputs(self, stage: str, reward: str | None = None) -> tuple[zarr.Array, list[zarr.Array]]:
        """(done mask, data arrays) a sharded stage writes."""
        if stage == "prepare":
            s = self.samples
            return s.done, [s.image, s.mask, s.prompt, s.id, s.valid, s.reason]
        if stage == "sample":
            c = self.candidates
            return c.done, [c.image, c.seed] + ([c.latent] if "latent" in c else [])
        if stage == "score":
            if not reward:
                raise StoreError("verify --stage score needs --reward NAME")
            s = self.scores(reward)
            return s.done, [s.value]
        raise StoreError(f"unknown stage {stage!r}; verify knows prepare, sample and score")

    def verify(self, stage: str, reward: str | None = None, shards: list[int] | None = None,
               repair: bool = True) -> list[str]:
        """Re-read every block of `stage`'s outputs that its done mask marks (partly) done; a block whose
        file is missing or does not decode is reported and, with `repair`, marked not done (the whole
        block), so a re-run of the stage redoes it. Returns one line per damaged block."""
        done_arr, data = self.outputs(stage, reward)
        problems: list[str] = []
        for shard in range(self.shape.shards) if shards is None else shards:
            for block in self.blocks(self.shard_slice(shard)):
                try:
                    done = done_arr[block]
                except Exception as exc:  # noqa: BLE001 - an undecodable done block: redo it
                    problems.append(f"{done_arr.path} samples {block.start}-{block.stop - 1}: {_first_line(exc)}")
                    if repair:
                        done_arr[block] = np.zeros(block.stop - block.start, bool)
                    continue
                if not done.any():
                    continue
                for array in data:
                    try:
                        self.read_rows(array, block)
                    except DamagedError as exc:
                        why = str(exc).split("(", 1)[1].split(");", 1)[0]
                        problems.append(f"{array.path} samples {block.start}-{block.stop - 1}: {why}")
                        if repair:
                            done_arr[block] = np.zeros(block.stop - block.start, bool)
                        break
        return problems


class BlockWriter:
    """Writes a shard's rows of some arrays block by block, each block once: when the last of its pending
    rows is finished. The arrays are written in the order given (data first, the done mask last).

    `buffers` hold the shard's rows (row 0 = the shard's first sample) and are what gets written;
    `pending` marks the rows still to be computed; `touched` the rows whose blocks must be written even
    when nothing is pending in them (e.g. invalid samples marked done)."""

    def __init__(self, store: "RunStore", span: slice, arrays: list, buffers: list[np.ndarray], pending: np.ndarray,
                 touched: np.ndarray | None = None):
        self.span, self.arrays, self.buffers, self.block = span, arrays, buffers, store.shape.block
        touched = pending if touched is None else (pending | touched)
        self.rows = {b.start - span.start: slice(b.start - span.start, b.stop - span.start) for b in store.blocks(span)}
        self.left = {first: int(pending[r].sum()) for first, r in self.rows.items() if touched[r].any()}
        self.writes = 0

    def finish(self, rows=()) -> None:
        """Count `rows` (shard-relative) as finished and write every block this completes."""
        firsts = set(self.left) if len(rows) == 0 else {int(j) // self.block * self.block for j in rows}
        for j in rows:
            self.left[int(j) // self.block * self.block] -= 1
        for first in sorted(firsts):
            if self.left.get(first) == 0:
                r = self.rows[first]
                target = slice(self.span.start + r.start, self.span.start + r.stop)
                for array, buffer in zip(self.arrays, self.buffers):
                    array[target] = buffer[r]
                self.writes += 1
                del self.left[first]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rows_per_file(array: zarr.Array) -> int:
    return (array.shards or array.chunks)[0]


def _create(group: zarr.Group, name: str, dims: tuple, dtype, fill, block: int) -> zarr.Array:
    """A sharded-stage array: blocks of `block` samples along axis 0, one file per block. Per-sample
    arrays (images, latents) use the sharding codec, one inner chunk per sample, so one sample is read
    without decoding its block; the rest are plain chunks of one block. write_empty_chunks: every
    written block has a file, so a missing file of a done block is damage, not a fill value."""
    per_sample = len(dims) >= 3
    inner = (1, *dims[1:]) if per_sample else (block, *dims[1:])
    compressors = "auto" if dtype is str else zarr.codecs.ZstdCodec(level=3)
    return group.create_array(name, shape=dims, chunks=inner, shards=(block, *dims[1:]) if per_sample else None,
                              dtype=dtype, fill_value=fill, compressors=compressors, chunk_key_encoding=CHUNK_KEYS,
                              config={"write_empty_chunks": True})


def main(argv: list[str] | None = None) -> int:
    """`python -m fyp.store verify --run DIR --stage prepare|sample|score [--reward R] [--shard S]`."""
    parser = argparse.ArgumentParser(prog="python -m fyp.store", description="check a run store for damaged blocks")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="re-read the done blocks of a stage; mark damaged ones not done")
    check.add_argument("--run", required=True)
    check.add_argument("--stage", choices=("prepare", "sample", "score"), action="append",
                       help="stage(s) to check (default: all of them, every reward)")
    check.add_argument("--reward", help="the reward of --stage score (default: every reward of the run)")
    check.add_argument("--shard", type=int, action="append", help="check these shards only")
    check.add_argument("--dry-run", action="store_true", help="report only; mark nothing not done")
    args = parser.parse_args(argv)
    try:
        store = RunStore.open(args.run, mode="r" if args.dry_run else "r+")
        found = 0
        for stage in args.stage or ("prepare", "sample", "score"):
            for reward in ([args.reward] if args.reward else store.rewards) if stage == "score" else [None]:
                label = f"{stage}/{reward}" if reward else stage
                problems = store.verify(stage, reward, args.shard, repair=not args.dry_run)
                found += len(problems)
                for line in problems:
                    print(f"{label}: damaged: {line}")
                print(f"{label}: {len(problems)} damaged block(s)"
                      + (" marked not done; re-run the stage to redo them" if problems and not args.dry_run else ""))
    except (StoreError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
