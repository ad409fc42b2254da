"""Layouts are validated before any process group exists, and rank discovery reads each launcher."""

import dataclasses
import sys
import types

import pytest

from configcore import ConfigError
from model_zoo.zoo import get_model_config
from parallel.config import ParallelConfig
from parallel.env import discover_env, expand_nodelist
from parallel.layout import resolve_layout


def llama(n_layers=4):
    return dataclasses.replace(get_model_config("llama3-tiny"), n_layers=n_layers)


def reject(pcfg, world=8, cfg=None, gbs=8, mbs=1, seq=32) -> str:
    with pytest.raises(ConfigError) as err:
        resolve_layout(pcfg, world, cfg or llama(), gbs, mbs, seq)
    msg = str(err.value)
    assert msg.startswith("parallel layout rejected: ")
    return msg


def suggested(msg: str) -> ParallelConfig:
    """Parse the alternative out of the message; it must itself be valid."""
    tail = msg.split("a valid layout for world_size=")[1].split(": ", 1)[1]
    kv = dict(item.split("=") for item in tail.replace("parallel.", "").split())
    return ParallelConfig(**{k: int(v) for k, v in kv.items()})


@pytest.mark.parametrize(
    "pcfg, world, reason",
    [
        (ParallelConfig(tp=2, dp_shard=3), 8, "!= world_size=8"),
        (ParallelConfig(tp=3), 8, "not divisible by tp*pp*dp_replicate*ep=3"),
        (ParallelConfig(tp=8), 8, "n_heads=4 is not divisible by tp=8"),
        (ParallelConfig(pp=8), 8, "8 pipeline stages but model 'llama3-tiny' has only n_layers=4"),
        (
            ParallelConfig(pp=2, pp_schedule="ZBVZeroBubble", pp_split=[1, 1, 1]),
            8,
            "pp_split has 3",
        ),
        (
            ParallelConfig(pp=2, pp_schedule="1F1B", pp_virtual_stages=2),
            8,
            "needs pp_schedule=Interleaved1F1B",
        ),
        (ParallelConfig(ep=2), 8, "no routed experts"),
    ],
)
def test_rejected_with_reason_and_valid_alternative(pcfg, world, reason):
    msg = reject(pcfg, world)
    assert reason in msg, msg
    alt = suggested(msg)
    layout = resolve_layout(
        dataclasses.replace(pcfg, **dataclasses.asdict(alt)), world, llama(), 8, 1, 32
    )
    assert layout.world_size == world


def test_kv_heads_split_or_replicated_over_tp():
    """tp=4 over llama3-tiny's 2 KV heads replicates each on 2 ranks; tp=6 over 4 KV heads can do
    neither (4 % 6 and 6 % 4), and the alternative offered works."""
    assert resolve_layout(ParallelConfig(tp=4), 8, llama(), 8, 1, 32).tp == 4
    odd = dataclasses.replace(llama(), n_heads=12, n_kv_heads=4, d_model=96, ffn_hidden_size=240)
    with pytest.raises(ConfigError) as err:
        resolve_layout(ParallelConfig(tp=6), 6, odd, 6, 1, 36)
    msg = str(err.value)
    assert "n_kv_heads=4 is not divisible by tp=6, nor is tp a multiple of it" in msg, msg
    alt = suggested(msg)
    assert resolve_layout(alt, 6, odd, 6, 1, 36).world_size == 6


def test_bad_switch_lists_valid_values():
    msg = reject(ParallelConfig(precision="fp16"))
    assert "parallel.precision='fp16' is not one of fp32, bf16, fp8_tensorwise, fp8_rowwise" in msg
    assert "pp_schedule='GPipe' is not one of" in reject(ParallelConfig(pp_schedule="GPipe"))


def test_batch_and_microbatch_rules():
    assert "not divisible by the data-parallel degree" in reject(ParallelConfig(), 8, gbs=12)
    assert "not divisible by micro_batch_size=3" in reject(ParallelConfig(), 2, gbs=8, mbs=3)
    # 2 micro-batches cannot fill a 4-stage ZBV pipeline of pp=2
    assert "at least one micro-batch" in reject(
        ParallelConfig(pp=2, pp_schedule="ZBVZeroBubble"), 2, gbs=4, mbs=2
    )
    assert "sequence parallel" in reject(ParallelConfig(tp=2), 2, seq=33)


def test_experts_must_split_over_ep():
    moe = get_model_config("mixtral-tiny")  # 8 experts
    assert "n_experts=8 is not divisible by ep=3" in reject(ParallelConfig(ep=3), 3, cfg=moe, gbs=3)
    layout = resolve_layout(ParallelConfig(ep=2, tp=2), 4, moe, 8, 1, 32)
    assert (layout.ep, layout.tp, layout.dp_shard, layout.dp) == (2, 2, 1, 2)


def test_tied_embeddings_cannot_be_pipelined():
    tied = dataclasses.replace(llama(), tie_embeddings=True)
    assert "ties its embedding" in reject(ParallelConfig(pp=2), 2, cfg=tied)


def test_resolved_layout_stages():
    lay = resolve_layout(
        ParallelConfig(tp=2, pp=2, pp_schedule="ZBVZeroBubble"), 8, llama(), 16, 1, 32
    )
    assert (lay.dp_shard, lay.dp, lay.local_batch_size, lay.n_microbatches) == (2, 2, 8, 8)
    assert lay.stage_layers == [[0], [1], [2], [3]]
    assert lay.stages_of_rank(0) == [0, 3] and lay.stages_of_rank(1) == [1, 2]
    lay = resolve_layout(
        ParallelConfig(pp=2, pp_schedule="Interleaved1F1B", pp_split=[0, 2, 1, 1]),
        2,
        llama(),
        8,
        1,
        32,
    )
    assert lay.stage_layers == [[], [0, 1], [2], [3]]
    assert lay.stages_of_rank(0) == [0, 2]


def test_discover_torchrun_slurm_single():
    env = discover_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4",
            "MASTER_ADDR": "node7",
            "MASTER_PORT": "1234",
        }
    )
    assert (
        env.rank,
        env.world_size,
        env.local_rank,
        env.local_world_size,
        env.master_addr,
        env.master_port,
        env.launcher,
    ) == (3, 8, 1, 4, "node7", 1234, "torchrun")
    env = discover_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_NNODES": "2",
            "SLURM_NTASKS_PER_NODE": "4(x2)",
            "SLURM_JOB_NODELIST": "gpu[007-008]",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.launcher) == (
        5,
        8,
        1,
        4,
        "slurm",
    )
    assert env.master_addr == "gpu007"
    assert discover_env({}).launcher == "single"


def test_nodelist_parser():
    assert expand_nodelist("n[01-03,7],gpu5") == ["n01", "n02", "n03", "n7", "gpu5"]
    assert expand_nodelist("a1,b[2-3]-ib") == ["a1", "b2-ib", "b3-ib"]


def test_discover_mpi(monkeypatch):
    """Under mpirun the rank comes from mpi4py and rank 0's host name is broadcast."""

    class Comm:
        rank, size = 2, 4

        def Split_type(self, kind):
            return types.SimpleNamespace(rank=0, size=2)

        def bcast(self, value, root=0):
            assert root == 0 and value is None  # rank 2 sends nothing, receives rank 0's host
            return "host-of-rank0"

    fake = types.SimpleNamespace(MPI=types.SimpleNamespace(COMM_WORLD=Comm(), COMM_TYPE_SHARED=1))
    monkeypatch.setitem(sys.modules, "mpi4py", fake)
    env = discover_env({"OMPI_COMM_WORLD_RANK": "2"})
    assert (
        env.rank,
        env.world_size,
        env.local_rank,
        env.local_world_size,
        env.master_addr,
        env.launcher,
    ) == (2, 4, 0, 2, "host-of-rank0", "mpi")
