"""On the REAL two-node local Slurm cluster (python -m hpc.local_slurm start --nodes 2; root): the nodes are
network namespaces on a bridge, so an array spreads over two hosts, a training job's ranks on two nodes
rendezvous over the bridge (gloo, ZeRO-3), the pre-timeout signal reaches every rank on both nodes, and
a node whose slurmd dies takes its job down in a way `status` names.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slurm_cli import submit_cli, wait_until
from hpc import ledger, local_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1500), pytest.mark.flaky(reruns=1, reruns_delay=5)]

ROOT = Path(__file__).resolve().parents[2]
LOCAL = (ROOT / "cluster_configs" / "slurm-local.yaml").read_text()
PAIRS = "brightness"
STEPS = 2
# ZeRO-3, full fine-tuning; a global batch of 4 pairs: 1 process x 4, or 2 nodes x 2 tasks x 1
TRAIN = {"zero_stage": 3, "lr": 1e-3, "beta": 500, "warmup_steps": 0, "checkpoint_every": 0, "steps": STEPS,
         "export": False, "pairs": PAIRS}




def cli(*args, ok=True, timeout=1200, env=None):
    return submit_cli(*args, ok=ok, timeout=timeout, env=env)


def cluster_config(tmp: Path, name: str, stages: str) -> Path:
    """slurm-local.yaml with its `stages:` replaced."""
    path = tmp / f"{name}.yaml"
    path.write_text(LOCAL.split("stages:")[0] + "stages:\n" + stages)
    return path


def test_nodelist_parser_agrees_with_scontrol(cluster):
    from fyp.dpo.launch import expand_nodelist, first_host

    hostnames = lambda text: subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True,
                                            check=True).stdout.split()
    for nodelist in ("node[1-2]", "gpu[007-008,010],cpu1", "r[1-2]n[09-10]", "rack[1-2]-node[3-4]",
                     "n[1-2],m[3,5-6]", "x[09-11]"):
        assert expand_nodelist(nodelist) == hostnames(nodelist), nodelist
    # A suffix after the range: Slurm 22.05's scontrol refuses it (prints nothing on stdout), newer ones expand
    # it; first_host then falls back to the parser, which must give what a newer scontrol gives.
    for nodelist, want in (("node[1-2]-ib", ["node1-ib", "node2-ib"]), ("r[1-2]n[09-10]-ib,login",
                           ["r1n09-ib", "r1n10-ib", "r2n09-ib", "r2n10-ib", "login"])):
        assert hostnames(nodelist) in ([], want), nodelist
        assert expand_nodelist(nodelist) == want and first_host(nodelist) == want[0]


def test_array_spreads_over_both_nodes(cluster, tmp_path):
    """Two sample tasks that each need 3 of a node's 4 CPUs: Slurm must put them on different nodes."""
    config = cluster_config(tmp_path, "wide", "  sample: {cpus_per_task: 3}\n")
    run = tmp_path / "spread"
    cli("prepare", "--run", run, "--preset", "tiny", "--samples", "4", "--shards", "2", "--set", "data.resolution=32",
        "--set", "sampling.candidates=2", "--cluster", "slurm-local", "--wait")
    cli("sample", "--run", run, "--cluster", config, "--wait")
    hosts = {}
    for log in sorted((run / "logs/sample").glob("shard-*.log")):
        hosts[log.name[:11]] = re.search(r" on (\S+), attempt", log.read_text()).group(1)
    assert sorted(hosts.values()) == ["node1", "node2"], hosts


@pytest.fixture(scope="module")
def toy(cluster, tmp_path_factory):
    """A toy run with brightness pairs, and its losses trained by ONE process with 4 pairs a step."""
    base = tmp_path_factory.mktemp("multinode") / "base"
    code = ("import sys; from fyp.dpo.toy import make_toy_run; "
            f"make_toy_run(sys.argv[1], {{'data': {{'samples': 4}}, 'train': {TRAIN!r}}}, pairs={PAIRS!r})")
    subprocess.run([sys.executable, "-c", code, str(base)], check=True, timeout=600)
    single = base.parent / "single"
    shutil.copytree(base, single)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    subprocess.run([sys.executable, "-m", "fyp.dpo.train", "--run-dir", str(single), "--pairs", PAIRS,
                    "--set", "train.batch_size=4"], check=True, timeout=900, env=dict(env, OMP_NUM_THREADS="1"),
                   capture_output=True)
    return base, single


def _losses(run: Path) -> np.ndarray:
    from fyp.dpo.train import read_metrics

    return np.array([row["loss"] for row in read_metrics(run, PAIRS)])


def test_two_nodes_two_tasks_each_match_one_process(toy, tmp_path):
    """train on 2 nodes x 2 tasks (gloo over the bridge, ZeRO-3) = 1 process with the same 4 pairs a step.
    The submitting shell carries a stale MASTER_ADDR/MASTER_PORT (sbatch exports it): the job's own wins."""
    base, single = toy
    run = tmp_path / "two-by-two"
    shutil.copytree(base, run)
    config = cluster_config(tmp_path, "2x2", "  train: {nodes: 2, gpus_per_node: 2}\n")
    stale = dict(os.environ, MASTER_ADDR="192.0.2.123", MASTER_PORT="1", OMP_NUM_THREADS="1")
    cli("train", "--run", run, "--cluster", config, "--set", "train.batch_size=1", "--wait", env=stale)
    script = (run / "logs/train/train.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=2" in script
    log = next((run / "logs/train").glob("shard-00000.job-*.attempt-0.log")).read_text()
    assert "train: 4 processes: srun" in log and "over 4 process(es)" in log, log[-3000:]
    np.testing.assert_allclose(_losses(run), _losses(single), rtol=1e-4, atol=1e-5)


def test_a_node_whose_slurmd_dies_takes_the_job_down_and_status_names_it(cluster, tmp_path):
    """A 2-node task holds (FYP_SAMPLE_HOLD) on its batch node; the OTHER node's slurmd is SIGKILLed.
    slurmctld declares that node down (SlurmdTimeout) and ends the job NODE_FAIL; with --requeue it is
    queued again. `status` says which node went down and why. The node is brought back after."""
    config = cluster_config(tmp_path, "two-node-sample", "  sample: {nodes: 2}\n")
    run = tmp_path / "nodefail"
    cli("prepare", "--run", run, "--preset", "tiny", "--samples", "2", "--shards", "1", "--set", "data.resolution=32",
        "--set", "sampling.candidates=2")  # here: only the sample task goes to the cluster
    cli("sample", "--run", run, "--cluster", config, env=dict(os.environ, FYP_SAMPLE_HOLD="images:1"))
    job = next(str(e["job_id"]) for e in ledger.read(run) if e["stage"] == "sample" and e["kind"] == "tasks")
    try:
        wait_until(lambda: (run / ".sample-hold").exists(), 600, "the task to reach its hold point")
        log = next((run / "logs/sample").glob("shard-00000.job-*.attempt-0.log")).read_text()
        batch_node = re.search(r" on (node\d), attempt", log).group(1)
        victim = "node2" if batch_node == "node1" else "node1"
        os.kill(local_slurm.pid_of(local_slurm.slurmd(victim)), signal.SIGKILL)

        def reported():
            report = cli("status", "--run", run, "--stage", "sample").stdout
            return "NODE_FAIL" in report and report

        wait_until(reported, 300, "slurmctld to declare the node down and status to report it")
        report = reported()
        assert f"node {victim} (Not responding) went down (the job ran on node[1-2])" in report, report
        row = next(line for line in report.splitlines() if line.startswith("sample "))
        # requeued (the task script asks for --requeue) or failed: never running, never done
        assert row.split()[3] == "1" or row.split()[6] == "1", report
    finally:
        subprocess.run(["scancel", job], check=False)
        local_slurm.start(verbose=False)  # the node comes back (ReturnToService=2 / RESUME)
    assert local_slurm.is_up()
