"""The embedded default end to end, through the CLI in a subprocess: prepare + sample with several
local shards (submitit LocalExecutor), a task SIGKILLed mid-run, --retry-failed, and a re-run with
nothing to do."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fyp.store import RunStore

pytestmark = pytest.mark.timeout(900)

SMALL = ["--preset", "tiny", "--samples", "6", "--shards", "3", "--set", "data.resolution=32",
         "--set", "sampling.candidates=2", "--set", "sampling.batch_size=2"]


def test_local_prepare_sample_kill_retry(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-m", "hpc.submit", "prepare", "--run", str(run), *SMALL],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("done    prepare shard") == 3 and "prepare: finalised" in out.stdout

    # The sample stage's test hook parks shard 1 right after its 2nd sample's images (before that
    # sample's seeds and done flag): a half-written shard on every run, however fast the machine.
    hold_env = dict(env, FYP_SAMPLE_HOLD="images:2:1")
    sample = subprocess.Popen([sys.executable, "-m", "hpc.submit", "sample", "--run", str(run), "--array", "0-2%3"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=hold_env)
    group = lambda: RunStore.open(run, mode="r")
    deadline = time.time() + 600
    while not (run / ".sample-hold").exists() and time.time() < deadline:
        time.sleep(0.5)
    assert group().candidates.done[2] and not group().candidates.done[3]  # shard 1 is mid-run
    logs = list((run / "logs/sample/shard-00001").glob("*_log.out"))
    assert len(logs) == 1
    pid = int(re.search(r"local task, pid (\d+)", logs[0].read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    stdout, _ = sample.communicate(timeout=600)
    assert sample.returncode == 1, stdout
    assert "FAILED  sample shard 1" in stdout and "killed" in stdout
    assert stdout.count("done    sample shard") == 2
    assert "sample: finalised" not in stdout  # a shard is missing: no finalisation

    status = subprocess.run([sys.executable, "-m", "hpc.submit", "status", "--run", str(run), "--stage", "sample"],
                            capture_output=True, text=True, timeout=300).stdout
    assert "sample shard 1 FAILED" in status and "task process ended without a result (killed?)" in status
    assert f"log: {logs[0]}" in status

    retry = subprocess.run([sys.executable, "-m", "hpc.submit", "sample", "--run", str(run), "--retry-failed"],
                           capture_output=True, text=True, timeout=600, env=env)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "running 1 task(s)" in retry.stdout and "done    sample shard 1" in retry.stdout
    assert "sample: finalised" in retry.stdout
    assert len(list((run / "logs/sample/shard-00001").glob("*_log.out"))) == 2  # one log per attempt

    store = group()
    assert store.candidates.done[:].all()
    seeds = store.candidates.seed[:]
    assert (seeds >= 0).all() and len(np.unique(seeds)) == seeds.size
    images = store.candidates.image[:]
    assert images.std() > 0 and not np.array_equal(images[:, 0], images[:, 1])  # candidates differ by seed

    start = time.time()
    again = subprocess.run([sys.executable, "-m", "hpc.submit", "sample", "--run", str(run)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "sample: nothing to do, every shard is done (6/6 samples done)" in again.stdout
    assert time.time() - start < 120
