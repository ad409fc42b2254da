"""Rank discovery for the launchers we support, and process-group initialisation.

One process per device. The launcher that started us is recognised by its environment:
torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; Slurm's srun sets SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST; mpirun (Open MPI, MPICH/PMI, PMIx) sets one of
OMPI_COMM_WORLD_RANK / PMI_RANK / PMIX_RANK, and then mpi4py tells us rank and size and rank 0's
host name is broadcast as the rendezvous address. Nothing found means a single process.
torchrun's variables win over Slurm's because `srun torchrun ...` is common and torchrun's ranks
are the ones of the worker processes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

LAUNCHERS = ("single", "torchrun", "slurm", "mpi")
DEFAULT_PORT = 29500
MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    launcher: str = "single"


def free_port() -> int:
    """A TCP port free on loopback now, for a local rendezvous (tests, benchmarks, one node)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_rank_env(rank: int, world_size: int, port: int, base: dict | None = None) -> dict:
    """The environment torchrun would give rank `rank` of `world_size` processes on this machine
    (one intra-op thread each: the local runs share the machine's cores)."""
    return dict(
        os.environ if base is None else base,
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )


def run_local_ranks(
    cmd: list[str], world_size: int, extra_env: dict | None = None
) -> list[tuple[int, str]]:
    """Run `cmd` as `world_size` ranks on this machine (the torchrun environment of each, one
    free port) and wait for all: (exit code, combined stdout/stderr) per rank. Logs go through
    temporary files, so a chatty rank cannot fill a pipe and stall the others."""
    port, procs = free_port(), []
    with tempfile.TemporaryDirectory() as tmp:
        for rank in range(world_size):
            env = {**local_rank_env(rank, world_size, port), **(extra_env or {})}
            log = open(os.path.join(tmp, f"rank{rank}.log"), "w+")
            procs.append(
                (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
            )
        results = []
        for proc, log in procs:
            code = proc.wait()
            log.seek(0)
            results.append((code, log.read()))
            log.close()
    return results


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist expression ("n[01-03,7],gpu5") without Slurm's tools."""
    hosts: list[str] = []
    # split on commas that are not inside brackets
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not m:
            hosts.append(item)
            continue
        prefix, ranges, suffix = m.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)  # keep zero padding: n[01-03] -> n01 n02 n03
            for i in range(int(lo), int(hi) + 1):
                hosts.append(f"{prefix}{str(i).zfill(width)}{suffix}")
    return hosts


def _first_slurm_host(nodelist: str) -> str:
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass  # fall back to our own parser
    hosts = expand_nodelist(nodelist)
    return hosts[0] if hosts else "127.0.0.1"


def discover_env(environ: dict | None = None) -> DistEnv:
    """Who am I: rank, world size, local rank and the rendezvous address, from the launcher."""
    env = os.environ if environ is None else environ
    port = int(env.get("MASTER_PORT", DEFAULT_PORT))
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=port,
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        ntasks = int(env["SLURM_NTASKS"])
        nnodes = max(1, int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", 1))))
        # SLURM_NTASKS_PER_NODE may read "2(x3)"; the per-node count is the leading number.
        per_node = env.get("SLURM_NTASKS_PER_NODE", "")
        local_world = (
            int(re.match(r"\d+", per_node).group())
            if re.match(r"\d+", per_node)
            else max(1, ntasks // nnodes)
        )
        addr = env.get("MASTER_ADDR") or _first_slurm_host(
            env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1"))
        )
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=ntasks,
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            local_world_size=local_world,
            master_addr=addr,
            master_port=port,
            launcher="slurm",
        )
    if any(v in env for v in MPI_RANK_VARS):
        from mpi4py import MPI  # imported only under mpirun: the package is optional

        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        addr = env.get("MASTER_ADDR") or comm.bcast(
            socket.gethostname() if comm.rank == 0 else None, root=0
        )
        return DistEnv(
            rank=comm.rank,
            world_size=comm.size,
            local_rank=local.rank,
            local_world_size=local.size,
            master_addr=addr,
            master_port=port,
            launcher="mpi",
        )
    return DistEnv(master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=port)


def resolve_device_type(device: str = "auto") -> str:
    """auto -> cuda when a GPU exists, else cpu. Asking for cuda without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("parallel.device=cuda but torch sees no GPU; use device=auto or cpu")
    return device


def init_distributed(
    env: DistEnv, device_type: str = "cpu", timeout_s: float = 600
) -> torch.device:
    """Create the default process group (nccl on cuda, gloo on cpu) with a collective timeout,
    and return this rank's device. A world of one still gets a group: FSDP2, DTensor and DCP then
    run the same code as on many ranks."""
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device_type == "cuda" else "gloo",
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device_type == "cuda" else None,
        )
    return device


def destroy_distributed() -> None:
    """Tear the process group down (skipping it makes gloo abort at interpreter exit)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
