"""The Slurm tests' call of the command line, and their bounded wait."""
import subprocess
import sys
import time


def submit_cli(*args, ok=True, timeout=900, env=None) -> subprocess.CompletedProcess:
    """`python -m hpc.submit ARGS`; with `ok`, a non-zero exit fails the test with both streams."""
    out = subprocess.run([sys.executable, "-m", "hpc.submit", *[str(a) for a in args]], capture_output=True,
                         text=True, timeout=timeout, env=env)
    if ok:
        assert out.returncode == 0, f"hpc.submit {' '.join(map(str, args))} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def wait_until(check, timeout: float, what: str) -> None:
    """Poll `check` every 0.5 s until it is true; fail the test after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
