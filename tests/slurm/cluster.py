"""A real two-node Slurm cluster on this machine, for tests (Debian's slurm-wlm, run as root).

Both "nodes" are slurmd daemons on loopback with their own ports, spool and log folders under one
temporary directory; slurmctld keeps its state there too, so nothing outside it is touched and two
test sessions never share a controller. Facts behind the settings are in docs/architecture.md:
auth/none + cred/none (no munge daemon), config_overrides (a node may claim more CPUs than the box
has), linuxproc/task none (no cgroups in containers).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")


def missing_tools() -> list[str]:
    return [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmCluster:
    root: Path
    cpus_per_node: int = 6
    nodes: tuple[str, ...] = ("n1", "n2")
    conf: Path = field(init=False)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self):
        self.conf = self.root / "slurm.conf"

    # ------------------------------------------------------------------ set-up
    def write_conf(self) -> None:
        host = socket.gethostname()
        ctl_port, *node_ports = _free_ports(1 + len(self.nodes))
        r = self.root
        for d in ("state", "log", *[f"spool-{n}" for n in self.nodes]):
            (r / d).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=pretraintest",
            # Job ids (and so train.sbatch's MASTER_PORT = 20000 + id) differ between test
            # sessions: a job left running by an aborted session cannot hold this one's port.
            f"FirstJobId={random.randint(1000, 12000)}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctl_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/none",
            "CredType=cred/none",
            # A requeued job may start again only after its credential expired (default 120 s):
            # 5 s (the minimum) keeps the preemption test inside the test budget.
            "AuthInfo=cred_expire=5",
            "SlurmdParameters=config_overrides",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=5",
            "InactiveLimit=0",
            "MinJobAge=600",  # finished jobs stay visible to `scontrol show job` (no accounting db)
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        for name, port in zip(self.nodes, node_ports):
            lines.append(
                f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                f"CPUs={self.cpus_per_node} RealMemory=1000 State=UNKNOWN"
            )
        lines.append(
            f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES "
            "MaxTime=INFINITE State=UP OverSubscribe=NO"
        )
        self.conf.write_text("\n".join(lines) + "\n")

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _spawn(self, args: list[str], log: str) -> None:
        # Own process group each, so teardown kills the daemon and everything it forked.
        out = open(self.root / "log" / log, "ab")
        self.procs.append(
            subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        )

    def start(self, timeout: float = 60) -> SlurmCluster:
        self.write_conf()
        # -D: stay in the foreground (we own the process); -c: clear old state; -i: ignore
        # errors reading state (there is none).
        self._spawn([_exe("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)], "slurmctld.stdout")
        self._wait(
            lambda: self.run("scontrol", "ping").stdout.count("UP") >= 1,
            timeout,
            "slurmctld did not answer `scontrol ping`",
        )
        for n in self.nodes:
            self._spawn([_exe("slurmd"), "-D", "-N", n, "-f", str(self.conf)], f"slurmd-{n}.stdout")
        self._wait(self._nodes_idle, timeout, "the nodes did not become idle")
        return self

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split("\n")
        states = dict(l.split() for l in out if l.strip())
        return all(states.get(n, "").startswith("idle") for n in self.nodes)

    def _wait(self, cond, timeout: float, what: str) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{what}: {p.args[0]} exited with {p.returncode}; "
                        f"logs in {self.root / 'log'}:\n{self.logs_tail()}"
                    )
            try:
                if cond():
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError(
            f"{what} within {timeout:.0f}s; logs in {self.root / 'log'}:\n{self.logs_tail()}"
        )

    def logs_tail(self, n: int = 15) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"== {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        # Jobs first (slurmstepd leaves the daemons' process groups), then the daemons, then any
        # process that still carries our SLURM_CONF: those can only be this cluster's job steps.
        if self.procs and self.procs[0].poll() is None:
            try:
                self.run("scancel", "--full", "--user=root", timeout=15)
                time.sleep(1)
            except Exception:
                pass
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the group: job steps the daemons forked too
            except ProcessLookupError:
                pass
            p.wait()
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftover_pids(self) -> list[int]:
        mine = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if mine in (d / "environ").read_bytes().split(b"\0"):
                        pids.append(int(d.name))
                except OSError:
                    continue
        return pids

    # ------------------------------------------------------------------ helpers
    def run(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [_exe(args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def job(self, job_id: str) -> dict:
        """`scontrol show job -o` as a dict (JobState, ExitCode, Restarts, NodeList, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def wait_job(self, job_id: str, timeout: float = 120, poll: float = 0.5) -> dict:
        """Wait until the job reached a final state (requeues pass through PENDING again)."""
        t0 = time.monotonic()
        final = (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
            "PREEMPTED",
        )
        info: dict = {}
        while time.monotonic() - t0 < timeout:
            info = self.job(job_id)
            if info.get("JobState") in final:
                return info
            time.sleep(poll)
        raise TimeoutError(
            f"job {job_id} still {info.get('JobState')} after {timeout}s "
            f"({info.get('Reason')}); cluster logs:\n{self.logs_tail()}"
        )
