"""A real single-node Slurm cluster on this machine: `python -m hpc.local_slurm start|stop|status`.

It installs Debian's slurm-wlm (if missing) and starts, by hand (no systemd), munged, MariaDB,
slurmdbd (so `sacct` works), slurmctld and slurmd, with a few fake GPUs. Idempotent: a daemon that is
already running is left alone; a changed configuration restarts the Slurm daemons. `stop` ends only
the daemons named by the pid files this module writes. Must run as root.

Why each setting is here (measured on Debian 12 / slurm-wlm 22.05, see ENV-NOTES.md):
- `SlurmctldHost=<host>(127.0.0.1)`, `NodeAddr=127.0.0.1`: no dependence on name resolution.
- proctrack/linuxproc + task/none + jobacct_gather/none: no cgroup or systemd needed in a container.
- DefMemPerCPU: otherwise one job takes the node's whole memory and jobs serialise.
- KillWait=5: scancel/requeue escalate to SIGKILL after 5 s instead of 30 s.
- AuthInfo=cred_expire=10: requeued jobs start again after ~10 s instead of ~120 s.
- DependencyParameters=kill_invalid_depend: an afterok child of a failed parent is cancelled
  instead of pending forever.
- ReturnToService=2: a node that went down comes back by itself when slurmd registers again.
- Fake GPUs: gres.conf File= must name character devices; symlinks to /dev/null do.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ETC = Path("/etc/slurm")
LOG_DIR = Path("/var/log/slurm")
RUN_DIR = Path("/run/fyp-slurm")
SPOOL = Path("/var/spool/fyp-slurm")
CLUSTER_NAME = "fyplocal"
PARTITION = "debug"
FAKE_GPUS = 4
# The node offers more CPUs than this 2-core machine has so that throttles (%N) and concurrent
# arrays are observable; the tasks in tests are tiny. `config_overrides` lets slurmd accept it.
NODE_CPUS = 4
MAX_ARRAY_SIZE = 1001  # Slurm's default, written down so that hpc's splitting is exercised at 1024 tasks
DB_USER, DB_PASS, DB_NAME = "slurm", "fyp-local-slurm", "slurm_acct_db"
PACKAGES = ["slurm-wlm", "munge", "slurmdbd", "mariadb-server"]


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class Daemon:
    name: str
    pidfile: Path
    log: Path


DAEMONS = [  # start order; stop runs in reverse
    Daemon("munged", Path("/run/munge/munged.pid"), Path("/var/log/munge/munged.log")),
    Daemon("mariadbd", Path("/run/mysqld/mariadbd.pid"), LOG_DIR / "mariadbd.log"),
    Daemon("slurmdbd", RUN_DIR / "slurmdbd.pid", LOG_DIR / "slurmdbd.log"),
    Daemon("slurmctld", RUN_DIR / "slurmctld.pid", LOG_DIR / "slurmctld.log"),
    Daemon("slurmd", RUN_DIR / "slurmd.pid", LOG_DIR / "slurmd.log"),
]
BY_NAME = {d.name: d for d in DAEMONS}


def _say(msg: str) -> None:
    print(f"[local_slurm] {msg}", flush=True)


def _sh(cmd: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode:
        raise ClusterError(f"{' '.join(cmd)} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-500:]}")
    return out


def hostname() -> str:
    return socket.gethostname().split(".")[0]


# -- installation ---------------------------------------------------------------------------------
def install() -> None:
    missing = [tool for tool in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch") if not shutil.which(tool)]
    if not missing:
        return
    _say(f"installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env,
                         capture_output=True, text=True)
    if out.returncode:  # stale package lists: update once and retry
        _sh(["apt-get", "update"], timeout=300, env=env)
        _sh(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], timeout=600, env=env)


# -- configuration --------------------------------------------------------------------------------
def _node_hardware() -> tuple[int, int]:
    """(real CPUs, RealMemory MiB) as slurmd -C reports them."""
    text = _sh(["slurmd", "-C"]).stdout
    fields = dict(tok.split("=", 1) for tok in text.split() if "=" in tok)
    return int(fields["CPUs"]), int(fields["RealMemory"])


def render_configs(host: str, cpus: int, memory_mb: int) -> dict[Path, str]:
    real_memory = int(memory_mb * 0.9)
    node_cpus = max(cpus, NODE_CPUS)
    def_mem = max(256, real_memory // (node_cpus * 2))
    slurm_conf = f"""# Written by `python -m hpc.local_slurm start`: a single-node test cluster. Do not edit by hand.
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={SPOOL}/ctld
SlurmdSpoolDir={SPOOL}/d
SlurmctldPidFile={BY_NAME['slurmctld'].pidfile}
SlurmdPidFile={BY_NAME['slurmd'].pidfile}
SlurmctldLogFile={BY_NAME['slurmctld'].log}
SlurmdLogFile={BY_NAME['slurmd'].log}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
DependencyParameters=kill_invalid_depend
MaxArraySize={MAX_ARRAY_SIZE}
DefMemPerCPU={def_mem}
SchedulerParameters=defer_batch=0,sched_min_interval=100000
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={node_cpus} Sockets=1 CoresPerSocket={node_cpus} ThreadsPerCore=1 RealMemory={real_memory} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    gres_conf = f"NodeName={host} Name=gpu File={RUN_DIR}/gpu[0-{FAKE_GPUS - 1}]\n"
    cgroup_conf = "CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n"
    slurmdbd_conf = f"""# Written by `python -m hpc.local_slurm start`.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile={BY_NAME['slurmdbd'].pidfile}
LogFile={BY_NAME['slurmdbd'].log}
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser={DB_USER}
StoragePass={DB_PASS}
StorageLoc={DB_NAME}
"""
    return {ETC / "slurm.conf": slurm_conf, ETC / "gres.conf": gres_conf, ETC / "cgroup.conf": cgroup_conf,
            ETC / "slurmdbd.conf": slurmdbd_conf}


def write_configs() -> bool:
    """Write the configuration files; True if any changed."""
    cpus, memory = _node_hardware()
    changed = False
    for path, text in render_configs(hostname(), cpus, memory).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed = True
        # slurmdbd refuses a config readable by others (it holds the database password)
        os.chmod(path, 0o600 if path.name == "slurmdbd.conf" else 0o644)
    return changed


def _prepare_dirs() -> None:
    for folder in (LOG_DIR, RUN_DIR, SPOOL / "ctld", SPOOL / "d", Path("/run/munge"), Path("/var/log/munge"),
                   Path("/run/mysqld")):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    shutil.chown("/var/log/munge", "munge", "munge")
    shutil.chown("/run/mysqld", "mysql", "mysql")
    for k in range(FAKE_GPUS):  # gres File= must be character devices: symlinks to /dev/null are
        link = RUN_DIR / f"gpu{k}"
        if not link.is_symlink():
            link.symlink_to("/dev/null")


# -- daemons --------------------------------------------------------------------------------------
def pid_of(daemon: Daemon) -> int | None:
    try:
        pid = int(daemon.pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # pid reuse: the process must be the daemon it claims to be
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if daemon.name.startswith(comm[:15]) or comm.startswith(daemon.name[:15]) else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _fail(msg: str, daemons: list[Daemon]) -> None:
    tails = "\n".join(f"--- {d.log} (last lines) ---\n{_tail(d.log)}" for d in daemons)
    raise ClusterError(f"{msg}\n{tails}")


def _wait_for(check, what: str, timeout: float, daemons: list[Daemon]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.25)
    _fail(f"timed out after {timeout:.0f}s waiting for {what}", daemons)


def _start_munged() -> None:
    d = BY_NAME["munged"]
    _sh(["runuser", "-u", "munge", "--", "munged", f"--pid-file={d.pidfile}", f"--log-file={d.log}"])
    _wait_for(lambda: pid_of(d) and Path("/run/munge/munge.socket.2").exists(), "munged", 15, [d])


def _mysql(sql: str) -> subprocess.CompletedProcess:
    return _sh(["mysql", "--protocol=socket", "-uroot", "-e", sql], check=False, timeout=20)


def _start_mariadb() -> None:
    d = BY_NAME["mariadbd"]
    if not (Path("/var/lib/mysql") / "mysql").exists():
        _sh(["mysql_install_db", "--user=mysql", "--datadir=/var/lib/mysql"], timeout=120)
    with open(d.log, "ab") as log:
        subprocess.Popen(["mariadbd", "--user=mysql", f"--pid-file={d.pidfile}", "--socket=/run/mysqld/mysqld.sock",
                          "--bind-address=127.0.0.1", "--skip-name-resolve"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    _wait_for(lambda: pid_of(d) and _mysql("SELECT 1").returncode == 0, "MariaDB", 60, [d])
    _mysql(f"CREATE DATABASE IF NOT EXISTS {DB_NAME}")
    for host in ("localhost", "127.0.0.1"):
        _mysql(f"CREATE USER IF NOT EXISTS '{DB_USER}'@'{host}' IDENTIFIED BY '{DB_PASS}'")
        _mysql(f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'{host}'")


def _start_slurm_daemon(name: str) -> None:
    d = BY_NAME[name]
    _sh([name], timeout=30)  # each of them forks into the background and writes its pid file
    _wait_for(lambda: pid_of(d) is not None, name, 20, [d])


def _sacctmgr_ready() -> bool:
    out = _sh(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], check=False, timeout=15)
    return out.returncode == 0


def _node_state() -> str:
    out = _sh(["sinfo", "-h", "-N", "-n", hostname(), "-o", "%T"], check=False, timeout=15)
    return out.stdout.strip().lower() if out.returncode == 0 else ""


def stop_daemon(d: Daemon, timeout: float = 20) -> bool:
    pid = pid_of(d)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    # wait for the process itself: some daemons (mariadbd) remove their pid file before they are done
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start(verbose: bool = True) -> float:
    """Bring the cluster up (idempotent); returns the seconds it took."""
    t0 = time.time()
    if os.geteuid() != 0:
        raise ClusterError("the local cluster must be started as root (it installs packages and starts daemons)")
    install()
    _prepare_dirs()
    if write_configs():
        for name in ("slurmd", "slurmctld", "slurmdbd"):  # pick up the new configuration
            if stop_daemon(BY_NAME[name]) and verbose:
                _say(f"restarted {name} for the new configuration")
    if pid_of(BY_NAME["munged"]) is None:
        _start_munged()
    if pid_of(BY_NAME["mariadbd"]) is None:
        _start_mariadb()
    if pid_of(BY_NAME["slurmdbd"]) is None:
        _start_slurm_daemon("slurmdbd")
        _wait_for(_sacctmgr_ready, "slurmdbd to answer", 30, [BY_NAME["slurmdbd"], BY_NAME["mariadbd"]])
    clusters = _sh(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"]).stdout.split()
    if CLUSTER_NAME not in clusters:
        _sh(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME])
    if pid_of(BY_NAME["slurmctld"]) is None:
        _start_slurm_daemon("slurmctld")
    if pid_of(BY_NAME["slurmd"]) is None:
        _start_slurm_daemon("slurmd")

    def node_ready() -> bool:
        state = _node_state()
        if state.startswith(("drain", "down")) or "drain" in state:
            # a drained state survives restarts in the state directory
            _sh(["scontrol", "update", f"NodeName={hostname()}", "State=RESUME"], check=False)
            return False
        return state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")

    _wait_for(node_ready, f"node {hostname()} to be idle", 60, [BY_NAME["slurmctld"], BY_NAME["slurmd"]])
    seconds = time.time() - t0
    if verbose:
        _say(f"cluster {CLUSTER_NAME} is up: node {hostname()} {_node_state()}, partition {PARTITION}, "
             f"{FAKE_GPUS} fake GPUs, accounting on ({seconds:.1f}s)")
    return seconds


def stop(verbose: bool = True) -> None:
    for d in reversed(DAEMONS):
        if stop_daemon(d) and verbose:
            _say(f"stopped {d.name}")


def running() -> dict[str, int | None]:
    return {d.name: pid_of(d) for d in DAEMONS}


def is_up() -> bool:
    return all(running().values()) and _node_state().rstrip("*~#") in ("idle", "mixed", "allocated", "completing")


def status() -> int:
    pids = running()
    for name, pid in pids.items():
        print(f"{name:10s} {'running, pid ' + str(pid) if pid else 'not running'}")
    if pids["slurmctld"]:
        print(_sh(["sinfo", "-N", "-o", "%N %P %T %c %m %G"], check=False).stdout.rstrip())
    return 0 if all(pids.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc.local_slurm", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            start()
            return 0
        if args.action == "stop":
            stop()
            return 0
        return status()
    except ClusterError as exc:
        print(f"local_slurm: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
