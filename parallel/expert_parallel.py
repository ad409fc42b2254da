"""Expert parallel: the routed experts of each MoE layer are split over the `ep` mesh axis and
tokens travel to their expert's rank and back with all-to-all (torchtitan's ExpertParallel).

The model's MoE runs route -> dispatch -> experts -> combine (model_zoo/moe.py). Only the middle
step changes: `moe.experts` becomes an `ExpertParallelGroupedExperts` (same parameters, same
names), whose forward receives this rank's tokens sorted by GLOBAL expert with per-expert counts,
and

  1. exchanges the per-expert counts (all-to-all), so every rank knows how many tokens it will
     receive from each peer for each of its local experts;
  2. sends each token to the rank owning its expert (all-to-all, uneven splits, autograd-aware);
  3. regroups the received tokens expert-major (they arrive source-rank-major) and runs the
     local experts with the model's own GroupedExperts computation on the local weight shards;
  4. undoes the regrouping and sends the outputs back (all-to-all), in the order they came.

The expert weights are DTensors sharded on dim 0 (experts) over `ep`; FSDP then shards them
further over dp_shard only (see layout.py for how ep composes with the data-parallel axes).
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from model_zoo.moe import GroupedExperts


def _all_to_all(
    x: torch.Tensor, out_splits: list[int], in_splits: list[int], group
) -> torch.Tensor:
    """Uneven all-to-all whose backward is the reverse all-to-all (functional collective; the
    result waits for the communication on first use)."""
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    return all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group)


class ExpertParallelGroupedExperts(GroupedExperts):
    """GroupedExperts whose experts live on `ep` ranks; installed by class swap (no new module,
    so parameter names and the block's structure stay those of the single-device model)."""

    _ep_group = None  # set by apply_ep
    _ep_size = 1
    _tp_group = None  # set when the experts are split over tp as well

    def forward(self, x: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
        ep, group = self._ep_size, self._ep_group
        n_experts = num_tokens_per_expert.numel()
        local_e = n_experts // ep
        counts = num_tokens_per_expert.to(torch.int64)
        # 1. how many tokens each peer sends to each of my experts: recv[s, e]
        recv = torch.empty_like(counts)
        torch.distributed.all_to_all_single(recv, counts, group=group)
        send_m, recv_m = counts.view(ep, local_e), recv.view(ep, local_e)
        in_splits = send_m.sum(1).tolist()
        out_splits = recv_m.sum(1).tolist()
        # 2. tokens to the owner of their expert
        x_recv = _all_to_all(x, out_splits, in_splits, group)
        # 3. source-rank-major -> expert-major, stable within each (expert, source) run
        seg_key = torch.arange(local_e, device=x.device).repeat(ep) * ep + torch.arange(
            ep, device=x.device
        ).repeat_interleave(local_e)
        key = torch.repeat_interleave(seg_key, recv_m.reshape(-1))
        perm = torch.argsort(key, stable=True)
        out = _run_local_experts(self, x_recv[perm], recv_m.sum(0))
        # 4. back to arrival order, then home
        out_recv = out[torch.argsort(perm)]
        return _all_to_all(out_recv, in_splits, out_splits, group)


def _local_view(experts: GroupedExperts):
    """An object that looks like GroupedExperts but holds this rank's weight shards, so the
    model's own expert computation runs unchanged on local tensors."""
    view = types.SimpleNamespace()
    for name in ("w1", "w2", "w3"):
        w = getattr(experts, name)
        setattr(view, name, w.to_local() if isinstance(w, DTensor) else w)
    view.use_grouped_mm = experts.use_grouped_mm
    view._grouped_mm_ok = types.MethodType(GroupedExperts._grouped_mm_ok, view)
    return view


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: identity forward, gradient summed over the tp group in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: sum over the tp group forward, identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        torch.distributed.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


# The dim of each (experts, out, in) weight that holds the expert's hidden units: tp splits it.
_HIDDEN_DIM = {"w1": 1, "w3": 1, "w2": 2}


class TensorParallelGroupedExperts(GroupedExperts):
    """Every expert split over tp: w1/w3 by hidden rows, w2 by hidden columns. All tp ranks hold
    the same tokens (the MoE layer runs replicated over tp), each computes its slice of every
    expert's hidden units, and the partial outputs are summed (Megatron's MLP split per expert)."""

    _tp_group = None

    def forward(self, x: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
        return _run_local_experts(self, x, num_tokens_per_expert)


def _run_local_experts(
    experts, x: torch.Tensor, num_tokens_per_expert: torch.Tensor
) -> torch.Tensor:
    """The model's expert computation on this rank's weight shards. When the experts are split
    over tp (`_tp_group` set), Megatron's f and g around it: the input gradient is summed over
    tp in backward, the partial outputs (this rank's hidden units) are summed in forward."""
    group = experts._tp_group
    if group is not None:
        x = _CopyToTP.apply(x, group)
    out = GroupedExperts.forward(_local_view(experts), x, num_tokens_per_expert)
    return out if group is None else _ReduceFromTP.apply(out, group)


def apply_expert_tp(model: nn.Module, tp_mesh) -> None:
    """TP inside each routed expert (used when ep == 1; see docs/parallel.md)."""
    for block in model.layers.values():
        moe = getattr(block, "moe", None)
        if moe is None:
            continue
        experts = moe.experts
        for name, dim in _HIDDEN_DIM.items():
            p = getattr(experts, name)
            dt = distribute_tensor(p.data, tp_mesh, [Shard(dim)])
            experts.register_parameter(name, nn.Parameter(dt, requires_grad=p.requires_grad))
        experts.__class__ = TensorParallelGroupedExperts
        experts._tp_group = tp_mesh.get_group()


def apply_expert_parallel(model: nn.Module, cfg, layout, mesh) -> None:
    """ep's row of the axis table (parallel/axes.py), called by parallelize_part: the routed
    experts split over ep, and inside each over tp when tp > 1."""
    if layout.ep > 1:
        apply_ep(model, mesh["ep"], mesh["ep", "tp"] if layout.tp > 1 else None)


def apply_ep(model: nn.Module, ep_mesh, ep_tp_mesh=None) -> None:
    """Shard every MoE layer's experts over `ep_mesh` (dim 0) and install the all-to-all forward.

    With `ep_tp_mesh` (the 2-D ("ep", "tp") mesh, when tp > 1) every expert is also split over tp
    inside, as with ep = 1: w1/w3 by hidden rows, w2 by hidden columns. All tp ranks of an ep rank
    hold the same tokens (the MoE layer runs replicated over tp), so they make the same all-to-all
    with their ep peers; each computes its slice of the hidden units and the outputs are summed
    over tp before going home. Without the split every tp rank would run the same whole experts."""
    for block in model.layers.values():
        moe = getattr(block, "moe", None)
        if moe is None:
            continue
        experts = moe.experts
        for name, p in list(experts.named_parameters(recurse=False)):
            if ep_tp_mesh is None:
                dt = distribute_tensor(p.data, ep_mesh, [Shard(0)])
            else:
                dt = distribute_tensor(p.data, ep_tp_mesh, [Shard(0), Shard(_HIDDEN_DIM[name])])
            experts.register_parameter(name, nn.Parameter(dt, requires_grad=p.requires_grad))
        experts.__class__ = ExpertParallelGroupedExperts
        experts._ep_group = ep_mesh.get_group()
        experts._ep_size = ep_mesh.size()
        if ep_tp_mesh is not None:
            experts._tp_group = ep_tp_mesh["tp"].get_group()
