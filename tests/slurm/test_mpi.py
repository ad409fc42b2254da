"""`mpirun -n 2 pretrain train ...` with the mpich wheel from PyPI: ranks from MPI (mpi4py), the
rendezvous address broadcast from rank 0 (no MASTER_ADDR given), and the same losses as the same
run under torchrun (one code path whatever the launcher)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pretrain.helpers import (
    documents,
    free_port,
    read_metrics,
    run_cli,
    tiny_overrides,
    write_megatron,
)

BIN = Path(sys.executable).parent


def _unavailable(msg: str):
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _mpirun() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        _unavailable(
            "mpi4py is not installed: pip install mpich mpi4py (pyproject.toml dependencies)"
        )
    exe = BIN / "mpirun"
    found = str(exe) if exe.exists() else shutil.which("mpirun")
    if found is None:
        _unavailable("mpirun not found: pip install mpich mpi4py (pyproject.toml dependencies)")
    return found


def test_mpirun_trains_like_torchrun(tmp_path):
    mpirun = _mpirun()
    write_megatron(str(tmp_path / "tok/en/man"), documents(40, max_bytes=1500), per_shard=20)
    data = [str(tmp_path / "tok/en")]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK")
        and not k.startswith("SLURM_")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MASTER_PORT=str(free_port()))
    # The torchrun reference runs at the same time: on a 2-core box the wait is Python start-up.
    mpi = subprocess.Popen(
        [
            mpirun,
            "-n",
            "2",
            str(BIN / "pretrain"),
            "train",
            *tiny_overrides(tmp_path / "mpi", data, steps=4),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    ref = run_cli(["train", *tiny_overrides(tmp_path / "torchrun", data, steps=4)], nproc=2)
    try:
        out, err = mpi.communicate(timeout=300)
    finally:
        if mpi.poll() is None:
            mpi.kill()
    assert mpi.returncode == 0, out[-2000:] + err[-3000:]
    assert "(world 2)" in out  # one world of two ranks, not two worlds of one
    assert out.count("done: step 4") == 2
    assert (tmp_path / "mpi" / "checkpoints" / "step_0000004" / "meta.json").exists()
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert [m["loss"] for m in read_metrics(tmp_path / "mpi")] == [
        m["loss"] for m in read_metrics(tmp_path / "torchrun")
    ]
