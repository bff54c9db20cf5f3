"""The command line, in process: clear one-line errors, dry runs that write nothing, status from records."""
import pytest

from fyp.run import Run
from hpc import ledger, slurm, status
from hpc.submit import main


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def created(tmp_path_factory):
    """A run with config and store, no task run (prepare --create-only)."""
    run = tmp_path_factory.mktemp("hpc") / "run"
    assert main(["prepare", "--run", str(run), "--preset", "tiny", "--samples", "6", "--shards", "3",
                 "--create-only"]) == 0
    return run


def test_unknown_preset_lists_valid(capsys, tmp_path):
    code, out, err = run_cli(capsys, "prepare", "--run", tmp_path / "r", "--preset", "tinyy")
    assert code == 2
    assert err.strip().startswith("error: unknown preset 'tinyy'; valid presets:") and "tiny" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_unknown_config_key_lists_valid(capsys, tmp_path):
    code, _, err = run_cli(capsys, "prepare", "--run", tmp_path / "r", "--preset", "tiny", "--set", "sampling.stepz=3")
    assert code == 2
    assert "unknown config key sampling.stepz" in err and "valid keys:" in err and "steps" in err
    assert len(err.strip().splitlines()) == 1


def test_array_index_outside_shards(capsys, created):
    code, _, err = run_cli(capsys, "prepare", "--run", created, "--array", "0-3")
    assert code == 2
    assert err.strip() == "error: prepare: --array index 3 is outside this run's shards 0-2"


def test_bad_cluster_config_is_refused_before_submitting(capsys, created, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("executor: slurm\npartition: gpu\ngpus: 2\n")
    before = ledger.read(created)  # the shared run's ledger (another test may have written to it)
    code, _, err = run_cli(capsys, "prepare", "--run", created, "--cluster", bad)
    assert code == 2 and "unknown key 'gpus'" in err and "valid keys:" in err
    assert ledger.read(created) == before  # nothing submitted, nothing recorded


def test_unknown_stage(capsys, created):
    code, _, err = run_cli(capsys, "smaple", "--run", created)
    assert code == 2 and "unknown command 'smaple'" in err and "pipeline" in err


def test_pipeline_dry_run_renders_afterok_chain_and_writes_nothing(capsys, tmp_path):
    run = tmp_path / "never"
    code, out, _ = run_cli(capsys, "pipeline", "--run", run, "--preset", "tiny", "--samples", "4", "--shards", "2",
                           "--cluster", "slurm-local", "--dry-run")
    assert code == 0
    assert not run.exists()
    commands = [line for line in out.splitlines() if line.startswith("$ sbatch")]
    assert commands[0] == f"$ sbatch --parsable --array=0-1 {run}/logs/prepare/prepare.sbatch"
    assert "'--dependency=afterok:<prepare>'" in commands[1] and "finalize.sbatch" in commands[1]
    sample = [c for c in commands if "sample/sample.sbatch" in c]
    assert sample and "'--dependency=afterok:<prepare:finalize>'" in sample[0]
    # every stage after the first waits on the previous stage's finalisation jobs
    for cmd in commands[2:]:
        assert "--dependency=afterok:" in cmd
    assert "#SBATCH --partition=debug" in out and "#SBATCH --signal=B:USR2@60" in out


def test_stage_dry_run_on_slurm_splits_large_arrays(capsys, tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("executor: slurm\nmax_array_size: 2\n")
    run = tmp_path / "r"
    code, out, _ = run_cli(capsys, "prepare", "--run", run, "--preset", "tiny", "--samples", "5", "--shards", "5",
                           "--cluster", cfg, "--dry-run", "--array", "0-4%2")
    assert code == 0
    commands = [line for line in out.splitlines() if line.startswith("$ sbatch --parsable --array")]
    assert commands == [
        f"$ sbatch --parsable --array=0-1%2 {run}/logs/prepare/prepare.sbatch",
        f"$ sbatch --parsable --array=0-1%2 --export=ALL,HPC_SHARD_OFFSET=2 {run}/logs/prepare/prepare.sbatch",
        f"$ sbatch --parsable --array=0%2 --export=ALL,HPC_SHARD_OFFSET=4 {run}/logs/prepare/prepare.sbatch",
    ]
    assert "afterok:<prepare>:<prepare:2>:<prepare:4>" in out


def test_status_reports_failures_with_error_and_log(capsys, created, monkeypatch):
    run = Run.open(created)
    run.write_task_record("prepare", 0, "done", done=2)
    run.write_task_record("prepare", 1, "failed", error="ValueError: corrupt image at sample 3")
    log = created / "logs/prepare/shard-00001/4242_0_log.out"
    ledger.append(created, kind="local", stage="prepare", variant=None, shard=1, job_id="4242", log=str(log))
    run.write_task_record("prepare", 1, "failed", error="ValueError: corrupt image at sample 3")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("ValueError: corrupt image at sample 3\n")  # status names a log only where one exists
    code, out, _ = run_cli(capsys, "status", "--run", created, "--stage", "prepare")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("prepare "))
    assert row.split()[1:8] == ["0/6", "1", "0", "0", "1", "1", "0"]
    assert "prepare shard 1 FAILED (job 4242): ValueError: corrupt image at sample 3" in out
    assert "log: " + str(created / "logs/prepare/shard-00001/4242_0_log.out") in out


def test_status_of_a_1024_task_run_makes_one_scheduler_call(tmp_path, monkeypatch):
    run_dir = tmp_path / "big"
    assert main(["prepare", "--run", str(run_dir), "--preset", "tiny", "--samples", "1024", "--shards", "1024",
                 "--create-only", "--set", "data.resolution=16"]) == 0
    ledger.append(run_dir, kind="tasks", stage="prepare", variant=None, job_id="100", offset=0,
                  indices=list(range(1001)), array="0-1000")
    ledger.append(run_dir, kind="tasks", stage="prepare", variant=None, job_id="101", offset=1001,
                  indices=list(range(23)), array="0-22")
    ledger.append(run_dir, kind="finalize", stage="prepare", variant=None, job_id="102", depends=["100", "101"])
    calls = []

    def fake_run(cmd, **kw):  # what sacct prints for these jobs: one line per task, pending ranges folded
        calls.append(cmd)
        import subprocess
        lines = [f"100_{i}|RUNNING|None|0:0" for i in range(1000)] + ["100_1000|FAILED|None|1:0",
                 "101_[0-22%4]|PENDING|JobArrayTaskLimit|0:0", "102|PENDING|Dependency|0:0"]
        return subprocess.CompletedProcess(cmd, 0, "\n".join(lines) + "\n", "")

    monkeypatch.setattr(slurm.subprocess, "run", fake_run)
    result = status.collect(run_dir, ["prepare"])
    assert len(calls) == 1 and calls[0][0] == "sacct" and "100,101,102" in calls[0]
    tally = result[0].tally()
    assert tally == dict(pending=0, queued=23, running=1000, done=0, failed=1, cancelled=0, unknown=0)
    assert result[0].finalize == "queued"


def test_status_of_a_task_sacct_does_not_list_yet_is_unknown_not_done(tmp_path, monkeypatch):
    """A chained sample array whose parent failed: slurmdbd lists the cancelled, never-started task 0 but
    not yet tasks 1 and 2. The store is empty (prepare never wrote it): it says nothing is done, so task 1
    is unknown; task 2's record (written after the submission) is evidence that it is done."""
    import subprocess

    from fyp.stages import get_stage

    run_dir = tmp_path / "r"
    assert main(["prepare", "--run", str(run_dir), "--preset", "tiny", "--samples", "6", "--shards", "3",
                 "--create-only"]) == 0
    ledger.append(run_dir, kind="tasks", stage="sample", variant=None, job_id="300", offset=0,
                  indices=[0, 1, 2], array="0-2", depends=["299"])
    Run.open(run_dir).write_task_record("sample", 2, "done", done=2)  # newer than the submission: evidence
    assert get_stage("sample").pending_shards(Run.open(run_dir), None, {}) == [0, 1, 2]  # nothing prepared

    def fake_run(cmd, **kw):  # sacct's real output format, parsed by slurm.query; no row for 300_1 or 300_2
        lines = ["299|FAILED|NonZeroExitCode|1:0", "300_0|CANCELLED|Dependency|0:0"]
        return subprocess.CompletedProcess(cmd, 0, "\n".join(lines) + "\n", "")

    monkeypatch.setattr(slurm.subprocess, "run", fake_run)
    result = status.collect(run_dir, ["sample"])
    assert [s.state for s in result[0].shards] == ["cancelled", "unknown", "done"]
    assert result[0].tally() == dict(pending=0, queued=0, running=0, done=1, failed=0, cancelled=1, unknown=1)
    header, row = status.render(run_dir, result).splitlines()[1:3]
    assert header.split()[1:] == ["samples", "pending", "queued", "running", "done", "failed", "cancelled",
                                  "unknown", "finalize"]
    assert row.split()[2:10] == ["0", "0", "0", "1", "0", "1", "1", "-"], row


def test_query_falls_back_to_squeue_without_accounting(monkeypatch):
    import subprocess

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd[0])
        if cmd[0] == "sacct":
            return subprocess.CompletedProcess(cmd, 1, "", "sacct: error: Slurm accounting storage is disabled\n")
        return subprocess.CompletedProcess(cmd, 0, "7_0|RUNNING|None\n7_1|PENDING|JobArrayTaskLimit\n", "")

    monkeypatch.setattr(slurm.subprocess, "run", fake_run)
    states = slurm.query(["7", "7"])
    assert calls == ["sacct", "squeue"]
    assert states["7_0"].state == "RUNNING" and states["7_1"].reason == "JobArrayTaskLimit"


def test_sacct_array_ranges_expand():
    assert slurm._expand("12_[3-5,7%2]") == ["12_3", "12_4", "12_5", "12_7"]
    assert slurm._expand("12_4") == ["12_4"] and slurm._expand("12") == ["12"]


def test_local_cluster_config_has_what_made_it_work():
    from hpc import local_slurm

    files = local_slurm.render_configs("vm", cpus=2, memory_mb=24000, nodes=2)
    conf = files[local_slurm.ETC / "slurm.conf"]
    for line in ("SlurmctldHost=vm(10.231.0.1)", "SlurmdPidFile=/run/fyp-slurm/slurmd-%n.pid", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
                 "KillWait=5", "AuthInfo=cred_expire=10", "DependencyParameters=kill_invalid_depend",
                 "ReturnToService=2", "AccountingStorageType=accounting_storage/slurmdbd", "GresTypes=gpu",
                 "SelectType=select/cons_tres", "JobAcctGatherType=jobacct_gather/none"):
        assert line in conf.splitlines(), line
    # two nodes, each at its own address on the bridge's private subnet
    assert "NodeName=node1 NodeAddr=10.231.0.11 NodeHostname=node1 CPUs=4" in conf and "RealMemory=21600" in conf
    assert "NodeName=node2 NodeAddr=10.231.0.12 NodeHostname=node2 CPUs=4" in conf
    assert any(line.startswith("DefMemPerCPU=") for line in conf.splitlines())
    assert files[local_slurm.ETC / "gres.conf"].splitlines() == [
        f"NodeName=node{k} Name=gpu File=/run/fyp-slurm/gpu[0-3]" for k in (1, 2)]
    assert local_slurm.hosts_file("vm", 2).splitlines()[1:] == ["10.231.0.1 vm", "10.231.0.11 node1", "10.231.0.12 node2"]
    assert "CgroupPlugin=cgroup/v1" in files[local_slurm.ETC / "cgroup.conf"]
    assert "StorageType=accounting_storage/mysql" in files[local_slurm.ETC / "slurmdbd.conf"]


def test_local_pipeline_dry_run_lists_tasks_in_order(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "pipeline", "--run", tmp_path / "q", "--preset", "tiny", "--samples", "4",
                           "--shards", "2", "--dry-run")
    assert code == 0 and not (tmp_path / "q").exists()
    lines = [line for line in out.splitlines() if line.startswith("would run")]
    assert lines[:4] == ["would run prepare shard 0 locally", "would run prepare shard 1 locally",
                         "would run sample shard 0 locally", "would run sample shard 1 locally"]
    assert any(line.startswith("would run score/clipscore shard 1") for line in lines)


@pytest.mark.parametrize("tool", ["agreement", "study", "scaling"])
def test_evaluation_tools_are_subcommands(tool):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "hpc.submit", tool, "--help"], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--run" in done.stdout


def test_unknown_command_lists_every_valid_one(capsys):
    code, _, err = run_cli(capsys, "agreemnt", "--run", "x")
    assert code == 2 and len(err.strip().splitlines()) == 1
    listed = err.split("valid: ", 1)[1].strip().split(", ")
    assert {"status", "pipeline", "sample", "eval", "study", "agreement", "scaling"} <= set(listed)


def test_status_counts_nonfinite_scores_per_reward(capsys, tmp_path):
    import numpy as np

    from fyp.stages import get_stage

    run_dir = tmp_path / "nf"
    assert main(["prepare", "--run", str(run_dir), "--preset", "tiny", "--samples", "6", "--shards", "3",
                 "--create-only"]) == 0
    run = Run.open(run_dir)
    for shard, count in enumerate((3, 5, 0)):  # what score tasks record (fyp.rewards.stage: nonfinite=)
        run.write_task_record("score", shard, "done", "clipscore", done=2, nonfinite=count)
    run.write_task_record("score", 0, "done", "aesthetic", done=2, nonfinite=0)

    def rows():
        code, out, _ = run_cli(capsys, "status", "--run", run_dir, "--stage", "score")
        assert code == 0
        return {line.split()[0]: line for line in out.splitlines() if line.startswith("score/")}

    before = rows()
    assert before["score/clipscore"].endswith("nonfinite 8")
    assert before["score/aesthetic"].endswith("nonfinite 0")
    assert "nonfinite" not in before["score/pickscore"]  # no task of it reported anything
    # once finalised, the count over the whole store wins: the real finalize on real arrays
    store = run.store()
    k = store.scores("clipscore").value.shape[1]
    store.samples.valid[:] = np.ones(6, bool)
    values = np.ones((6, k), np.float32)
    values[0, :] = np.nan
    values[3, 1] = np.inf
    values[5, :] = np.nan  # not done: not counted
    store.scores("clipscore").value[:] = values
    store.scores("clipscore").done[:] = np.array([1, 1, 1, 1, 1, 0], bool)
    get_stage("score").finalize(run, "clipscore", {})
    assert rows()["score/clipscore"].endswith(f"nonfinite {k + 1}")


def test_pipeline_dry_run_evaluates_the_model_its_train_stage_will_export(capsys, tmp_path):
    """Eval is submitted before train ran: the chain names the export-to-be (--trained <train.pairs>), so
    its variant exists at submission, waits on train, and the report waits on both eval variants."""
    run = tmp_path / "never"
    code, out, _ = run_cli(capsys, "pipeline", "--run", run, "--preset", "tiny", "--samples", "4", "--shards", "2",
                           "--cluster", "slurm-local", "--dry-run")
    assert code == 0 and not run.exists()
    commands = [line for line in out.splitlines() if line.startswith("$ sbatch")]
    evals = [c for c in commands if "/logs/eval/" in c and c.split()[-3].endswith("eval.sbatch")]
    scripts = sorted(c.split()[-3] for c in evals)
    assert scripts == [f"{run}/logs/eval/synthetic/baseline/eval.sbatch",
                       f"{run}/logs/eval/synthetic/ensemble/eval.sbatch"], commands
    for cmd in evals:
        assert "'--dependency=afterok:<train:finalize>'" in cmd and cmd.endswith("--trained ensemble")
    assert "VARIANT=synthetic/ensemble" in out
    report = next(c for c in commands if c.endswith("report/report.sbatch"))
    assert "<eval/synthetic/baseline:finalize>" in report and "<eval/synthetic/ensemble:finalize>" in report


def test_eval_variants_include_the_trained_export_before_it_exists(created):
    from fyp.stages import get_stage

    run, stage = Run.open(created), get_stage("eval")
    opts = {o.dest: o.kwargs.get("default") for o in stage.options}
    assert stage.variants(run, opts) == ["synthetic/baseline"]
    assert stage.variants(run, dict(opts, trained="ensemble")) == ["synthetic/baseline", "synthetic/ensemble"]
    shards = stage.num_shards(run, dict(opts, trained="ensemble"))
    assert shards >= 1 and stage.pending_shards(run, "synthetic/ensemble", dict(opts, trained="ensemble")) == list(
        range(shards))  # nothing evaluated yet
