"""The command line: run or submit a stage, the whole pipeline, or ask where a run stands.

    python -m hpc.submit prepare  --run DIR --preset tiny --samples N --shards S [--set key.sub=value ...]
    python -m hpc.submit <stage>  --run DIR [--cluster local|NAME] [--array SPEC] [stage options]
                                  [--dry-run] [--wait] [--retry-failed]
    python -m hpc.submit pipeline --run DIR --preset NAME [--cluster NAME] [--dry-run] [--wait]
    python -m hpc.submit status   --run DIR
    python -m hpc.submit study     --run DIR --b MODEL [...]     the pairwise human study (browser)
    python -m hpc.submit agreement --run DIR                     judge/reward agreement with the study
    python -m hpc.submit scaling   plan|launch|plot --run DIR [...]   the scaling experiments

`--cluster local` (the default) runs the tasks here with submitit's LocalExecutor and returns when
they ended; a Slurm cluster gets one array job per stage (variant) plus a finalisation job that
depends on it (afterok), and the command returns at once with the job ids unless `--wait`.
Exit codes: 0 success (or nothing to do), 1 a task failed, 2 bad input (message on one line).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fyp.config import ConfigError, parse_overrides
from fyp.run import CONFIG_NAME, Run
from fyp.stages import PIPELINE, TOOLS as FYP_TOOLS, Stage, available_stages, get_stage, option_defaults
from fyp.store import ShardError, StoreError

from . import arrayspec, clusters, ledger, local, render, slurm, status
from .options import OptionError, add_stage_options, stage_opts, to_argv
from .task import finalize as finalize_inline

USER_ERRORS = (ConfigError, OptionError, clusters.ClusterConfigError, arrayspec.ArraySpecError, render.RenderError,
               slurm.SlurmError, StoreError, ShardError, FileNotFoundError, FileExistsError)


class UsageError(ValueError):
    pass


# the run directory cannot be written: a full disk or quota, a read-only filesystem, no permission
UNWRITABLE = {errno.ENOSPC: "no space left on the device (free some, or move the run)",
              errno.EDQUOT: "disk quota exceeded (free some, or move the run)",
              errno.EROFS: "the filesystem is read-only (give a writable --run directory)",
              errno.EACCES: "permission denied (give a writable --run directory)",
              errno.EPERM: "permission denied (give a writable --run directory)"}


def unwritable_line(exc: OSError) -> str:
    return f"cannot write {exc.filename or 'the run directory'}: {UNWRITABLE[exc.errno]}"


class TaskUnwritable(OSError):
    """A task failed because it could not write the run directory (its record says errno and path)."""


def echo(msg: str = "") -> None:
    print(msg, flush=True)


# commands that are whole programs: the rest of argv goes to their `main(argv)`
TOOLS = {**FYP_TOOLS, "scaling": "hpc.scaling"}
COMMANDS = ("status", "pipeline", *PIPELINE, *TOOLS)


def load_stage(name: str) -> Stage:
    try:
        return get_stage(name)
    except ValueError:
        raise UsageError(f"unknown command {name!r}; valid: {', '.join(COMMANDS)}") from None
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"stage {name!r} is not available in this installation ({exc}); "
                         f"available stages: {', '.join(available_stages())}") from None


# -- planning -------------------------------------------------------------------------------------
@dataclass
class VariantPlan:
    variant: str | None
    todo: list[int]  # shards to run now
    covers_rest: bool  # after these, no shard is left pending: finalisation may follow
    finalized: bool
    active: set = field(default_factory=set)  # shards already queued or running (not submitted again)


@dataclass
class StageResult:
    stage: str
    task_jobs: list[str] = field(default_factory=list)
    finalize_jobs: list[str] = field(default_factory=list)
    failed: bool = False
    nothing: bool = False


def _safe_pending(stage: Stage, run: Run, variant, opts: dict, shards: int) -> list[int]:
    try:
        return list(stage.pending_shards(run, variant, opts))
    except (StoreError, FileNotFoundError, KeyError):
        return list(range(shards))  # its arrays do not exist yet (dry run, or a later stage of a chain)


class Submitter:
    def __init__(self, run: Run, cluster: clusters.ClusterConfig, dry_run: bool = False, in_memory: bool = False):
        self.run, self.cluster, self.dry_run, self.in_memory = run, cluster, dry_run, in_memory
        self.slurm = cluster.executor == "slurm"
        self.submitted: list[str] = []
        self._states: dict | None = None
        self._fake = 0
        self.chained = False  # an upstream stage of this invocation has jobs queued

    def _scheduler_states(self) -> dict:
        if self._states is None:
            entries = [] if self.in_memory else ledger.read(self.run.dir)
            jobs = [str(e["job_id"]) for e in entries if e["kind"] in ("tasks", "finalize")]
            self._states = slurm.query(jobs) if jobs and slurm.available() else {}
        return self._states

    def plan(self, stage: Stage, opts: dict, spec: arrayspec.ArraySpec | None, retry_failed: bool) -> list[VariantPlan]:
        shards = stage.num_shards(self.run, opts)
        if spec:
            arrayspec.check_within(spec, shards, stage.name)
        wanted = list(spec.indices) if spec else list(range(shards))
        plans = []
        for variant in stage.variants(self.run, opts):
            # in a chain whose upstream stage is queued, the stores cannot say yet what is pending:
            # submit every shard (tasks skip what their done masks mark)
            pending = set(range(shards)) if self.chained else set(_safe_pending(stage, self.run, variant, opts, shards))
            known = None
            if not self.in_memory and (retry_failed or ledger.read(self.run.dir)):
                known = status.stage_status(self.run, stage, variant, opts, ledger.read(self.run.dir),
                                            self._scheduler_states())
            # unknown = submitted, not in sacct yet (often just queued): resubmitting could run it twice
            active = ({s.shard for s in known.shards if s.state in ("queued", "running", "unknown")}
                      if known and self.slurm else set())
            todo = [s for s in wanted if s in pending and s not in active]
            if retry_failed:
                failed = {s.shard for s in known.shards if s.state in ("failed", "cancelled")} if known else set()
                todo = [s for s in todo if s in failed]
            if active:
                echo(f"{stage.name}{'/' + variant if variant else ''}: shards {arrayspec.format_indices(active)} are "
                     f"already queued or running (or not in sacct yet); not submitted again")
            covers = pending <= set(todo)
            finalized = (not self.in_memory) and ledger.finalized_marker(self.run.dir, stage.name, variant).exists()
            plans.append(VariantPlan(variant, todo, covers, finalized, active))
        return plans

    # -- one stage --------------------------------------------------------------------------------
    def stage(self, stage: Stage, opts: dict, spec=None, retry_failed=False, depends: list[str] = ()) -> StageResult:
        if not (self.dry_run or self.in_memory):
            for variant in stage.variants(self.run, opts):
                stage.prepare_variant(self.run, variant, opts)
        plans = self.plan(stage, opts, spec, retry_failed)
        result = StageResult(stage.name)
        work = [p for p in plans if p.todo or (p.covers_rest and not p.finalized and not retry_failed)]
        if not work and any(p.active for p in plans):
            result.nothing = True  # the plan said which shards are queued or running: nothing more to say
            return result
        if not work:
            result.nothing = True
            try:
                done, total = stage.progress(self.run, None if len(plans) != 1 else plans[0].variant, opts)
                progress = f" ({done}/{total} {stage.progress_unit} done)" if total else ""
            except Exception:  # noqa: BLE001 - progress is informative only
                progress = ""
            reason = "no failed shards to retry" if retry_failed else "every shard is done"
            echo(f"{stage.name}: nothing to do, {reason}{progress}")
            return result
        if self.slurm:
            return self._submit_slurm(stage, opts, spec, work, list(depends), result, retry_failed)
        return self._run_local(stage, opts, spec, work, result)

    def _job_id(self, cmd: list[str], label: str) -> str:
        if self.dry_run:
            self._fake += 1
            job = f"<{label}>"
            echo(f"$ {render.shell_join(cmd)}")
            return job
        job = slurm.sbatch(cmd)
        self.submitted.append(job)
        return job

    def _previous_throttle(self, stage: str, variant) -> int | None:
        """The %throttle of the last array this stage (variant) was submitted as: a retry keeps it."""
        entries = [] if self.in_memory else ledger.read(self.run.dir)
        arrays = [e.get("array") or "" for e in entries
                  if e["kind"] == "tasks" and e["stage"] == stage and e.get("variant") == variant]
        return int(arrays[-1].rsplit("%", 1)[1]) if arrays and "%" in arrays[-1] else None

    def _submit_slurm(self, stage, opts, spec, work, depends, result, retry_failed=False) -> StageResult:
        argv = to_argv(stage, opts)
        for plan in work:  # every shape is checked before anything is submitted
            res = self.cluster.resources(stage.name, plan.variant)
            clusters.check_shape(self.cluster, stage.name, res, render.tasks_per_node(stage.name, res))
        for plan in work:
            res = self.cluster.resources(stage.name, plan.variant)
            label = stage.name + (f"/{plan.variant}" if plan.variant else "")
            folder = ledger.log_dir(self.run.dir, stage.name, plan.variant)
            run_dir = self.run.dir.resolve()
            scripts = [render.task_script(stage.name, plan.variant, res, run_dir),
                       render.finalize_script(stage.name, plan.variant,
                                              self.cluster.finalize_resources(stage.name, plan.variant), run_dir)]
            if self.dry_run:
                for script in scripts:
                    echo(f"# ---- {folder / script.path_name}\n{script.text}")
            else:
                folder.mkdir(parents=True, exist_ok=True)  # logs go here: it must exist before sbatch
                for script in scripts:
                    (folder / script.path_name).write_text(script.text)
            task_path, fin_path = (folder / s.path_name for s in scripts)
            throttle = (spec.throttle if spec and spec.throttle else None) or (
                self._previous_throttle(stage.name, plan.variant) if retry_failed else None) or res.throttle or None
            chunk_jobs = []
            for offset, indices in arrayspec.split(plan.todo, self.cluster.max_array_size):
                array = arrayspec.render(indices, throttle)
                cmd = render.sbatch_command(task_path, array, depends, offset, argv)
                job = self._job_id(cmd, f"{label}:{offset}" if offset else label)
                chunk_jobs.append(job)
                if not self.dry_run:
                    ledger.append(self.run.dir, kind="tasks", stage=stage.name, variant=plan.variant, job_id=job,
                                  offset=offset, indices=indices, array=array, depends=depends,
                                  cluster=self.cluster.name, script=str(task_path), opts=opts)
            result.task_jobs += chunk_jobs
            shown = arrayspec.format_indices(plan.todo)
            if plan.covers_rest:
                parents = chunk_jobs or depends
                job = self._job_id(render.sbatch_command(fin_path, None, parents, 0, argv), f"{label}:finalize")
                result.finalize_jobs.append(job)
                if not self.dry_run:
                    ledger.append(self.run.dir, kind="finalize", stage=stage.name, variant=plan.variant, job_id=job,
                                  depends=parents, cluster=self.cluster.name, script=str(fin_path), opts=opts)
                echo(f"{label}: submitted shards {shown or '-'} as {', '.join(chunk_jobs) or 'no tasks'}; "
                     f"finalize {job} (afterok)")
            else:
                echo(f"{label}: submitted shards {shown} as {', '.join(chunk_jobs)}; finalize not submitted: "
                     f"other shards are still pending (submit them, then the stage finalises)")
        return result

    def _run_local(self, stage, opts, spec, work, result) -> StageResult:
        throttle = (spec.throttle if spec and spec.throttle else 0) or self.cluster.resources(stage.name).throttle
        tasks = [local.LocalTask(stage.name, p.variant, s, opts) for p in work for s in p.todo]
        if self.dry_run:
            for task in tasks:
                echo(f"would run {task.label} locally")
            return result
        if tasks:
            echo(f"{stage.name}: running {len(tasks)} task(s) locally, {throttle or 'all'} at a time")
            local.run_tasks(self.run.dir, tasks, self.cluster.resources, throttle, echo=echo)
        failed = {t.variant for t in tasks if t.state == "failed"}
        result.failed = bool(failed)
        stuck = [t for t in tasks if t.state == "failed" and t.record.get("errno") in UNWRITABLE]
        if stuck:  # the environment, not the stage: say so in one line (the task records say "failed")
            record = stuck[0].record
            raise TaskUnwritable(record["errno"], os.strerror(record["errno"]), record.get("filename") or str(self.run.dir))
        for plan in work:
            label = stage.name + (f"/{plan.variant}" if plan.variant else "")
            if plan.variant in failed or not plan.covers_rest:
                continue
            finalize_inline(stage.name, self.run.dir, plan.variant, opts)
            echo(f"{label}: finalised")
        return result


# -- commands -------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--run", required=True, help="the run directory")
    parser.add_argument("--cluster", default="local",
                        help=f"local (this machine) or a cluster config: {', '.join(clusters.available_clusters())}")
    parser.add_argument("--dry-run", action="store_true", help="print what would run (sbatch scripts) and stop")
    parser.add_argument("--wait", action="store_true", help="Slurm: block until the jobs end; non-zero if any failed")
    if creating:
        parser.add_argument("--preset", help="preset of a new run: " + ", ".join(_presets()))
        parser.add_argument("--samples", type=int, help="number of samples (data.samples)")
        parser.add_argument("--shards", type=int, help="number of shards")
        parser.add_argument("--set", action="append", default=[], metavar="KEY.SUB=VALUE",
                            help="override a config value (repeatable)")


def _presets() -> list[str]:
    from fyp.config import available_presets

    return available_presets()


def ensure_run(args, stage: Stage) -> tuple[Run, bool]:
    """Open the run, or create it with the stage that creates runs (prepare/pipeline); returns (run, in_memory).

    A prepared run given settings again is handed to that stage too: the same settings are a no-op, others
    are refused (a run's settings are fixed when it is prepared)."""
    run_dir = Path(args.run)
    overrides = parse_overrides(args.set)
    exists = (run_dir / CONFIG_NAME).exists()
    if exists and not (args.preset or overrides or args.samples is not None or args.shards is not None):
        return Run.open(run_dir), False
    if not exists and not args.preset:
        raise UsageError(f"{run_dir} is not a prepared run yet: give --preset (one of {', '.join(_presets())})")
    run = stage.create_run(run_dir, args.preset, overrides, args.samples, args.shards, dry_run=args.dry_run)
    if exists:
        return run, False
    if not args.dry_run:  # a dry run resolved the configuration in memory and wrote nothing
        echo(f"created run {run_dir} (preset {args.preset}, {run.config.shards} shards)")
    return run, args.dry_run


def _finish(sub: Submitter, wait: bool, stage_names: list[str]) -> int:
    if not sub.slurm or sub.dry_run:
        return 0
    if sub.submitted:
        echo("submitted jobs: " + " ".join(sub.submitted))
    if not wait or not sub.submitted:
        return 0
    states = slurm.wait(sub.submitted, echo=echo)
    bad = {k: v for k, v in states.items() if v.state != "COMPLETED"}
    echo(status.render(sub.run.dir, status.collect(sub.run.dir, stage_names)))
    if bad:
        echo(f"{len(bad)} job(s) did not complete: " + ", ".join(f"{k} {v.state}" for k, v in sorted(bad.items())[:10]))
        return 1
    return 0


def cmd_stage(name: str, argv: list[str]) -> int:
    stage = load_stage(name)
    parser = argparse.ArgumentParser(prog=f"python -m hpc.submit {name}")
    _common(parser, creating=stage.creates_run)
    parser.add_argument("--array", help="shards in Slurm syntax: 0-15, 0,3,7, 0-15:4, 0-255%%8 (default: all pending)")
    parser.add_argument("--retry-failed", action="store_true", help="run only the shards whose last task failed")
    if stage.creates_run:
        parser.add_argument("--create-only", action="store_true", help="write config and store, run no task")
    add_stage_options(parser, stage)
    args = parser.parse_args(argv)
    cluster = clusters.load(args.cluster)
    opts = stage_opts(stage, args)
    spec = arrayspec.parse(args.array) if args.array is not None else None  # --array= is refused, not "all"
    if stage.creates_run:
        run, in_memory = ensure_run(args, stage)
        if args.create_only:
            return 0
    else:
        run, in_memory = Run.open(args.run), False
    stage.check_options(run, opts)
    sub = Submitter(run, cluster, args.dry_run, in_memory)
    result = sub.stage(stage, opts, spec, args.retry_failed)
    if result.failed:
        echo(f"{name}: some tasks failed; see `python -m hpc.submit status --run {args.run}`, then --retry-failed")
        return 1
    return _finish(sub, args.wait, [name])


def pipeline_stages() -> list[str]:
    """The available prefix of the pipeline: a stage after a missing one would lack its inputs."""
    available = set(available_stages())
    names = []
    for name in PIPELINE:
        if name not in available:
            break
        names.append(name)
    return names


def cmd_pipeline(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc.submit pipeline")
    _common(parser, creating=True)
    args = parser.parse_args(argv)
    cluster = clusters.load(args.cluster)
    names = pipeline_stages()
    run, in_memory = ensure_run(args, get_stage(names[0]))
    sub = Submitter(run, cluster, args.dry_run, in_memory)
    missing = PIPELINE[len(names)] if len(names) < len(PIPELINE) else None
    echo(f"pipeline on {cluster.name}: {' -> '.join(names)}"
         + (f" (stops before {missing}: not available in this installation yet)" if missing else ""))
    depends: list[str] = []
    for name in names:
        stage = get_stage(name)
        opts = option_defaults(stage.options)
        opts.update(stage.chain_options(run, names))
        result = sub.stage(stage, opts, None, False, depends)
        if result.failed:
            echo(f"pipeline stopped: {name} failed; see `python -m hpc.submit status --run {args.run}`")
            return 1
        depends = result.finalize_jobs or depends
        sub.chained = sub.chained or bool(result.task_jobs or result.finalize_jobs) or (in_memory and not result.nothing)
    return _finish(sub, args.wait, names)


def cmd_status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc.submit status")
    parser.add_argument("--run", required=True)
    parser.add_argument("--stage", action="append", help="only these stages (repeatable)")
    parser.add_argument("--details", action="store_true", help="one line per failed or cancelled shard, with its log")
    args = parser.parse_args(argv)
    echo(status.render(args.run, status.collect(args.run, args.stage), details=args.details))
    return 0


def cmd_tool(name: str, argv: list[str]) -> int:
    import importlib

    return int(importlib.import_module(TOOLS[name]).main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        echo(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "status":
            return cmd_status(rest)
        if command == "pipeline":
            return cmd_pipeline(rest)
        if command in TOOLS:
            return cmd_tool(command, rest)
        return cmd_stage(command, rest)
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            if isinstance(exc, USER_ERRORS):
                return _one_line(exc)
            raise
        label = f"{command}: a task failed: " if isinstance(exc, TaskUnwritable) else ""
        print(f"error: {label}{unwritable_line(exc)}; then run again", file=sys.stderr)
        return 2
    except (UsageError, *USER_ERRORS) as exc:
        return _one_line(exc)


def _one_line(exc: BaseException) -> int:
    print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
