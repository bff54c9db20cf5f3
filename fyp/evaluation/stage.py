"""The eval stage: one result per benchmark item with a fixed seed, blended, scored; sharded over the items.

    python -m hpc.submit eval --run DIR [--benchmark synthetic|brushbench|editbench|rorem] [--model all|baseline|
                              PAIRS|PATH[,...]] [--name NAME] [--data PATH] [--items N] [--eval-shards S]

One variant (array job) per model: `<benchmark>/<model>`. A task generates its items (seed of item i =
`candidate_seed(eval.seed, item id, 0)`, the sampler's documented seed function, the same for every model so
only the transformer differs), blends each result into its original (fyp.evaluation.blend), writes one part
file per item (fyp.evaluation.parts: the blended images stay files), then computes the shard's metrics
(fyp.evaluation.scoring) and writes its rows of the store's eval task arrays, `store.eval_tasks(benchmark,
model)`: per-item metrics, the shard's failures and info, then its done mask (one chunk per shard, created
by the submitting process in `prepare_variant`; a task writes data only). The finalisation (one task) merges
the item files and those arrays into the store, `eval/<benchmark>/<model>/{image,id,prompt,seed,valid,reason,metrics/<metric>}`, and writes
`<run>/eval/<benchmark>/<model>/{items.csv,summary.csv,failures.json}`, then rebuilds the run's
`<run>/eval/summary.csv` and tables from every evaluated (benchmark, model).

Bad input never stops the stage: an unreadable benchmark item is stored invalid with its reason; an item whose
generation raises is counted (`failed=`) and left for a re-run; a reward or judge that fails gives NaN and a
reason in failures.json. A missing checkpoint fails that model's tasks with a one-line message.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import logging
import math
import sys
import time

import numpy as np
from tqdm import tqdm

from ..hold import hold_point
from ..run import Run, atomic_write_text
from ..stages import Option, Stage
from ..store import shard_bounds
from . import parts
from .blend import blend
from .results import rebuild_run_outputs
from .summary import rows_to_csv, summarize
from .targets import (BENCHMARKS, REMOVAL_BENCHMARKS, EvalError, ModelTarget, Target, benchmark_of,
                      build_benchmark_reader, data_config, eval_dir, export_path, is_transformer_dir, item_count,
                      safe_name, targets)

log = logging.getLogger("fyp.evaluation")
_PIPELINE_CACHE: dict = {}  # one pipeline per process: a local run executes many shards in one process


@dataclasses.dataclass
class Context:
    target: Target
    reader: object
    data: object
    n: int
    shards: int
    folder: object


def eval_targets(run: Run, opts: dict) -> list[Target]:
    """`--model`'s targets plus the exports `--trained` names: a chained pipeline submits eval before its
    train stage ran, so the trained model is a variant before its checkpoint exists (a task that finds no
    checkpoint fails with the missing-checkpoint message)."""
    found = targets(run, opts)
    names = {t.model.name for t in found}
    for pairs in [p.strip() for p in (opts.get("trained") or "").split(",") if p.strip()]:
        if safe_name(pairs) not in names:
            names.add(safe_name(pairs))
            found.append(Target(benchmark_of(run, opts), ModelTarget(safe_name(pairs), export_path(run.dir, pairs))))
    return found


def _context(run: Run, variant: str | None, opts: dict) -> Context:
    found = eval_targets(run, opts)
    if variant is None:
        if len(found) != 1:
            raise EvalError(f"eval runs per model; pass one --model (found {', '.join(t.variant for t in found)})")
        target = found[0]
    else:
        matches = [t for t in found if t.variant == variant]
        if not matches:
            raise EvalError(f"eval variant {variant!r} is not among this request's models "
                            f"({', '.join(t.variant for t in found)})")
        target = matches[0]
    data = data_config(run, target.benchmark, opts.get("data"))
    reader = build_benchmark_reader(run, data)
    n = item_count(run, reader, opts)
    if n == 0:
        raise EvalError(f"benchmark {target.benchmark} has no items")
    shards = min(int(opts.get("eval_shards") or run.config.shards), n)
    return Context(target, reader, data, n, shards, eval_dir(run.dir, target.benchmark, target.model.name))


def eval_sampling(run: Run):
    sampling = copy.deepcopy(run.config.sampling)
    options = run.config.eval.options or {}
    for key in ("steps", "guidance"):
        if key in options:
            setattr(sampling, key, type(getattr(sampling, key))(options[key]))
    sampling.batch_size = 1
    return sampling


def _pipeline(run: Run, target: Target):
    from ..models import build_pipeline, resolve_device, resolve_dtype
    from ..models.family import denoiser_mismatch, load_denoiser

    model = run.config.model
    path = target.model.path
    key = (dataclasses.astuple(model), run.config.sampling.max_sequence_length, str(path))
    if key in _PIPELINE_CACHE:
        return _PIPELINE_CACHE[key]
    if path is not None and not is_transformer_dir(path):
        raise EvalError(f"checkpoint {path} does not exist or is not an exported transformer (config.json + "
                        f"*.safetensors); train it first (`python -m hpc.submit train`) or give another --model")
    _PIPELINE_CACHE.clear()
    # A trained variant replaces the base transformer, which is then never loaded.
    pipe = build_pipeline(model, max_sequence_length=run.config.sampling.max_sequence_length,
                          with_transformer=path is None)
    if path is not None:
        try:
            transformer = load_denoiser(model, path, resolve_dtype(model.dtype))
        except Exception as exc:  # noqa: BLE001 - say which checkpoint and why, on one line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EvalError(f"cannot load the transformer at {path}: {first}") from None
        mismatch = denoiser_mismatch(pipe, transformer)
        if mismatch:
            raise EvalError(f"the model at {path} does not fit this run's {model.kind} model: {mismatch}; "
                            f"it belongs to another model")
        pipe.transformer = transformer.to(resolve_device(model.device))
    _PIPELINE_CACHE[key] = pipe
    return pipe


def release_pipeline_on_gpu() -> None:
    """Free the generation pipeline's GPU memory before scoring (on a CPU the cache is kept across shards)."""
    import torch

    if torch.cuda.is_available() and _PIPELINE_CACHE:
        _PIPELINE_CACHE.clear()
        torch.cuda.empty_cache()


def item_seed(run: Run, item_id: str) -> int:
    from ..sampling.seeds import candidate_seed

    return candidate_seed(run.config.eval.seed, item_id, 0)


class EvalStage(Stage):
    name = "eval"
    sharded = True
    options = (
        Option("--benchmark", dict(default=None, choices=BENCHMARKS,
                                   help="benchmark to evaluate on (default: the config's eval.benchmark)")),
        Option("--model", dict(default="all", help="baseline, a pairs name with an export, a transformer folder, "
                                                   "a comma-separated list, or all (baseline + every export)")),
        Option("--name", dict(default=None, help="the name of a single --model folder in tables (default: derived)")),
        Option("--data", dict(default=None, help="benchmark folder (default: eval.options.paths.<benchmark>)")),
        Option("--items", dict(type=int, default=None, help="evaluate the first N items (default: eval.samples)")),
        Option("--trained", dict(default=None, help="also the exports of these pairs names (comma-separated) that a "
                                                   "train stage will write: evaluated once trained (pipeline)")),
        Option("--eval-shards", dict(type=int, default=None, help="tasks per model (default: the run's shards)")),
    )

    def variants(self, run: Run, opts: dict) -> list[str]:
        return [t.variant for t in eval_targets(run, opts)]

    def chain_options(self, run: Run, chain: list[str]) -> dict:
        # `--model all` only finds exports that exist: name the one the chain's train stage will write
        if "train" in chain and run.config.train.export:
            return {"trained": run.config.train.pairs}
        return {}

    def num_shards(self, run: Run, opts: dict) -> int:
        found = eval_targets(run, opts)
        return _context(run, found[0].variant, opts).shards

    def prepare_variant(self, run: Run, variant: str | None, opts: dict) -> None:
        ctx = _context(run, variant, opts)
        run.store().create_eval_tasks(ctx.target.benchmark, ctx.target.model.name, ctx.n, ctx.shards)

    def pending_shards(self, run: Run, variant: str | None, opts: dict) -> list[int]:
        ctx = _context(run, variant, opts)
        done = _done_mask(run, ctx)
        if done is None:  # not prepared yet (a dry run, or before submission): everything is pending
            return list(range(ctx.shards))
        return [s for s in range(ctx.shards) if not done[slice(*shard_bounds(ctx.n, ctx.shards, s))].all()]

    def progress(self, run: Run, variant: str | None, opts: dict) -> tuple[int, int]:
        ctx = _context(run, variant, opts)
        return sum(parts.item_path(ctx.folder, i).exists() for i in range(ctx.n)), ctx.n

    # -- one task -----------------------------------------------------------------------------------
    def run_shard(self, run: Run, shard: int, variant: str | None, opts: dict) -> dict:
        ctx = _context(run, variant, opts)
        start, stop = shard_bounds(ctx.n, ctx.shards, shard)
        counts = dict(done=0, skipped=0, invalid=0, failed=0, metric_failures=0)
        done = _done_mask(run, ctx)
        if done is None:
            raise EvalError(f"the eval arrays of {ctx.target.variant} do not exist; submit the stage with "
                            f"`python -m hpc.submit eval --run {run.dir}` (it creates them before its tasks run)")
        if done[start:stop].all():
            counts["skipped"] = stop - start
            return counts
        todo = [i for i in range(start, stop) if not parts.item_path(ctx.folder, i).exists()]
        counts["skipped"] = (stop - start) - len(todo)
        if todo:
            self._generate(run, ctx, todo, counts)
        missing = [i for i in range(start, stop) if not parts.item_path(ctx.folder, i).exists()]
        if missing:
            log.warning("eval %s shard %d: %d items failed to generate (%s); metrics wait for a re-run",
                        ctx.target.variant, shard, len(missing), ", ".join(map(str, missing[:5])))
            return counts
        release_pipeline_on_gpu()  # reward models and the judge load next, one at a time
        counts["metric_failures"] = self._score(run, ctx, shard, list(range(start, stop)))
        return counts

    def _generate(self, run: Run, ctx: Context, todo: list[int], counts: dict) -> None:
        from ..sampling.generate import generate_candidates

        sampling = eval_sampling(run)
        pipe = None
        bar = tqdm(total=len(todo), desc=f"eval {ctx.target.variant}", file=sys.stderr,
                   mininterval=1 if sys.stderr.isatty() else 10)
        begin = time.time()
        for index in todo:
            sample = ctx.reader[index]
            seed = item_seed(run, sample.id)
            if not sample.valid:
                parts.write_item(ctx.folder, index, id=sample.id, prompt=sample.prompt, seed=seed, valid=False,
                                 reason=sample.reason)
                counts["invalid"] += 1
                log.info("eval %s: item %d (%s) is invalid: %s", ctx.target.variant, index, sample.id, sample.reason)
            else:
                pipe = pipe or _pipeline(run, ctx.target)  # a missing checkpoint fails here, with its message
                try:
                    generated = generate_candidates(pipe, sample.prompt, sample.image, sample.mask, [seed],
                                                    sampling).images[0]
                except Exception as exc:  # noqa: BLE001 - count it, keep going; the item stays pending
                    counts["failed"] += 1
                    log.error("eval %s: item %d (%s) failed to generate: %s: %s", ctx.target.variant, index,
                              sample.id, type(exc).__name__, exc)
                    bar.update(1)
                    continue
                parts.write_item(ctx.folder, index, id=sample.id, prompt=sample.prompt, seed=seed, valid=True,
                                 result=blend(generated, sample.image, sample.mask))
                counts["done"] += 1
            bar.update(1)
        bar.close()
        log.info("eval %s: generated %d items in %.1fs (%d invalid, %d failed)", ctx.target.variant, counts["done"],
                 time.time() - begin, counts["invalid"], counts["failed"])

    def _score(self, run: Run, ctx: Context, shard: int, indices: list[int]) -> int:
        from .scoring import Items, compute_metrics

        records = [parts.read_item(ctx.folder, i) for i in indices]
        valid = [i for i, r in zip(indices, records) if r["valid"]]
        removal = ctx.target.benchmark in REMOVAL_BENCHMARKS
        results, originals, masks, prompts, gts = [], [], [], [], []
        for i, record in zip(indices, records):
            if not record["valid"]:
                continue
            sample = ctx.reader[i]
            results.append(record["result"])
            originals.append(sample.image)
            masks.append(sample.mask)
            prompts.append(record["prompt"])
            gts.append(sample.target)
        info: dict = {}
        values: dict[str, np.ndarray] = {}
        failures: dict[str, int] = {}
        reasons: dict[str, str] = {}
        if valid:
            items = Items(np.stack(results), np.stack(originals), np.stack(masks), prompts,
                          np.stack(gts) if removal and all(g is not None for g in gts) else None)
            metrics, info = compute_metrics(run, ctx.target.benchmark, items)
            position = {i: j for j, i in enumerate(valid)}
            for name, v in metrics.values.items():
                full = np.full(len(indices), np.nan, np.float32)
                for k, i in enumerate(indices):
                    if i in position:
                        full[k] = v[position[i]]
                values[name] = full
            failures, reasons = metrics.failures, metrics.reasons
        write_shard_results(run, ctx, shard, indices, values, dict(failures=failures, reasons=reasons, info=info))
        hold_point(run.dir, "eval.metrics", shard)
        return int(sum(failures.values()))

    # -- finalisation -------------------------------------------------------------------------------
    def finalize(self, run: Run, variant: str | None, opts: dict) -> None:
        ctx = _context(run, variant, opts)
        merged = merge_parts(run, ctx)
        store = run.store()
        write_store(store, ctx, merged)
        hold_point(run.dir, "eval.store")
        write_variant_files(run, ctx, merged)
        hold_point(run.dir, "eval.files")  # before the finalised marker (hpc.task writes it after this)
        rebuild_run_outputs(run.dir)
        store.consolidate()
        log.info("eval %s: %d items, %d valid, %d not generated; metrics: %s", ctx.target.variant, ctx.n,
                 int(merged["valid"].sum()), merged["missing"], ", ".join(sorted(merged["metrics"])) or "none")


def _done_mask(run: Run, ctx: Context) -> np.ndarray | None:
    """The eval tasks' done mask of this variant (None: its arrays were not created with this shape)."""
    part = run.store(mode="r").eval_tasks(ctx.target.benchmark, ctx.target.model.name)
    if "done" not in part or part.done.shape != (ctx.n,) or part.notes.shape != (ctx.shards,):
        return None
    return np.asarray(part.done[:], bool)


def _clean(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None  # NaN is written as null


def write_shard_results(run: Run, ctx: Context, shard: int, indices: list[int], values: dict[str, np.ndarray],
                        notes: dict) -> None:
    """The shard's rows of the eval task arrays: its items' metrics and its notes first, its done mask last.
    Each is one whole chunk that only this shard's task writes."""
    part = run.store().eval_tasks(ctx.target.benchmark, ctx.target.model.name)
    rows = slice(indices[0], indices[-1] + 1)
    part.metrics[rows] = np.array([json.dumps({name: _clean(v[k]) for name, v in values.items()})
                                   for k in range(len(indices))], dtype=object)
    part.notes[shard:shard + 1] = np.array([json.dumps(notes)], dtype=object)
    part.done[rows] = np.ones(len(indices), bool)


def read_shard_results(run: Run, ctx: Context) -> tuple[dict, list[dict]]:
    """({metric: [n] float32, NaN where none}, the notes of every shard its task finished)."""
    part = run.store(mode="r").eval_tasks(ctx.target.benchmark, ctx.target.model.name)
    done = np.asarray(part.done[:], bool)
    rows, notes = part.metrics[:], part.notes[:]
    metrics: dict[str, np.ndarray] = {}
    for i in np.flatnonzero(done):
        for name, value in json.loads(rows[i]).items():
            metrics.setdefault(name, np.full(ctx.n, np.nan, np.float32))[i] = np.nan if value is None else value
    finished = [json.loads(notes[s]) for s in range(ctx.shards)
                if done[slice(*shard_bounds(ctx.n, ctx.shards, s))].all() and notes[s]]
    return metrics, finished


def merge_parts(run: Run, ctx: Context) -> dict:
    res = ctx.data.resolution
    images = np.zeros((ctx.n, res, res, 3), np.uint8)
    ids, prompts, reasons = [""] * ctx.n, [""] * ctx.n, [""] * ctx.n
    valid, seeds = np.zeros(ctx.n, bool), np.full(ctx.n, -1, np.int64)
    missing = 0
    for i in range(ctx.n):
        record = parts.read_item(ctx.folder, i)
        if record is None:
            missing += 1
            ids[i], reasons[i] = ctx.reader.item_id(i), "not generated: its task failed or has not run"
            continue
        ids[i], prompts[i], reasons[i], seeds[i], valid[i] = (record["id"], record["prompt"], record["reason"],
                                                              record["seed"], record["valid"])
        if record["valid"]:
            images[i] = record["result"]
    metrics, shard_notes = read_shard_results(run, ctx)
    failures: dict[str, int] = {}
    reasons_by_metric: dict[str, str] = {}
    info: dict = {}
    for payload in shard_notes:
        for name, count in payload["failures"].items():
            failures[name] = failures.get(name, 0) + int(count)
        reasons_by_metric.update(payload["reasons"])
        info.update(payload["info"])
    return dict(images=images, ids=ids, prompts=prompts, reasons=reasons, valid=valid, seeds=seeds, missing=missing,
                metrics=metrics, failures=failures, metric_reasons=reasons_by_metric, info=info)


def write_store(store, ctx: Context, merged: dict) -> None:
    """eval/<benchmark>/<model>/...: written by this single finalisation task only."""
    base = store.eval(ctx.target.benchmark, ctx.target.model.name)
    n, res = ctx.n, ctx.data.resolution

    def put(name, value, chunks, dtype, fill):
        arr = base.create_array(name, shape=value.shape, chunks=chunks, dtype=dtype,
                                      fill_value=fill, overwrite=True)
        arr[...] = value

    put("image", merged["images"], (1, res, res, 3), "uint8", 0)
    for key, name in (("ids", "id"), ("prompts", "prompt"), ("reasons", "reason")):
        put(name, np.array(merged[key], dtype=object), (n,), str, "")
    put("valid", merged["valid"], (n,), "bool", False)
    put("seed", merged["seeds"], (n,), "int64", -1)
    for metric, values in merged["metrics"].items():
        put(f"metrics/{metric}", values, (n,), "float32", float("nan"))
    base.update_attrs(**dict(
        benchmark=ctx.target.benchmark, model=ctx.target.model.name,
        checkpoint=str(ctx.target.model.path) if ctx.target.model.path else None,
        data=dataclasses.asdict(ctx.data), items=n, valid=int(merged["valid"].sum()), not_generated=merged["missing"],
        metrics=sorted(merged["metrics"]), failures=merged["failures"], failure_reasons=merged["metric_reasons"],
        **merged["info"]))


def write_variant_files(run: Run, ctx: Context, merged: dict) -> None:
    folder = ctx.folder
    names = sorted(merged["metrics"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "id", "prompt", "valid", "reason", "seed", *names])
    for i in range(ctx.n):
        row = [i, merged["ids"][i], merged["prompts"][i], int(merged["valid"][i]), merged["reasons"][i],
               merged["seeds"][i]]
        row += ["" if not math.isfinite(float(merged["metrics"][m][i])) else f"{merged['metrics'][m][i]:.6g}"
                for m in names]
        writer.writerow(row)
    atomic_write_text(folder / "items.csv", buf.getvalue())
    rows = summarize(ctx.target.model.name, ctx.target.benchmark,
                     {m: v[merged["valid"]] for m, v in merged["metrics"].items()})
    atomic_write_text(folder / "summary.csv", rows_to_csv(rows))
    atomic_write_text(folder / "failures.json", json.dumps(dict(
        items=ctx.n, valid=int(merged["valid"].sum()), invalid=int((~merged["valid"]).sum()) - merged["missing"],
        not_generated=merged["missing"], metric_failures=merged["failures"], reasons=merged["metric_reasons"],
        invalid_reasons=sorted({r for r, v in zip(merged["reasons"], merged["valid"]) if not v and r})[:50],
        **merged["info"]), indent=1))
