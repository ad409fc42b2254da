"""Context parallel: each sequence split over the cp ranks, attention computed over the whole.

The split (both styles)
-----------------------
The sequence is cut into 2*cp equal chunks and cp rank r keeps chunks r and 2cp-1-r, in that
order. Under a causal mask chunk i attends to i+1 chunks, so every rank does the same attention
work (cp rank 0 holds the cheapest and the dearest chunk). It is the split torch's
`context_parallel` makes with its head-tail load balancer (`_HeadTailLoadBalancer`), so switching
`parallel.cp_style` never changes which tokens a rank holds.

alltoall (DeepSpeed-Ulysses)
----------------------------
Around the attention kernel, q, k and v go from [batch, seq/cp, heads, dim] to
[batch, seq, heads/cp, dim] by one all-to-all each (DeepSpeed's
`deepspeed.sequence.layer.DistributedAttention`), the kernel runs on whole sequences for a slice
of the heads, and one all-to-all takes the output back. The gathered sequence arrives in chunk
order (rank 0's two chunks, then rank 1's, ...): one index_select puts it in sequence order before
the kernel and another undoes it after, so the causal SDPA path, the dense intra-document mask
and FlexAttention all see the true order. GQA: the model repeats KV heads to the query heads
before the kernel module, so the all-to-all moves n_heads/tp KV heads (not n_kv_heads/tp) and
only the query heads must divide by cp.

ring (torch's context_parallel)
-------------------------------
`torch.distributed.tensor.experimental.context_parallel` shards the buffers (inputs, labels,
position ids) with the same head-tail split and replaces SDPA by ring attention (K/V blocks
passed around the cp ranks, overlapped with compute), for the forward and backward inside the
context. CUDA only: on CPU torch has no sharding strategy for the CPU flash kernel.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor.experimental import context_parallel

from configcore import ConfigError
from model_zoo.moe import moe_layers

DEEPSPEED_MISSING = (
    "parallel.cp_style=alltoall needs DeepSpeed's Ulysses layer, which is not installed: "
    "pip install deepspeed==0.19.8"
)


# ------------------------------------------------------------------------------------------------
# The load-balanced split
# ------------------------------------------------------------------------------------------------
def shard_positions(seq_len: int, cp: int, rank: int) -> torch.Tensor:
    """Sequence positions held by cp rank `rank`, in its local order: chunk r, then 2cp-1-r."""
    if seq_len % (2 * cp):
        raise ValueError(f"seq_len={seq_len} is not divisible by 2 x cp={2 * cp}")
    chunk = seq_len // (2 * cp)
    first = torch.arange(rank * chunk, (rank + 1) * chunk)
    second = torch.arange((2 * cp - 1 - rank) * chunk, (2 * cp - rank) * chunk)
    return torch.cat((first, second))


def gathered_positions(seq_len: int, cp: int) -> torch.Tensor:
    """Sequence position of every row of the sequence gathered over the cp ranks in rank order
    (what an all-to-all along the sequence returns): rank 0's positions, then rank 1's, ..."""
    return torch.cat([shard_positions(seq_len, cp, r) for r in range(cp)])


def shard_sequence(t: torch.Tensor, cp: int, rank: int, dim: int = 1) -> torch.Tensor:
    """This cp rank's part of `t` along `dim` (the load-balanced split)."""
    index = shard_positions(t.shape[dim], cp, rank).to(t.device)
    return t.index_select(dim, index)


def unshard_sequence(shards: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The inverse of shard_sequence: the cp ranks' parts (in rank order) back in sequence order."""
    gathered = torch.cat(shards, dim=dim)
    order = torch.argsort(gathered_positions(gathered.shape[dim], len(shards)))
    return gathered.index_select(dim, order.to(gathered.device))


# ------------------------------------------------------------------------------------------------
# alltoall: DeepSpeed-Ulysses around the model's attention kernel module
# ------------------------------------------------------------------------------------------------
def _distributed_attention_class():
    """DeepSpeed's Ulysses layer, imported only when cp > 1 with the alltoall style: importing
    deepspeed costs ~1.5 s and probes the accelerator, which no other layout needs."""
    try:
        from deepspeed.sequence.layer import DistributedAttention
    except ImportError:
        raise ConfigError(DEEPSPEED_MISSING) from None
    return DistributedAttention


def _attach_deepspeed_comm() -> None:
    """DeepSpeed's collectives go through its own communication backend object: point it at
    the process group that already exists (nothing is initialised twice; gloo or nccl).

    On the CPU accelerator that object also builds DeepSpeed's shared-memory all-reduce op, a C++
    extension JIT-compiled on first use (measured: 29 s, and it needs a C++ compiler), after
    probing every op's compatibility with compiler subprocesses. Ulysses uses none of it (its
    all-to-all is torch.distributed's), so the op is marked unavailable in deepspeed.ops' cache of
    compatible ops, which DeepSpeed fills lazily and keeps as one dict; only when nothing has
    filled it yet, so a process that uses other DeepSpeed ops keeps its own answers."""
    import deepspeed.comm  # heavy optional dependency, see _distributed_attention_class
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if deepspeed.comm.is_initialized():
        return
    shm = get_accelerator().create_op_builder("ShareMemCommBuilder")  # None on CUDA
    if shm is not None and "__compatible_ops__" not in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__ = {shm.NAME: False}
    deepspeed.comm.init_distributed(
        dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False
    )


def check_deepspeed() -> None:
    """Raise the one-line ConfigError naming the pip command when DeepSpeed is missing."""
    _distributed_attention_class()


class _SequenceOrderKernel(nn.Module):
    """The model's kernel on the gathered sequence, in sequence order. DeepSpeed hands it
    [batch, seq, heads/cp, dim] tensors whose rows are in chunk order; the kernel module takes
    [batch, heads, seq, dim] in sequence order."""

    def __init__(self, kernel: nn.Module, cp: int):
        super().__init__()
        self.kernel = kernel
        self.cp = cp
        self._order: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _indices(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, device)
        if key not in self._order:
            gathered = gathered_positions(seq_len, self.cp)
            self._order[key] = (torch.argsort(gathered).to(device), gathered.to(device))
        return self._order[key]

    def forward(self, q, k, v, attn_mask=None, scale=None):
        to_sequence, to_chunks = self._indices(q.shape[1], q.device)
        q, k, v = (t.index_select(1, to_sequence).transpose(1, 2) for t in (q, k, v))
        out = self.kernel(q, k, v, attn_mask, scale)
        return out.transpose(1, 2).index_select(1, to_chunks)


class UlyssesAttention(nn.Module):
    """Stands in for a model's attention kernel module (`attention.kernel`, same call: q, k, v
    [batch, heads, seq/cp, dim], mask, scale) and runs it over the whole sequence through
    DeepSpeed's DistributedAttention on the cp process group."""

    def __init__(self, kernel: nn.Module, cp_group, cp: int):
        super().__init__()
        distributed_attention = _distributed_attention_class()
        self.local = _SequenceOrderKernel(kernel, cp)
        # scatter the heads (dim 2 of [b, s, h, d]), gather the sequence (dim 1)
        self.ulysses = distributed_attention(self.local, cp_group, scatter_idx=2, gather_idx=1)

    def forward(self, q, k, v, attn_mask=None, scale=None):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # DeepSpeed's [b, s, h, d]
        out = self.ulysses(q, k, v, 0, None, attn_mask, scale)  # batch_dim_idx=0, no rotary
        return out.transpose(1, 2)


def apply_context_parallel(model: nn.Module, cfg, layout, mesh) -> None:
    """cp's row of the axis table (parallel/axes.py), called by parallelize_part: the routed
    counts summed over cp (both styles), and Ulysses around the attention kernel (alltoall; ring
    needs nothing here: the engine runs each step inside torch's context_parallel)."""
    if layout.cp == 1:
        return
    sum_routed_counts_over_cp(model, mesh["cp"])
    if layout.cp_style == "alltoall":
        apply_ulysses(model, mesh["cp"])


def apply_ulysses(model: nn.Module, cp_mesh) -> None:
    """Wrap the attention kernel of every block of this stage (dense, GQA or MLA attention)."""
    group, cp = cp_mesh.get_group(), cp_mesh.size()
    _attach_deepspeed_comm()
    for block in model.layers.values():
        attn = block.attention
        attn.kernel = UlyssesAttention(attn.kernel, group, cp)


def sum_routed_counts_over_cp(model: nn.Module, cp_mesh) -> None:
    """Both styles: every MoE layer's switch balancing loss takes the routed fraction per expert
    of the whole sequences, summed over the cp ranks that hold their other chunks (one small
    all-reduce per MoE layer and micro-batch, no gradient). With it each rank's loss over its own
    tokens, weighted by their share (set_aux_loss_scale), adds up to the one-process loss: the
    fraction is the only factor that is not a sum over tokens. The router z-loss needs nothing."""
    group = cp_mesh.get_group()

    def summed(counts: torch.Tensor) -> torch.Tensor:
        total = counts.clone()
        dist.all_reduce(total, group=group)
        return total

    for _, moe in moe_layers(model):
        moe.reduce_routed_counts = summed


# ------------------------------------------------------------------------------------------------
# ring: torch's context_parallel around a micro-batch's forward and backward
# ------------------------------------------------------------------------------------------------
def ring_context(cp_mesh, buffers: list[torch.Tensor]):
    """Shard `buffers` ([batch, seq, ...], in place) with torch's head-tail load balancer and
    run SDPA as ring attention until the context exits (forward and backward inside it).
    The buffers are the engine's own copies, so they are not restored afterwards."""
    return context_parallel(
        cp_mesh,
        buffers=buffers,
        buffer_seq_dims=[1] * len(buffers),
        no_restore_buffers=set(buffers),
    )
