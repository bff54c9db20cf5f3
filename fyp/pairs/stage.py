"""The pairs stage: scores/* -> pairs/<name>/{winner, loser, margin, valid}, one task for the whole run.

    python -m hpc.submit pairs --run DIR --method ensemble [--candidates 4] [--name NAME] ...

Reads the scores of the rewards the method uses (each must be complete: its done mask full; otherwise
the stage stops naming the reward and its unscored shards), selects a pair per sample with
fyp.ensemble.select_pairs, and writes the four arrays with provenance attributes (method, rewards,
weights, ties, seed, candidates, counts) on the `pairs/<name>` group and its `valid` array. Being a
single task it creates those arrays itself (overwriting an earlier pairs/<name>) and consolidates the
store's metadata. Report files (counts, skipped samples, reward agreement) go to <run>/pairs/<name>/,
see fyp.pairs.report.

Non-finite scores (NaN, +-inf) are missing: a reward with one for a sample is left out of that sample;
a sample with no usable reward, whose candidates all tie, or that prepare marked invalid gets no pair
(winner = loser = -1, valid False) and a line in skipped.csv.
"""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np

from ..config import PairsMethod, RewardName, Ties, coerce
from ..ensemble import kendall_tau_matrix, pairs_from_plan
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
        scores = np.stack([np.asarray(store.read_rows(store.scores(r).value, slice(None)), np.float32)
                           for r in plan.rewards], axis=1) \
            if plan.rewards else np.empty((n, 0, k_all), np.float32)  # [N, M, K]
        sample_valid = np.asarray(store.samples.valid[:], bool)
        keep = scores[:, :, :k]
        nan_values = np.isnan(keep[sample_valid]).sum(axis=(0, 2))
        inf_values = np.isinf(keep[sample_valid]).sum(axis=(0, 2))

        backend = backend_for(plan)
        sel = pairs_from_plan(scores, list(plan.rewards), plan.method, list(plan.rewards), list(plan.weights),
                              plan.mode, candidates=k, seed=plan.seed, backend=backend)
        status = np.where(sample_valid, sel.status, STATUS_INVALID_SAMPLE).astype(np.int8)
        valid = status == 0
        winner = np.where(valid, sel.winner, -1).astype(np.int32)
        loser = np.where(valid, sel.loser, -1).astype(np.int32)
        margin = np.where(valid, sel.margin, np.nan).astype(np.float32)

        counts = {"samples": n, "pairs": int(valid.sum())}
        counts.update({reason: int((status == code).sum()) for code, reason in REASONS.items()})
        left_out = {r: int((~np.isfinite(keep[sample_valid, j]).all(-1)).sum()) for j, r in enumerate(plan.rewards)}
        self._write_arrays(store, plan, winner, loser, margin, valid, counts, left_out)

        skipped = self._skipped(store, status, keep, plan)
        agreement_names, tau, tau_count = self._agreement(store, plan, sample_valid, k)
        summary = {"plan": plan.provenance(), "backend": backend, "counts": counts, "left_out": left_out,
                   "nan_values": dict(zip(plan.rewards, map(int, nan_values))),
                   "inf_values": dict(zip(plan.rewards, map(int, inf_values))),
                   "agreement_rewards": agreement_names,
                   "mean_margin": float(np.nanmean(margin)) if np.isfinite(margin).any() else None}
        reward_rows = [[r, left_out[r], int(a), int(b)] for r, a, b in zip(plan.rewards, nan_values, inf_values)]
        folder = run.dir / "pairs" / plan.name
        write_report(folder, summary, skipped, reward_rows, agreement_names, tau, tau_count)
        self._print(str(store.pairs(plan.name)), plan, counts, left_out, nan_values, inf_values, agreement_names, tau, folder, backend)
        return {"done": n, "pairs": counts["pairs"], "skipped": n - counts["pairs"],
                "nonfinite": int(nan_values.sum() + inf_values.sum())}

    def finalize(self, run: Run, variant, opts: dict) -> None:
        run.store().consolidate()

    # -- pieces ------------------------------------------------------------------------------------
    def _write_arrays(self, store: RunStore, plan: PairsPlan, winner, loser, margin, valid, counts, left_out):
        n, chunk = store.shape.n, store.shape.shard_size
        group = store.pairs(plan.name)
        for name, data, fill in (("winner", winner, -1), ("loser", loser, -1), ("margin", margin, float("nan")),
                                 ("valid", valid, False)):
            arr = group.create_array(name, shape=(n,), chunks=(chunk,), dtype=data.dtype,
                                     fill_value=fill, overwrite=True)
            arr[:] = data
        attrs = dict(method=plan.method, rewards=list(plan.rewards), weights=list(plan.weights), ties=plan.ties,
                     seed=plan.seed, candidates=plan.candidates, temperature=plan.temperature, reward=plan.reward,
                     counts=counts, left_out=left_out, plan=plan.provenance())
        group.valid.attrs.update(attrs)
        group.update_attrs(**attrs, complete=True)  # last: marks the group done
        store.consolidate()

    @staticmethod
    def _skipped(store: RunStore, status, keep, plan: PairsPlan) -> list[tuple[int, str, str]]:
        rows = np.flatnonzero(status != 0)
        if rows.size == 0:
            return []
        ids = np.asarray(store.samples.id[:])
        reasons = np.asarray(store.samples.reason[:])
        out = []
        for i in rows:
            reason = REASONS[int(status[i])]
            if status[i] == 1:
                missing = [r for j, r in enumerate(plan.rewards) if not np.isfinite(keep[i, j]).all()]
                reason += f" (missing or non-finite scores: {', '.join(missing)})"
            elif status[i] == STATUS_INVALID_SAMPLE and str(reasons[i]):
                reason += f" ({reasons[i]})"
            out.append((int(i), str(ids[i]), reason))
        return out

    @staticmethod
    def _agreement(store: RunStore, plan: PairsPlan, sample_valid, k: int):
        """Kendall tau between every reward the run has fully scored (over valid samples, first k')."""
        names = [r for r in store.rewards if "done" in store.scores(r) and not store.pending_shards(store.scores(r).done)]
        if not names:
            return [], np.zeros((0, 0)), np.zeros((0, 0))
        scores = np.stack([np.asarray(store.read_rows(store.scores(r).value, slice(None)), np.float32) for r in names],
                          axis=1)
        tau, count = kendall_tau_matrix(scores[sample_valid][:, :, :k])
        return names, tau, count

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
