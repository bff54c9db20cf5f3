"""A real multi-node Slurm cluster on this machine: `python -m hpc.local_slurm start [--nodes 2]|stop|status`.

It installs Debian's slurm-wlm (if missing) and starts, by hand (no systemd), munged, MariaDB,
slurmdbd (so `sacct` works), slurmctld and one slurmd per node, with a few fake GPUs per node.
Idempotent: a daemon that is already running is left alone; a changed configuration restarts the
Slurm daemons. `stop` ends only the daemons named by the pid files this module writes and removes
only the network namespaces and interfaces it recorded creating. Must run as root.

The nodes (node1, node2, ...) are network namespaces on a bridge this module creates, with private
addresses on those interfaces only (10.231.0.0/24: the bridge .1, node k .1k; no route out of the
namespaces): slurmctld is reached at the bridge address, the nodes at theirs, and a job's ranks on
two nodes talk over the bridge, so multi-node launch (the node list, MASTER_ADDR, gloo between
hosts) is exercised for real. Each slurmd runs as `unshare --mount --uts` (its own hostname and a
bind-mounted hosts file that names the nodes) + `nsenter --net=<namespace>`; `ip netns exec` would
remount /sys and hide the cgroup mounts, and slurmd then fails to start.

Why each setting is here (measured on Debian 12 / slurm-wlm 22.05, see ENV-NOTES.md):
- `SlurmctldHost=<host>(<bridge address>)`, `NodeAddr=<namespace address>`: no dependence on name
  resolution for the daemons (the hosts file is for jobs: gloo resolves the node names).
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
import json
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
PARKED = "parked"
FAKE_GPUS = 4
# The node offers more CPUs than this 2-core machine has so that throttles (%N) and concurrent
# arrays are observable; the tasks in tests are tiny. `config_overrides` lets slurmd accept it.
NODE_CPUS = 4
NODES = 2  # default of `start`: one cluster serves the single-node tests (-N1) and the multi-node ones
SUBNET = "10.231.0"  # private, on interfaces this module creates; nothing else is ever contacted
BRIDGE = "fypbr0"
CTLD_ADDR = f"{SUBNET}.1"
CTLD_PORT, SLURMD_PORT = 6917, 6918  # not the default 6817/6818: a cluster of its own
HOSTS_FILE = RUN_DIR / "hosts"
NETWORK_STATE = RUN_DIR / "network.json"  # what start created: stop removes exactly that
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
]
BY_NAME = {d.name: d for d in DAEMONS}


def node_names(count: int) -> list[str]:
    return [f"node{k}" for k in range(1, count + 1)]


def node_addr(node: str) -> str:
    return f"{SUBNET}.{10 + int(node[4:])}"


def netns(node: str) -> str:
    return f"fyp-{node}"


def slurmd(node: str) -> Daemon:
    """The slurmd of one node: its pid file and log (slurm.conf's %n names them per node)."""
    return Daemon("slurmd", RUN_DIR / f"slurmd-{node}.pid", LOG_DIR / f"slurmd-{node}.log")


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


def render_configs(host: str, cpus: int, memory_mb: int, nodes: int = NODES) -> dict[Path, str]:
    real_memory = int(memory_mb * 0.9)
    node_cpus = max(cpus, NODE_CPUS)
    def_mem = max(256, real_memory // (node_cpus * 2))
    names = node_names(nodes)
    node_lines = "\n".join(
        f"NodeName={n} NodeAddr={node_addr(n)} NodeHostname={n} CPUs={node_cpus} Sockets=1 CoresPerSocket={node_cpus} "
        f"ThreadsPerCore=1 RealMemory={real_memory} Gres=gpu:{FAKE_GPUS} State=UNKNOWN" for n in names)
    slurm_conf = f"""# Written by `python -m hpc.local_slurm start`: a {nodes}-node test cluster on one machine. Do not edit by hand.
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}({CTLD_ADDR})
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={SPOOL}/ctld
SlurmdSpoolDir={SPOOL}/d-%n
SlurmctldPidFile={BY_NAME['slurmctld'].pidfile}
SlurmdPidFile={RUN_DIR}/slurmd-%n.pid
SlurmctldLogFile={BY_NAME['slurmctld'].log}
SlurmdLogFile={LOG_DIR}/slurmd-%n.log
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
SlurmdTimeout=30
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
{node_lines}
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
# accepts jobs and never starts them: tests of what is queued (status, refusals, job shapes)
PartitionName={PARKED} Nodes=ALL Default=NO MaxTime=INFINITE State=DOWN
"""
    gres_conf = "".join(f"NodeName={n} Name=gpu File={RUN_DIR}/gpu[0-{FAKE_GPUS - 1}]\n" for n in names)
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


def hosts_file(host: str, nodes: int) -> str:
    """/etc/hosts inside the nodes: jobs resolve node names (MASTER_ADDR, gloo) to the bridge addresses."""
    lines = ["127.0.0.1 localhost", f"{CTLD_ADDR} {host}"] + [f"{node_addr(n)} {n}" for n in node_names(nodes)]
    return "\n".join(lines) + "\n"


def write_configs(nodes: int = NODES) -> bool:
    """Write the configuration files; True if any changed."""
    cpus, memory = _node_hardware()
    changed = False
    files = render_configs(hostname(), cpus, memory, nodes)
    files[HOSTS_FILE] = hosts_file(hostname(), nodes)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed = True
        # slurmdbd refuses a config readable by others (it holds the database password)
        os.chmod(path, 0o600 if path.name == "slurmdbd.conf" else 0o644)
    return changed


def _prepare_dirs() -> None:
    for folder in (LOG_DIR, RUN_DIR, SPOOL / "ctld", Path("/run/munge"), Path("/var/log/munge"),
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


def configured_nodes() -> list[str]:
    """The node names of the written slurm.conf (none before the first start)."""
    try:
        text = (ETC / "slurm.conf").read_text()
    except OSError:
        return []
    return [line.split()[0].split("=", 1)[1] for line in text.splitlines() if line.startswith("NodeName=")]


def node_states() -> dict[str, str]:
    """node -> Slurm state (lower case, e.g. idle, mixed, down*); {} when slurmctld does not answer."""
    out = _sh(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, timeout=15)
    if out.returncode:
        return {}
    return dict(line.split()[:2] for line in out.stdout.lower().splitlines() if len(line.split()) >= 2)


def _usable(state: str) -> bool:
    return state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")


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


# -- the nodes' network: a bridge and one namespace per node ----------------------------------------
def _network_state() -> dict:
    try:
        return json.loads(NETWORK_STATE.read_text())
    except (OSError, ValueError):
        return {"links": [], "namespaces": []}


def _record(state: dict, kind: str, name: str) -> None:
    """Write down what is about to be created before creating it: stop removes what is listed."""
    if name not in state[kind]:
        state[kind].append(name)
        NETWORK_STATE.write_text(json.dumps(state))


def _link_exists(name: str, namespace: str | None = None) -> bool:
    prefix = ["ip", "-n", namespace] if namespace else ["ip"]
    return _sh([*prefix, "link", "show", name], check=False).returncode == 0


def _namespaces() -> set[str]:
    return {line.split()[0] for line in _sh(["ip", "netns", "list"]).stdout.splitlines() if line.strip()}


def setup_network(nodes: list[str]) -> None:
    """The bridge (CTLD_ADDR/24) and, per node, a namespace with a veth on the bridge (its address/24).
    Refuses to touch an interface or subnet it did not create."""
    state = _network_state()
    if not _link_exists(BRIDGE):
        routes = _sh(["ip", "route", "show", f"{SUBNET}.0/24"]).stdout.strip()
        if routes:
            raise ClusterError(f"{SUBNET}.0/24 is already routed here ({routes}); not creating {BRIDGE} over it")
        _record(state, "links", BRIDGE)
        _sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    elif BRIDGE not in state["links"]:
        raise ClusterError(f"interface {BRIDGE} exists but was not created by hpc.local_slurm; remove it or rename BRIDGE")
    _sh(["ip", "addr", "replace", f"{CTLD_ADDR}/24", "dev", BRIDGE])
    _sh(["ip", "link", "set", BRIDGE, "up"])
    existing = _namespaces()
    for node in nodes:
        ns, veth = netns(node), f"fypv{node[4:]}"
        if ns not in existing:
            _record(state, "namespaces", ns)
            _sh(["ip", "netns", "add", ns])
        elif ns not in state["namespaces"]:
            raise ClusterError(f"network namespace {ns} exists but was not created by hpc.local_slurm")
        if not _link_exists(veth):
            _record(state, "links", veth)
            _sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _sh(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        _sh(["ip", "-n", ns, "addr", "replace", f"{node_addr(node)}/24", "dev", "eth0"])
        _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])


def teardown_network(verbose: bool = True) -> None:
    state = _network_state()
    existing = _namespaces() if shutil.which("ip") else set()
    for ns in state["namespaces"]:
        if ns in existing:
            _sh(["ip", "netns", "del", ns], check=False)  # its veth end goes with it, and the peer too
            if verbose:
                _say(f"removed network namespace {ns}")
    for link in reversed(state["links"]):
        if _link_exists(link):
            _sh(["ip", "link", "del", link], check=False)
            if verbose:
                _say(f"removed interface {link}")
    NETWORK_STATE.unlink(missing_ok=True)


def _start_slurmd(node: str) -> None:
    """slurmd of one node inside its namespace: own mount namespace (hosts file) and hostname, the
    node's network (nsenter, not `ip netns exec`: that remounts /sys and slurmd then fails)."""
    d = slurmd(node)
    inner = f"mount --bind {HOSTS_FILE} /etc/hosts && hostname {node} && exec slurmd -N {node}"
    _sh(["unshare", "--mount", "--uts", "--", "nsenter", f"--net=/run/netns/{netns(node)}", "--", "sh", "-c", inner],
        timeout=30)
    _wait_for(lambda: pid_of(d) is not None, f"slurmd of {node}", 20, [d])


def _slurmd_pidfiles() -> list[Daemon]:
    """Every slurmd this module may have started (also of nodes no longer configured)."""
    found = {p.stem[len("slurmd-"):] for p in RUN_DIR.glob("slurmd-*.pid")}
    legacy = Daemon("slurmd", RUN_DIR / "slurmd.pid", LOG_DIR / "slurmd.log")  # the one-node cluster's, before
    return [slurmd(n) for n in sorted(found | set(configured_nodes()))] + [legacy]


def start(verbose: bool = True, nodes: int = NODES) -> float:
    """Bring the cluster up (idempotent); returns the seconds it took."""
    t0 = time.time()
    if os.geteuid() != 0:
        raise ClusterError("the local cluster must be started as root (it installs packages and starts daemons)")
    if not 1 <= nodes <= 9:
        raise ClusterError(f"--nodes must be between 1 and 9, got {nodes}")
    install()
    _prepare_dirs()
    names = node_names(nodes)
    if write_configs(nodes):
        for d in [*_slurmd_pidfiles(), BY_NAME["slurmctld"], BY_NAME["slurmdbd"]]:  # pick up the new configuration
            if stop_daemon(d) and verbose:
                _say(f"restarted {d.pidfile.stem} for the new configuration")
    setup_network(names)
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
    for node in names:
        if pid_of(slurmd(node)) is None:
            _start_slurmd(node)

    def nodes_ready() -> bool:
        states = node_states()
        for node in names:
            state = states.get(node, "")
            if "drain" in state or state.startswith("down"):
                # a drained or down state survives restarts in the state directory
                _sh(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
        return all(_usable(states.get(node, "")) for node in names)

    _wait_for(nodes_ready, f"nodes {','.join(names)} to be idle", 90,
              [BY_NAME["slurmctld"], *(slurmd(n) for n in names)])
    seconds = time.time() - t0
    if verbose:
        states = node_states()
        _say(f"cluster {CLUSTER_NAME} is up: {', '.join(f'{n} ({node_addr(n)}) {states.get(n)}' for n in names)}; "
             f"partition {PARTITION}, {FAKE_GPUS} fake GPUs per node, accounting on ({seconds:.1f}s)")
    return seconds


def stop(verbose: bool = True) -> None:
    for d in [*_slurmd_pidfiles(), *reversed(DAEMONS)]:
        if stop_daemon(d) and verbose:
            _say(f"stopped {d.pidfile.stem}")
    teardown_network(verbose)


def running() -> dict[str, int | None]:
    out = {d.name: pid_of(d) for d in DAEMONS}
    out.update({f"slurmd-{n}": pid_of(slurmd(n)) for n in configured_nodes()})
    return out


def is_up() -> bool:
    nodes = configured_nodes()
    states = node_states()
    return bool(nodes) and all(running().values()) and all(_usable(states.get(n, "")) for n in nodes)


def status() -> int:
    pids = running()
    for name, pid in pids.items():
        print(f"{name:14s} {'running, pid ' + str(pid) if pid else 'not running'}")
    if pids["slurmctld"]:
        print(_sh(["sinfo", "-N", "-o", "%N %P %T %c %m %G"], check=False).stdout.rstrip())
    return 0 if all(pids.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc.local_slurm", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--nodes", type=int, default=NODES, help=f"start: number of nodes (default {NODES})")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            start(nodes=args.nodes)
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
