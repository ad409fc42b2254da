"""Bytes each rank's collectives move in one `engine.forward_backward`, by kind.

The volume of a collective is the full buffer it moves (all-gather: its output, reduce-scatter:
its input, all-reduce: its tensor, all-to-all: its input, send / receive: the tensor), the same
definition `validate.CollectiveCounter` measures with. Per micro-batch of m sequences of length
s (s / cp per cp rank), A = m x s x d_model x (compute bytes) is one activation:

  tp    per layer, forward: 2 all-gathers (attention / MLP inputs back to the full sequence) and
        2 reduce-scatters (their outputs back to sequence shards), backward the same: 8A. Embedding (vocab-
        parallel, reduce-scatter to the sequence) and output layer (all-gather of its input): 2A
        each. Recomputed layers run the forward's collectives again up to the last tensor backward
        needs (torch's checkpoint stops early: the final reduce-scatter is skipped): +3A. Replicated KV heads add the all-reduce of the k and v gradients.
  pp    per micro-batch, each stage boundary that crosses to another rank: the activation
        (A / tp) forward and its gradient backward, counted on the sending and receiving rank.
  fsdp  per block (each layer, and the stage root: embeddings, final norm, output) the all-gather
        of its tp-local parameters in the compute dtype, padded by FSDP2 to equal shards, and the
        reduce-scatter of the gradients in fp32. Without a pipeline blocks are re-sharded after
        forward, so each micro-batch gathers twice and reduce-scatters once; under a pipeline the
        schedule gathers once and reduce-scatters once per step (no re-shard, no sync between
        micro-batches). HSDP all-reduces the fp32 gradient shards over dp_replicate as often.
        Routed experts under ep > 1 are their own FSDP unit over dp_shard.
  ep    per MoE layer and micro-batch: the per-expert counts (int64) and the routed tokens
        (m x s x top_k rows) there and back, forward and backward; balanced routing is assumed
        for what a rank receives.
  cp    per attention layer and micro-batch (`cp_layer_bytes`): alltoall, the all-to-alls of q, k,
        v and the output forward and of their gradients backward; ring, K and V passed on cp-1
        times forward and again with their gradients backward. Under cp every activation above
        is a cp rank's share (seq_len / cp tokens), and FSDP's groups span dp_shard x ep x cp.
  other the engine's token-count and loss all-reduces (8 bytes each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model_zoo.config import ModelConfig
from parallel.config import FULL_PRECISIONS
from parallel.layout import Layout
from parallel.planner.memory import (
    COMPUTE_BYTES,
    F32,
    FSDP_AXES,
    axis_sizes,
    layer_kinds,
    param_rules,
    rank_coords,
    stage_param_names,
)


def _padded_unsharded(rule, sizes: dict[str, int]) -> int:
    """The all-gather output FSDP2 allocates for one parameter: dim 0 padded to a multiple of
    the shard count, of the tp/ep-local tensor."""
    tp_local = rule.tp_local_numel(sizes)
    fsdp = [(a, d) for a, d in rule.splits if a in FSDP_AXES]
    if not fsdp:
        return 0
    n = math.prod(sizes[a] for a, _ in fsdp)
    local_shape = list(rule.shape)
    for axis, dim in rule.splits:
        if axis in FSDP_AXES:
            continue
        local_shape[dim] = math.ceil(local_shape[dim] / sizes[axis])
    dim0 = local_shape[0]
    rest = tp_local // dim0 if dim0 else 0
    return math.ceil(dim0 / n) * n * rest


def _ckpt(layout: Layout, lid: int) -> bool:
    mode = layout.activation_checkpointing
    return mode == "full" or (mode == "selective" and lid % layout.ac_every_n == 0)


@dataclass(frozen=True)
class _RankVolume:
    """What every axis's volume is computed from: the layout, this rank's stages and the bytes of
    one micro-batch's activations on it."""

    cfg: ModelConfig
    layout: Layout
    sizes: dict[str, int]
    stages: list[int]
    tokens: int  # this cp rank's tokens of a micro-batch
    act: int  # their activations' bytes [tokens, d_model]
    cbytes: int


def _tp_bytes(v: _RankVolume) -> int:
    cfg, layout, tp, act = v.cfg, v.layout, v.layout.tp, v.act
    total = 0
    for sid in v.stages:
        per_mb = 0
        for lid in layout.stage_layers[sid]:
            # recomputation stops at the last tensor backward needs: the block's final
            # reduce-scatter is not run again (torch's non-reentrant checkpoint)
            per_mb += 8 * act + (3 * act if _ckpt(layout, lid) else 0)
            if not cfg.mla.enabled and cfg.kv_heads % tp:
                kv = v.tokens * cfg.kv_heads * cfg.dim_per_head
                per_mb += 2 * kv * v.cbytes
        if sid == 0:
            per_mb += 2 * act
        if sid == layout.n_stages - 1:
            per_mb += 2 * act
        total += per_mb * layout.n_microbatches
    return total


def _pp_bytes(v: _RankVolume, pp_rank: int) -> int:
    layout = v.layout
    owner = {s: r for r in range(layout.pp) for s in layout.stages_of_rank(r)}
    hops = sum(
        0 <= nb < layout.n_stages and owner[nb] != pp_rank
        for sid in v.stages
        for nb in (sid - 1, sid + 1)
    )
    return hops * 2 * (v.act // layout.tp) * layout.n_microbatches


def _fsdp_bytes(v: _RankVolume) -> tuple[int, int]:
    """(FSDP all-gathers + reduce-scatters, HSDP's all-reduce of the shards)."""
    cfg, layout, n_mb = v.cfg, v.layout, v.layout.n_microbatches
    rules = param_rules(cfg, layout)
    gathers, syncs = (2 * n_mb, n_mb) if layout.pp == 1 else (1, 1)
    fsdp = replicate = 0
    for sid in v.stages:
        for _, rep in stage_param_names(cfg, layout, sid, rules):
            rule = rules[rep]
            full = _padded_unsharded(rule, v.sizes)
            n = math.prod(v.sizes[a] for a, _ in rule.splits if a in FSDP_AXES)
            if full == 0 or n == 1:
                continue  # a one-rank FSDP group moves nothing
            fsdp += gathers * full * v.cbytes + syncs * full * F32
            if layout.dp_replicate > 1:  # the padded fp32 shard, all-reduced
                replicate += syncs * (full // n) * F32
    return fsdp, replicate


def _ep_bytes(v: _RankVolume) -> int:
    cfg, layout = v.cfg, v.layout
    kinds = layer_kinds(cfg)
    routed = v.tokens * cfg.moe.top_k * cfg.d_model * v.cbytes
    counts = 8 * cfg.moe.n_experts
    total = 0
    for sid in v.stages:
        layers = layout.stage_layers[sid]
        n_moe = sum(kinds[lid] == "moe" for lid in layers)
        ckpt_moe = sum(kinds[lid] == "moe" and _ckpt(layout, lid) for lid in layers)
        # forward: counts + tokens out + results back; backward: the two reversed
        total += n_moe * (counts + 4 * routed) + ckpt_moe * (counts + 2 * routed)
    return layout.n_microbatches * total


def _cp_bytes(v: _RankVolume) -> int:
    layout = v.layout
    return sum(
        layout.n_microbatches * cp_layer_bytes(v.cfg, layout, recomputed=_ckpt(layout, lid))
        for sid in v.stages
        for lid in layout.stage_layers[sid]
    )


def collective_bytes(cfg: ModelConfig, layout: Layout, rank: int) -> dict[str, int]:
    """Bytes this rank's collectives move in one step, per axis."""
    coords = rank_coords(layout, rank)
    cbytes = COMPUTE_BYTES[layout.precision]
    tokens = layout.micro_batch_size * layout.seq_len // layout.cp  # this cp rank's
    v = _RankVolume(
        cfg, layout, axis_sizes(layout), list(layout.stages_of_rank(coords["pp"])), tokens,
        tokens * cfg.d_model * cbytes, cbytes,
    )  # fmt: skip
    out = {"tp": 0, "pp": 0, "fsdp": 0, "dp_replicate": 0, "ep": 0, "cp": 0, "other": 16}
    if layout.tp > 1:
        out["tp"] = _tp_bytes(v)
    if layout.pp > 1:
        out["pp"] = _pp_bytes(v, coords["pp"])
    if layout.dp > 1 or layout.cp > 1 or layout.precision not in FULL_PRECISIONS:
        out["fsdp"], out["dp_replicate"] = _fsdp_bytes(v)
    if layout.ep > 1:
        out["ep"] = _ep_bytes(v)
    if layout.cp > 1:
        out["cp"] = _cp_bytes(v)
    return out


def cp_layer_bytes(cfg: ModelConfig, layout: Layout, recomputed: bool) -> int:
    """Bytes one rank's context-parallel collectives move in one attention layer's forward and
    backward of a micro-batch (a recomputed layer runs its forward's again).

    alltoall (DeepSpeed-Ulysses): forward, q, k and v (GQA's KV heads repeated to the query
      heads) go from [seq/cp tokens, heads/tp] to [seq tokens, heads/tp/cp] and the attention
      output back: four all-to-alls whose input is this rank's [seq/cp, heads/tp] slice of each;
      backward the same four for the gradients.
    ring: forward, each rank passes its K and V chunk [seq/cp, kv_heads/tp] on cp-1 times;
      backward, K and V go round again with their gradients (4 tensors, cp-1 hops)."""
    cp, tp = layout.cp, layout.tp
    tokens = layout.micro_batch_size * layout.seq_len // cp
    cbytes = COMPUTE_BYTES[layout.precision]
    if cfg.mla.enabled:
        qk = cfg.mla.qk_nope_head_dim + cfg.mla.qk_rope_head_dim
        v, kv_heads = cfg.mla.v_head_dim, cfg.n_heads  # MLA expands K/V per query head
    else:
        qk = v = cfg.dim_per_head
        kv_heads = cfg.kv_heads
    if layout.cp_style == "alltoall":
        per_pass = tokens * (cfg.n_heads // tp) * (2 * qk + 2 * v) * cbytes  # q, k, v, output
        return per_pass * (2 + (1 if recomputed else 0))
    kv = tokens * max(kv_heads // tp, 1) * (qk + v) * cbytes
    return (cp - 1) * kv * (1 + 2 + (1 if recomputed else 0))
