"""The pairs stage: scores/* -> pairs/<name>/{winner, loser, margin, valid}, one task for the whole run.

    python -m hpc.submit pairs --run DIR --method ensemble [--candidates 4] [--name NAME] ...

Reads the scores of the rewards the method uses (each must be complete: its done mask full; otherwise
the stage stops naming the reward and its unscored shards), selects a pair per sample with
fyp.ensemble.select_pairs, and writes the four arrays with provenance attributes (method, rewards,
weights, ties, seed, candidates, counts) on the `pairs/<name>` group and its `valid` array. Being a
single task it creates those arrays itself (overwriting an earlier pairs/<name>) and consolidates the
store's metadata. Report files (counts, skipped samples, reward agreement) go to <run>/pairs/<name>/,
see fyp.pairs.report; the agreement is over a seeded subset of at most 20,000 valid samples
(fyp.ensemble.agreement).

Write order (what makes a SIGKILL at any point harmless): the group's old done mark is cleared, then
arrays -> report files -> `complete` on the group (the done mark pending_shards reads) -> consolidate.
A kill before the mark leaves the stage pending, and the re-run rewrites everything with the same bits.
Test hook points (fyp.hold): pairs.arrays, pairs.report, pairs.complete.

Non-finite scores (NaN, +-inf) are missing: a reward with one for a sample is left out of that sample;
a sample with no usable reward, whose candidates all tie, or that prepare marked invalid gets no pair
(winner = loser = -1, valid False) and a line in skipped.csv.
"""
from __future__ import annotations

import logging
import os
import shutil
import time

import numpy as np

from ..config import PairsMethod, RewardName, Ties, coerce
from ..ensemble import AGREEMENT_SAMPLES, agreement_subset, kendall_tau_matrix, pairs_from_plan
from ..hold import HoldPoints
from ..run import Run
from ..stages import Option, Stage
from ..store import RunStore, StoreError
from .plan import PairsOptionError, PairsPlan, parse_list, resolve
from .report import write_report

log = logging.getLogger("fyp")
STATUS_INVALID_SAMPLE = 3
REASONS = {1: "no usable reward model", 2: "all candidates tied", STATUS_INVALID_SAMPLE: "invalid sample"}


class PairsInputError(StoreError):
    """The store lacks what the pairs stage needs (missing or incomplete scores or candidates)."""


def _shard_list(shards: list[int]) -> str:
    return ", ".join(map(str, shards[:20])) + (f" and {len(shards) - 20} more" if len(shards) > 20 else "")


def require_complete(store: RunStore, done, what: str, hint: str) -> None:
    pending = store.pending_shards(done)
    if pending:
        done, total = store.done_count(done)
        raise PairsInputError(f"{what} is incomplete: shard(s) {_shard_list(pending)} of {store.shape.shards} not done "
                              f"({done}/{total} samples); {hint}")


def check_inputs(store: RunStore, plan: PairsPlan) -> None:
    require_complete(store, store.candidates.done, str(store.candidates), "run the sample stage first")
    for reward in plan.rewards:
        scores = store.scores(reward)
        if reward not in store.rewards or "value" not in scores:
            raise PairsInputError(f"reward {reward!r} has no scores in {store.path} (the run scores: "
                                  f"{', '.join(store.rewards) or 'none'}); score it first")
        require_complete(store, scores.done, str(scores), f"run the score stage for {reward}")


def backend_for(plan: PairsPlan) -> str:
    """'auto' on the CPU: the C++ kernel when a compiler exists, else the reference (logged)."""
    if plan.backend != "auto":
        return plan.backend
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler):
        return "cpp"
    log.info("pairs: no C++ compiler (%s), using the PyTorch reference", compiler)
    return "reference"


def read_scores(store: RunStore, rewards, n: int, k: int) -> np.ndarray:
    """scores [N, M, K] float32 of `rewards`, filled one reward at a time (no stacked copy)."""
    out = np.empty((n, len(rewards), k), np.float32)
    for j, reward in enumerate(rewards):
        out[:, j, :] = store.read_rows(store.scores(reward).value, slice(None))
    return out


def _nonfinite_counts(scores, sample_valid, k: int, rewards):
    """Per reward over valid samples and the first k candidates: NaN values, inf values, samples left out
    (any non-finite score). One reward's [N, k] slice at a time: no copy of the whole array."""
    nan_values = np.zeros(len(rewards), np.int64)
    inf_values = np.zeros(len(rewards), np.int64)
    left_out = {}
    for j, reward in enumerate(rewards):
        part = scores[:, j, :k]
        nan = np.isnan(part)
        inf = np.isinf(part)
        nan_values[j] = nan[sample_valid].sum()
        inf_values[j] = inf[sample_valid].sum()
        left_out[reward] = int(((nan | inf).any(-1) & sample_valid).sum())
    return nan_values, inf_values, left_out


class _Timer:
    """Seconds per phase of the task, for the log (the benchmark reads the same phases)."""

    def __init__(self):
        self.last, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.laps.items())


class PairsStage(Stage):
    name = "pairs"
    sharded = False
    options = (
        Option("--method", dict(default=None, help="ensemble | filtered | linear | softmax | capo | caen | single | "
                                                   "random (default: the run's pairs.method)")),
        Option("--candidates", dict(type=int, default=None, help="k': pairs from the first k' candidates (default: all)")),
        Option("--name", dict(default=None, help="name of the pairs group (default: the method, or the reward for single, "
                                                 "plus -k<k'> when candidate scaling)")),
        Option("--ties", dict(default=None, help="min | average | dense (rank methods; default: pairs.ties)")),
        Option("--reward", dict(default=None, help="the reward model of --method single")),
        Option("--rewards", dict(default=None, help="comma-separated subset of rewards to ensemble "
                                                    "(filtered default: all but vqascore)")),
        Option("--weights", dict(default=None, help="reward=value,... judge scores (linear, softmax) or weights "
                                                    "(capo, caen); default: the paper's")),
        Option("--temperature", dict(type=float, default=None, help="softmax temperature T (default: pairs.temperature)")),
        Option("--seed", dict(type=int, default=None, help="seed of the tie-break (default: pairs.seed)")),
        Option("--backend", dict(default=None, help="auto | reference | cpp | triton (default: auto = C++ kernel "
                                                    "when a compiler exists)")),
    )

    def check_options(self, run: Run, opts: dict) -> None:
        """The flags' values by the config's types, when submitting (the rest needs the scores: at the task)."""
        for key, hint in (("method", PairsMethod), ("ties", Ties), ("reward", RewardName)):
            if opts.get(key) is not None:
                coerce(hint, opts[key], f"--{key}")
        coerce(list[RewardName], parse_list(opts.get("rewards")), "--rewards")

    def plan(self, run: Run, opts: dict, store: RunStore | None = None) -> PairsPlan:
        store = store or run.store(mode="r")
        return resolve(run.config.pairs, opts, list(store.rewards), store.shape.k, run.config.model.kind)

    def _existing(self, store: RunStore, plan: PairsPlan) -> dict | None:
        pairs = store.pairs(plan.name)
        return pairs.attrs if pairs.exists else None

    def pending_shards(self, run: Run, variant, opts: dict) -> list[int]:
        store = run.store(mode="r")
        plan = self.plan(run, opts, store)
        attrs = self._existing(store, plan) or {}
        done = attrs.get("complete") and attrs.get("plan") == plan.provenance()
        return [] if done else [0]

    def progress(self, run: Run, variant, opts: dict) -> tuple[int, int]:
        store = run.store(mode="r")
        n = store.shape.n
        try:
            return (n, n) if not self.pending_shards(run, variant, opts) else (0, n)
        except (PairsOptionError, StoreError):
            return (0, n)

    def run_shard(self, run: Run, shard: int, variant, opts: dict) -> dict:
        store = run.store()
        plan = self.plan(run, opts, store)
        check_inputs(store, plan)
        n, k_all = store.shape.n, store.shape.k
        k = plan.candidates
        hold = HoldPoints(run.dir)
        timer = _Timer()
        scores = read_scores(store, plan.rewards, n, k_all)  # [N, M, K]
        sample_valid = np.asarray(store.samples.valid[:], bool)
        timer.lap("read")
        nan_values, inf_values, left_out = _nonfinite_counts(scores, sample_valid, k, plan.rewards)

        backend = backend_for(plan)
        sel = pairs_from_plan(scores, list(plan.rewards), plan.method, list(plan.rewards), list(plan.weights),
                              plan.mode, candidates=k, seed=plan.seed, backend=backend)
        timer.lap("ensemble")
        status = np.where(sample_valid, sel.status, STATUS_INVALID_SAMPLE).astype(np.int8)
        valid = status == 0
        winner = np.where(valid, sel.winner, -1).astype(np.int32)
        loser = np.where(valid, sel.loser, -1).astype(np.int32)
        margin = np.where(valid, sel.margin, np.nan).astype(np.float32)

        counts = {"samples": n, "pairs": int(valid.sum())}
        counts.update({reason: int((status == code).sum()) for code, reason in REASONS.items()})
        self._write_arrays(store, plan, winner, loser, margin, valid, counts, left_out)
        timer.lap("write arrays")
        hold.reached("pairs.arrays")

        skipped = self._skipped(store, status, scores, k, plan)
        agreement_names, tau, tau_count, subset = self._agreement(store, plan, scores, sample_valid, k)
        timer.lap("agreement")
        summary = {"plan": plan.provenance(), "backend": backend, "counts": counts, "left_out": left_out,
                   "nan_values": dict(zip(plan.rewards, map(int, nan_values))),
                   "inf_values": dict(zip(plan.rewards, map(int, inf_values))),
                   "agreement_rewards": agreement_names,
                   "agreement_samples": dict(used=subset, of=int(sample_valid.sum()), limit=AGREEMENT_SAMPLES,
                                             seed=plan.seed),
                   "mean_margin": float(np.nanmean(margin)) if np.isfinite(margin).any() else None}
        reward_rows = [[r, left_out[r], int(a), int(b)] for r, a, b in zip(plan.rewards, nan_values, inf_values)]
        folder = run.dir / "pairs" / plan.name
        write_report(folder, summary, skipped, reward_rows, agreement_names, tau, tau_count)
        timer.lap("report")
        hold.reached("pairs.report")
        self._mark_complete(store, plan, counts, left_out)  # last: the group is done only with its report
        hold.reached("pairs.complete")
        self._print(str(store.pairs(plan.name)), plan, counts, left_out, nan_values, inf_values, agreement_names, tau, folder, backend)
        log.info("%s timings: %s", store.pairs(plan.name), timer)
        self.last_timings = dict(timer.laps)  # seconds per phase (benchmarks/cpu/pairs_stage.py)
        return {"done": n, "pairs": counts["pairs"], "skipped": n - counts["pairs"],
                "nonfinite": int(nan_values.sum() + inf_values.sum())}

    def finalize(self, run: Run, variant, opts: dict) -> None:
        run.store().consolidate()

    # -- pieces ------------------------------------------------------------------------------------
    def _write_arrays(self, store: RunStore, plan: PairsPlan, winner, loser, margin, valid, counts, left_out):
        n, chunk = store.shape.n, store.shape.shard_size
        group = store.pairs(plan.name)
        if group.exists:  # a rerun: drop the old done mark before anything of the group changes
            group.update_attrs(complete=False)
        for name, data, fill in (("winner", winner, -1), ("loser", loser, -1), ("margin", margin, float("nan")),
                                 ("valid", valid, False)):
            arr = group.create_array(name, shape=(n,), chunks=(chunk,), dtype=data.dtype,
                                     fill_value=fill, overwrite=True)
            arr[:] = data
        group.valid.attrs.update(self._attrs(plan, counts, left_out))

    @staticmethod
    def _attrs(plan: PairsPlan, counts, left_out) -> dict:
        return dict(method=plan.method, rewards=list(plan.rewards), weights=list(plan.weights), ties=plan.ties,
                    seed=plan.seed, candidates=plan.candidates, temperature=plan.temperature, reward=plan.reward,
                    counts=counts, left_out=left_out, plan=plan.provenance())

    def _mark_complete(self, store: RunStore, plan: PairsPlan, counts, left_out) -> None:
        """The group's done mark: written after its arrays and its report files (pending_shards reads it)."""
        store.pairs(plan.name).update_attrs(**self._attrs(plan, counts, left_out), complete=True)
        store.consolidate()

    @staticmethod
    def _skipped(store: RunStore, status, scores, k: int, plan: PairsPlan) -> list[tuple[int, str, str]]:
        rows = np.flatnonzero(status != 0)
        if rows.size == 0:
            return []
        ids = np.asarray(store.samples.id[:])
        reasons = np.asarray(store.samples.reason[:])
        out = []
        for i in rows:
            reason = REASONS[int(status[i])]
            if status[i] == 1:
                missing = [r for j, r in enumerate(plan.rewards) if not np.isfinite(scores[i, j, :k]).all()]
                reason += f" (missing or non-finite scores: {', '.join(missing)})"
            elif status[i] == STATUS_INVALID_SAMPLE and str(reasons[i]):
                reason += f" ({reasons[i]})"
            out.append((int(i), str(ids[i]), reason))
        return out

    @staticmethod
    def _agreement(store: RunStore, plan: PairsPlan, scores, sample_valid, k: int):
        """Kendall tau between every reward the run has fully scored, over a seeded subset of at most
        AGREEMENT_SAMPLES valid samples (all when fewer; fyp.ensemble.agreement), first k' candidates.
        The plan's rewards come from the scores already read; only the others are read for it."""
        names = [r for r in store.rewards if "done" in store.scores(r) and not store.pending_shards(store.scores(r).done)]
        if not names:
            return [], np.zeros((0, 0)), np.zeros((0, 0)), 0
        rows = agreement_subset(np.flatnonzero(sample_valid), AGREEMENT_SAMPLES, plan.seed)
        columns = []
        for r in names:
            if r in plan.rewards:
                columns.append(scores[rows, list(plan.rewards).index(r), :k])
            else:
                columns.append(np.asarray(store.read_rows(store.scores(r).value, rows)[:, :k], np.float32))
        tau, count = kendall_tau_matrix(np.stack(columns, axis=1))
        return names, tau, count, int(rows.size)

    @staticmethod
    def _print(label, plan, counts, left_out, nan_values, inf_values, names, tau, folder, backend) -> None:
        lines = [f"{label}: method {plan.method} ({plan.mode}), {plan.candidates} candidates, "
                 f"seed {plan.seed}, backend {backend}",
                 "  " + ", ".join(f"{key}: {value}" for key, value in counts.items())]
        if plan.rewards:
            lines.append("  reward         weight  left out  NaN  inf")
            for j, r in enumerate(plan.rewards):
                lines.append(f"  {r:<13} {plan.weights[j]:7.3f} {left_out[r]:9d} {int(nan_values[j]):4d} "
                             f"{int(inf_values[j]):4d}")
        if len(names) > 1:
            off = tau[~np.eye(len(names), dtype=bool)]
            lines.append(f"  reward agreement: mean pairwise Kendall tau {np.nanmean(off):.3f} "
                         f"(min {np.nanmin(off):.3f}, max {np.nanmax(off):.3f})" if np.isfinite(off).any()
                         else "  reward agreement: undefined (no sample ranks candidates apart)")
        lines.append(f"  report: {folder}")
        print("\n".join(lines), flush=True)
