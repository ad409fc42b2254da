"""Context parallel: the layout checks (before any process starts), the load-balanced split and
its inverse, and DeepSpeed's Ulysses layer around the model's attention kernel."""

import dataclasses

import pytest
import torch

from configcore import ConfigError
from model_zoo.zoo import get_model_config
from parallel.config import ParallelConfig
from parallel.context_parallel import (
    gathered_positions,
    shard_positions,
    shard_sequence,
    unshard_sequence,
)
from parallel.layout import resolve_layout
from tests.parallel.test_layout import llama, reject, suggested


@pytest.mark.parametrize(
    "pcfg, world, seq, reason",
    [
        (ParallelConfig(cp=3), 6, 32, "seq_len=32 is not divisible by 2 x cp=6"),
        (ParallelConfig(cp=2), 2, 30, "seq_len=30 is not divisible by 2 x cp=4"),
        (
            ParallelConfig(cp=2, tp=4, cp_style="ring"),
            8,
            20,
            "seq_len=20 over cp=2 leaves 10 tokens per cp rank, not divisible by tp=4",
        ),
        (
            ParallelConfig(cp=4, tp=2),
            8,
            32,
            "2 query heads per tp rank (n_heads=4 / tp=2) are not divisible by cp=4",
        ),
        (ParallelConfig(cp=8), 8, 32, "GQA's KV heads are repeated to the query heads"),
        (ParallelConfig(cp=2, dp_shard=3), 8, 32, "tp*pp*dp_replicate*dp_shard*ep*cp"),
    ],
)
def test_cp_rejected_with_reason_and_valid_alternative(pcfg, world, seq, reason):
    msg = reject(pcfg, world, seq=seq)
    assert reason in msg, msg
    alt = suggested(msg)
    resolve_layout(dataclasses.replace(pcfg, **dataclasses.asdict(alt)), world, llama(), 8, 1, seq)


def test_ring_rejected_on_cpu_and_under_a_sliding_window():
    msg = reject(ParallelConfig(cp=2, cp_style="ring", device="cpu"), 2)
    assert msg == (
        "parallel layout rejected: parallel.cp_style=ring needs CUDA: torch's context_parallel "
        "has no CPU sharding strategy for SDPA; use parallel.cp_style=alltoall"
    )
    window = dataclasses.replace(llama(), sliding_window=8)
    msg = reject(ParallelConfig(cp=2, cp_style="ring"), 2, cfg=window)
    assert "sliding_window=8: parallel.cp_style=ring runs torch's ring attention" in msg
    # the ring style is not bound by heads: cp=8 over 4 heads is a valid layout (on CUDA)
    layout = resolve_layout(ParallelConfig(cp=8, cp_style="ring"), 8, llama(), 8, 1, 32)
    assert "cp=8 (ring)" in layout.describe()


def test_cp_is_not_data_parallel():
    """cp ranks share their dp rank's batch: cp enters neither dp nor the batch arithmetic."""
    layout = resolve_layout(ParallelConfig(cp=2, tp=2), 8, llama(), 8, 2, 32)
    assert (layout.dp, layout.dp_shard, layout.cp, layout.local_batch_size) == (2, 2, 2, 4)
    assert "dp_shard=2 ep=1 cp=2 (alltoall) tp=2 (world 8)" in layout.describe()
    moe = get_model_config("deepseek-v2-lite-tiny")
    layout = resolve_layout(ParallelConfig(cp=2, ep=2), 4, moe, 8, 1, 32)
    assert (layout.dp, layout.ep, layout.cp) == (2, 2, 2)
    with pytest.raises(ConfigError, match="parallel.cp=0 must be >= 1"):
        ParallelConfig(cp=0).validate()
    with pytest.raises(ConfigError, match="parallel.cp_style='ulysses' is not one of"):
        ParallelConfig(cp_style="ulysses").validate()


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_load_balanced_split_and_its_inverse(cp):
    seq = 8 * cp
    chunk = seq // (2 * cp)
    x = torch.arange(2 * seq).view(2, seq) * 10
    shards = [shard_sequence(x, cp, r) for r in range(cp)]
    for r, shard in enumerate(shards):
        # chunk r then chunk 2cp-1-r: every rank has the same causal work
        want = list(range(r * chunk, (r + 1) * chunk))
        want += list(range((2 * cp - 1 - r) * chunk, (2 * cp - r) * chunk))
        assert shard_positions(seq, cp, r).tolist() == want
        assert torch.equal(shard, x[:, want])
        causal_work = sum(p + 1 for p in want)
        assert causal_work == sum(p + 1 for p in shard_positions(seq, cp, 0).tolist())
    assert torch.equal(unshard_sequence(shards), x)
    # every position exactly once over the ranks
    assert sorted(gathered_positions(seq, cp).tolist()) == list(range(seq))


def test_split_is_torchs_head_tail_load_balancer():
    """The ring style shards with torch's _HeadTailLoadBalancer: the same tokens per rank."""
    from torch.distributed.tensor.experimental._context_parallel._load_balancer import (
        _HeadTailLoadBalancer,
    )

    for cp in (2, 4):
        seq = 16 * cp
        # indices [1, seq]: row i of the rearranged sequence is position indices[i]; rank r
        # keeps rows [r*seq/cp, (r+1)*seq/cp)
        indices = _HeadTailLoadBalancer(seq, cp, torch.device("cpu"))._generate_indices()[0]
        assert torch.equal(indices, gathered_positions(seq, cp))


def test_missing_deepspeed_and_ring_off_cuda_are_one_line_config_errors(monkeypatch):
    """Checked before the process group (the trainer calls check_gpu_features first)."""
    import sys

    from parallel.parallelize import check_gpu_features

    cfg = llama()
    alltoall = ParallelConfig(cp=2)
    layout = resolve_layout(alltoall, 2, cfg, 8, 1, 32)
    check_gpu_features(cfg, alltoall, layout, "cpu")  # installed: passes
    monkeypatch.setitem(sys.modules, "deepspeed.sequence.layer", None)  # import fails
    with pytest.raises(ConfigError) as err:
        check_gpu_features(cfg, alltoall, layout, "cpu")
    assert str(err.value) == (
        "parallel.cp_style=alltoall needs DeepSpeed's Ulysses layer, which is not installed: "
        "pip install deepspeed==0.19.8"
    )
    ring = ParallelConfig(cp=2, cp_style="ring")  # device=auto resolved to cpu on this machine
    layout = resolve_layout(ring, 2, cfg, 8, 1, 32)
    with pytest.raises(ConfigError, match="^parallel.cp_style=ring needs CUDA: torch's"):
        check_gpu_features(cfg, ring, layout, "cpu")


def test_pretrain_launch_accepts_cp_and_checks_it_before_submitting(tmp_path, capsys):
    """`pretrain launch --dry-run`: cp counts in the world size (2 nodes x 2 ranks = cp 2 x
    dp_shard 2), a cp the layout cannot take is rejected with exit 2 and a layout that fits, and
    ring with the intra-document mask is refused before anything is submitted."""
    from pretrain.cli import main
    from tests.pretrain.helpers import documents, tiny_overrides, write_megatron

    write_megatron(str(tmp_path / "tok/en/man"), documents(20, max_bytes=800), per_shard=25)
    ov = tiny_overrides(tmp_path / "r", [str(tmp_path / "tok/en")], steps=4)
    alloc = ["--nodes", "2", "--procs-per-node", "2", "--dry-run"]
    assert main(["launch", *ov, "parallel.cp=2", *alloc]) == 0
    script = capsys.readouterr().out
    assert "dp_shard=2 ep=1 cp=2 (alltoall) tp=1 (world 4)" in script
    assert main(["launch", *ov, "parallel.cp=4", "parallel.tp=2", *alloc]) == 2
    assert "not divisible by tp*pp*dp_replicate*ep*cp=8" in capsys.readouterr().err
    assert main(["launch", *ov, "parallel.cp=4", "trainer.seq_len=36", *alloc]) == 2
    err = capsys.readouterr().err
    assert "seq_len=36 is not divisible by 2 x cp=8" in err, err
    fits = err.split("a valid layout for world_size=4: ")[1].split()
    assert "parallel.cp=2" in fits
    assert main(["launch", *ov, "trainer.seq_len=36", *fits, *alloc]) == 0
    capsys.readouterr()
    ring = ["parallel.cp=2", "parallel.cp_style=ring", "data.intra_doc_mask=true"]
    assert main(["launch", *ov, *ring, *alloc]) == 2
    assert "data.intra_doc_mask=true cannot reach its kernel" in capsys.readouterr().err
