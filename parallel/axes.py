"""The parallel axes as data: one row per device-mesh axis, read by everything that knows the
axes: the config and layout fields (ParallelConfig and Layout inherit AxisSettings, one field per
size and per option), the layout checks and the mesh builder (parallel/layout.py), the config's
own checks (parallel/config.py), parallelize_part (each row's `apply`), the engine (which ranks
report the loss) and the planner (parallel/planner/, pretrain/plan.py): the axis list, its order
on the mesh, the flattened meshes, which axes split the batch and which shard dense parameters,
each axis's divisibility rules against a model, its own options, and its planner hooks (the
sizes the search tries, the bytes its collectives move and the seconds they add to a step).

What each axis does at run time (the tensor-parallel plan, the pipeline split, the all-to-alls of
expert and context parallelism) stays in the axis's own module; the row names the function.
Adding an axis is a row here and its module: docs/contributing.md, "Adding a parallel axis".
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from configcore import need
from model_zoo.config import ModelConfig
from parallel.pipeline_schedules import (
    DEFAULT_PIPELINE_SCHEDULE,
    get_pipeline_schedule,
    pipeline_schedule_names,
)


@dataclass(frozen=True)
class AxisRequest:
    """What a per-axis check looks at: the requested layout, the model, the sequence length."""

    pcfg: Any  # a parallel.config.ParallelConfig (which reads this table: no import back)
    model: ModelConfig
    seq_len: int

    @property
    def name(self) -> str:
        return f"model '{self.model.name}'"


def _n_experts(model_cfg) -> int:
    """Routed experts of an MoE config (0 for dense)."""
    moe = getattr(model_cfg, "moe", None)
    return int(getattr(moe, "n_experts", 0) or 0)


def _is_mla(model_cfg) -> bool:
    mla = getattr(model_cfg, "mla", None)
    return bool(mla is not None and getattr(mla, "enabled", False))


# ---- tensor parallel: every sharded dimension must split evenly --------------------------------
def _tp_splits_heads(req: AxisRequest) -> None:
    tp, m = req.pcfg.tp, req.model
    need(m.n_heads % tp == 0, f"{req.name}: n_heads={m.n_heads} is not divisible by tp={tp}")


def _tp_splits_or_replicates_kv_heads(req: AxisRequest) -> None:
    # KV heads are split over tp when it divides them, and replicated when tp is a multiple of
    # them (each rank keeps the KV head of its query heads; parallelize.py). MLA has no KV heads.
    if _is_mla(req.model):
        return
    tp, kv = req.pcfg.tp, req.model.kv_heads
    need(
        kv % tp == 0 or tp % kv == 0,
        f"{req.name}: n_kv_heads={kv} is not divisible by tp={tp}, nor is tp a multiple of "
        f"it (KV heads are split over tp, or replicated when tp > n_kv_heads)",
    )


def _tp_splits_ffn(req: AxisRequest) -> None:
    tp, hidden = req.pcfg.tp, req.model.ffn_hidden_size
    need(hidden % tp == 0, f"{req.name}: ffn_hidden_size={hidden} is not divisible by tp={tp}")


def _tp_splits_experts(req: AxisRequest) -> None:
    if not _n_experts(req.model):
        return
    tp, hidden = req.pcfg.tp, req.model.moe.expert_hidden_size
    need(
        hidden % tp == 0,
        f"{req.name}: moe.expert_hidden_size={hidden} is not divisible by "
        f"tp={tp} (every expert is split over tp)",
    )


def _tp_splits_vocab(req: AxisRequest) -> None:
    tp, vocab = req.pcfg.tp, req.model.padded_vocab_size
    need(
        vocab % tp == 0,
        f"{req.name}: padded vocab {vocab} is not divisible by tp={tp}; "
        f"set model.pad_vocab_multiple to a multiple of {tp}",
    )


def _tp_splits_sequence(req: AxisRequest) -> None:
    # sequence parallel splits the sequence between the tp ranks outside attention/MLP
    # (under cp, each cp rank's share of it: _cp_rank_tokens_split_over_tp)
    if req.pcfg.cp > 1:
        return
    tp, seq_len = req.pcfg.tp, req.seq_len
    need(seq_len % tp == 0, f"seq_len={seq_len} is not divisible by tp={tp} (sequence parallel)")


# ---- context parallel: the sequence splits into 2*cp chunks, rank r keeping chunks r and
# 2cp-1-r (so every rank does the same causal work, and both styles give a rank the same tokens);
# alltoall also splits the query heads left after tp over cp -----------------------------------
def _cp_splits_sequence_in_balanced_chunks(req: AxisRequest) -> None:
    cp, seq_len = req.pcfg.cp, req.seq_len
    need(
        seq_len % (2 * cp) == 0,
        f"seq_len={seq_len} is not divisible by 2 x cp={2 * cp} (the load-balanced causal split "
        f"gives cp rank r chunks r and {2 * cp - 1}-r of {2 * cp})",
    )


def _cp_rank_tokens_split_over_tp(req: AxisRequest) -> None:
    cp, tp, seq_len = req.pcfg.cp, req.pcfg.tp, req.seq_len
    local = seq_len // cp
    need(
        local % tp == 0,
        f"seq_len={seq_len} over cp={cp} leaves {local} tokens per cp rank, not divisible by "
        f"tp={tp} (sequence parallel splits each cp rank's tokens over tp)",
    )


def _cp_style_fits_attention(req: AxisRequest) -> None:
    cp, tp, m = req.pcfg.cp, req.pcfg.tp, req.model
    if req.pcfg.cp_style == "alltoall":
        heads = m.n_heads // tp
        need(
            heads % cp == 0,
            f"{req.name}: {heads} query heads per tp rank (n_heads={m.n_heads} / tp={tp}) are "
            f"not divisible by cp={cp}: parallel.cp_style=alltoall gives each cp rank heads/cp of "
            f"them (GQA's KV heads are repeated to the query heads before the all-to-all, so only "
            f"the query heads must divide); use a cp that divides {heads}, or "
            f"parallel.cp_style=ring on CUDA",
        )
    else:
        need(
            m.sliding_window == 0,
            f"{req.name} has sliding_window={m.sliding_window}: parallel.cp_style=ring runs "
            f"torch's ring attention, plain causal only (no mask reaches its kernel); use "
            f"parallel.cp_style=alltoall",
        )


# ---- expert parallel ---------------------------------------------------------------------------
def _ep_has_experts(req: AxisRequest) -> None:
    ep = req.pcfg.ep
    need(
        _n_experts(req.model) > 0,
        f"{req.name} has no routed experts, so ep={ep} has nothing to split; use ep=1",
    )


def _ep_splits_experts(req: AxisRequest) -> None:
    ep, n_exp = req.pcfg.ep, _n_experts(req.model)
    need(n_exp % ep == 0, f"{req.name}: n_experts={n_exp} is not divisible by ep={ep}")


# ---- pipeline (the split of the layers into stages: parallel/layout.py's _stage_layers) --------
def _pp_schedule_takes_stages(req: AxisRequest) -> None:
    schedule = get_pipeline_schedule(req.pcfg.pp_schedule)
    v = req.pcfg.pp_virtual_stages or schedule.default_virtual_stages
    reason = schedule.check_stages(v)
    need(reason is None, reason or "")


def _pp_embeddings_untied(req: AxisRequest) -> None:
    need(
        not req.model.tie_embeddings,
        f"{req.name} ties its embedding and output matrices, which would live on the first and "
        "last pipeline stage; pipeline parallel needs untied embeddings (use pp=1)",
    )


# ---- the planner's cost hooks (parallel/planner/comm.py and cost.py call them per row) ---------
# Each axis's share of a step, in two forms: bytes its collectives move on one rank in one step
# (`comm_bytes`, what planner/validate.py measures), and the seconds they add to the step time
# (`step_seconds`), each keyed by the collective's name ("fsdp" for FSDP's over dp_shard x ep x cp,
# "dp_replicate" for HSDP's all-reduce), with 0 when the axis does not communicate in the layout. What they are
# computed from is passed in (RankVolume, StepCosts below are filled by the planner), so this table
# imports nothing of the planner. A = one micro-batch's activations on the rank: m x s x d_model x
# compute bytes for m sequences of s tokens (s / cp per cp rank).


@dataclass(frozen=True)
class RankVolume:
    """One rank's step, for `comm_bytes` (filled by planner/comm.py)."""

    cfg: ModelConfig
    layout: Any  # a parallel.layout.Layout
    sizes: dict[str, int]
    stages: list[int]  # the pipeline stages this rank holds
    pp_rank: int
    tokens: int  # this cp rank's tokens of a micro-batch
    act: int  # A: their activations' bytes [tokens, d_model]
    cbytes: int  # bytes of the compute dtype
    full_precision: bool  # fp32/fp64 (otherwise FSDP2 runs even on one rank: mixed precision)
    fsdp_params: Callable[[], list[tuple[int, int]]]  # (padded all-gather numel, shard count)


@dataclass(frozen=True)
class StepCosts:
    """One step of rank 0, for `step_seconds` (filled by planner/cost.py)."""

    cfg: ModelConfig
    layout: Any
    act_bytes: float  # A
    layers_per_rank: int
    compute: float  # seconds of compute of the slowest pipeline rank
    stage_params: float  # parameters of one stage's tp shard
    cbytes: int
    bandwidth: Callable[[tuple[str, ...]], float]  # bytes/s per rank of a group over these axes


def ring(n: int) -> float:
    """Share of a buffer each rank sends in a ring collective over n ranks."""
    return (n - 1) / n if n > 1 else 0.0


def _rank_layers(layout, stages) -> list[int]:
    return [lid for s in stages for lid in layout.stage_layers[s]]


def _tp_bytes(v: RankVolume) -> dict[str, int]:
    """Per layer, forward: 2 all-gathers (attention / MLP inputs back to the full sequence) and 2
    reduce-scatters (their outputs back to sequence shards), backward the same: 8A. Embedding
    (vocab-parallel, reduce-scatter to the sequence) and output layer (all-gather of its input):
    2A each. Recomputed layers run the forward's collectives again up to the last tensor backward
    needs (torch's non-reentrant checkpoint stops early: the final reduce-scatter is skipped):
    +3A. Replicated KV heads add the all-reduce of the k and v gradients."""
    cfg, layout, tp, act = v.cfg, v.layout, v.layout.tp, v.act
    if tp == 1:
        return {"tp": 0}
    total = 0
    for sid in v.stages:
        per_mb = 0
        for lid in layout.stage_layers[sid]:
            per_mb += 8 * act + (3 * act if layout.recomputes(lid) else 0)
            if not cfg.mla.enabled and cfg.kv_heads % tp:
                kv = v.tokens * cfg.kv_heads * cfg.dim_per_head
                per_mb += 2 * kv * v.cbytes
        if sid == 0:
            per_mb += 2 * act
        if sid == layout.n_stages - 1:
            per_mb += 2 * act
        total += per_mb * layout.n_microbatches
    return {"tp": total}


def _tp_seconds(c: StepCosts) -> dict[str, float]:
    """8A per layer and micro-batch (sequence parallel), not overlapped: on the critical path."""
    layout = c.layout
    if layout.tp == 1:
        return {"tp": 0.0}
    per = 8 * c.act_bytes * ring(layout.tp) / c.bandwidth(("tp",))
    return {"tp": per * c.layers_per_rank * layout.n_microbatches}


def _pp_bytes(v: RankVolume) -> dict[str, int]:
    """Per micro-batch, each stage boundary that crosses to another rank: the activation (A / tp)
    forward and its gradient backward, counted on the sending and receiving rank."""
    layout = v.layout
    if layout.pp == 1:
        return {"pp": 0}
    owner = {s: r for r in range(layout.pp) for s in layout.stages_of_rank(r)}
    hops = sum(
        0 <= nb < layout.n_stages and owner[nb] != v.pp_rank
        for sid in v.stages
        for nb in (sid - 1, sid + 1)
    )
    return {"pp": hops * 2 * (v.act // layout.tp) * layout.n_microbatches}


def _pp_seconds(c: StepCosts) -> dict[str, float]:
    """One send of the A / tp activation per virtual stage and micro-batch, each way."""
    layout = c.layout
    if layout.pp == 1:
        return {"pp": 0.0}
    sends = 2 * layout.virtual_stages * layout.n_microbatches
    return {"pp": sends * c.act_bytes / layout.tp / c.bandwidth(("pp",))}


def _fsdp_bytes(v: RankVolume) -> dict[str, int]:
    """FSDP over dp_shard x ep x cp, HSDP's replicate over dp_replicate. Per block (each layer,
    and the stage root: embeddings, final norm, output) the all-gather of its tp-local parameters
    in the compute dtype, padded by FSDP2 to equal shards, and the reduce-scatter of the gradients
    in fp32. Without a pipeline blocks are re-sharded after forward, so each micro-batch gathers
    twice and reduce-scatters once; under a pipeline the schedule gathers once and reduce-scatters
    once per step (no re-shard, no sync between micro-batches). HSDP all-reduces the fp32
    gradient shards over dp_replicate as often. Routed experts under ep > 1 are their own FSDP
    unit over dp_shard."""
    layout, n_mb = v.layout, v.layout.n_microbatches
    if not (layout.dp > 1 or layout.cp > 1 or not v.full_precision):
        return {"fsdp": 0, "dp_replicate": 0}
    gathers, syncs = (2 * n_mb, n_mb) if layout.pp == 1 else (1, 1)
    fsdp = replicate = 0
    for full, n in v.fsdp_params():
        if full == 0 or n == 1:
            continue  # a one-rank FSDP group moves nothing
        fsdp += gathers * full * v.cbytes + syncs * full * 4
        if layout.dp_replicate > 1:  # the padded fp32 shard, all-reduced
            replicate += syncs * (full // n) * 4
    return {"fsdp": fsdp, "dp_replicate": replicate}


def _fsdp_seconds(c: StepCosts) -> dict[str, float]:
    """The stage's parameters all-gathered (again in backward without a pipeline) and gradients
    reduce-scattered in fp32 over dp_shard x ep x cp; HSDP adds an all-reduce of the shards over
    dp_replicate; overlapped with compute, so only the part longer than compute is exposed."""
    layout = c.layout
    if layout.dp * layout.cp == 1:
        return {"fsdp": 0.0}
    gathers = 1 if layout.pp > 1 else 2
    n = layout.dp_shard * layout.ep * layout.cp
    vol = c.stage_params * ring(n) * (gathers * c.cbytes + 4)
    t = vol / c.bandwidth(("dp_shard", "ep", "cp"))
    if layout.dp_replicate > 1:
        rep_bw = c.bandwidth(("dp_replicate",))
        t += 2 * 4 * c.stage_params / n * ring(layout.dp_replicate) / rep_bw
    return {"fsdp": max(0.0, t - c.compute)}


def _ep_bytes(v: RankVolume) -> dict[str, int]:
    """Per MoE layer and micro-batch: the per-expert counts (int64) and the routed tokens
    (m x s x top_k rows) there and back, forward and backward; balanced routing is assumed for
    what a rank receives."""
    cfg, layout = v.cfg, v.layout
    if layout.ep == 1:
        return {"ep": 0}
    routed = v.tokens * cfg.moe.top_k * cfg.d_model * v.cbytes
    counts = 8 * cfg.moe.n_experts
    total = 0
    for sid in v.stages:
        layers = layout.stage_layers[sid]
        n_moe = sum(cfg.is_moe_layer(lid) for lid in layers)
        ckpt_moe = sum(cfg.is_moe_layer(lid) and layout.recomputes(lid) for lid in layers)
        # forward: counts + tokens out + results back; backward: the two reversed
        total += n_moe * (counts + 4 * routed) + ckpt_moe * (counts + 2 * routed)
    return {"ep": layout.n_microbatches * total}


def _ep_seconds(c: StepCosts) -> dict[str, float]:
    """2 all-to-alls forward and 2 backward of the routed tokens (top_k copies) per MoE layer."""
    cfg, layout = c.cfg, c.layout
    if layout.ep == 1:
        return {"ep": 0.0}
    moe_layers = sum(
        cfg.is_moe_layer(lid) for lid in _rank_layers(layout, layout.stages_of_rank(0))
    )
    routed = c.act_bytes * cfg.moe.top_k
    per = 4 * routed * ring(layout.ep) / c.bandwidth(("ep",))
    return {"ep": per * moe_layers * layout.n_microbatches}


def cp_layer_bytes(cfg: ModelConfig, layout, recomputed: bool, cbytes: int) -> int:
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


def _cp_bytes(v: RankVolume) -> dict[str, int]:
    """Per attention layer and micro-batch, `cp_layer_bytes`. Under cp every activation of the
    other axes is a cp rank's share (seq_len / cp tokens), and FSDP's groups span
    dp_shard x ep x cp."""
    layout = v.layout
    if layout.cp == 1:
        return {"cp": 0}
    return {
        "cp": sum(
            layout.n_microbatches * cp_layer_bytes(v.cfg, layout, layout.recomputes(lid), v.cbytes)
            for lid in _rank_layers(layout, v.stages)
        )
    }


def _cp_seconds(c: StepCosts) -> dict[str, float]:
    """Not overlapped with attention (both styles wait for their K/V)."""
    cfg, layout = c.cfg, c.layout
    if layout.cp == 1:
        return {"cp": 0.0}
    per_mb = sum(
        cp_layer_bytes(cfg, layout, layout.recomputes(lid), c.cbytes)
        for lid in _rank_layers(layout, layout.stages_of_rank(0))
    )
    return {"cp": per_mb * ring(layout.cp) / c.bandwidth(("cp",)) * layout.n_microbatches}


# ---- the planner's sizes (parallel/planner/search.py tries, per axis, what its row's
# `plan_sizes` returns, picking the axes in PLAN_ORDER, each from what the earlier ones left) ----


@dataclass(frozen=True)
class PlanSpace:
    """What the planner's size hooks look at: the model, the world, a node, the sequence."""

    cfg: ModelConfig
    world: int
    gpus_per_node: int
    seq_len: int

    def left(self, chosen: dict[str, int]) -> int:
        """The ranks left to split once the axes in `chosen` have their sizes."""
        return self.world // math.prod(chosen.values())


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def size_grid(order: tuple[str, ...], sizes_of, chosen: dict[str, int] | None = None):
    """Every {axis: size} of the axes in `order`, as nested loops (the first outermost), each
    axis's sizes `sizes_of(axis, chosen)` given the sizes chosen for the axes before it: the
    planner's search and the nearest valid layout a refusal suggests."""
    chosen = chosen or {}
    if not order:
        yield dict(chosen)
        return
    for size in sizes_of(order[0], chosen):
        yield from size_grid(order[1:], sizes_of, {**chosen, order[0]: size})


def _pow2_divisors(n: int, cap: int) -> list[int]:
    return [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= cap and n % d == 0]


def _tp_plan_sizes(space: PlanSpace, chosen: dict[str, int]) -> list[int]:
    """Powers of two within a node: tp's collectives are the most frequent."""
    return _pow2_divisors(space.left(chosen), space.gpus_per_node)


# Context parallelism is for long sequences: it is tried from 8192 tokens on, and only as far as
# each cp rank keeps at least 2048 of them (below that its per-layer all-to-all / ring costs more
# than the activations it saves; every cp value is a separate set of activation probes).
CP_MIN_SEQ = 8192
CP_MIN_TOKENS_PER_RANK = 2048


def _cp_plan_sizes(space: PlanSpace, chosen: dict[str, int]) -> list[int]:
    """Powers of two with tp x cp within a node (cp sits next to tp in the mesh: both move
    activations every layer), for long sequences only (CP_MIN_SEQ, CP_MIN_TOKENS_PER_RANK)."""
    seq = space.seq_len
    return [
        cp
        for cp in _pow2_divisors(space.left(chosen), space.gpus_per_node // chosen["tp"])
        if cp == 1 or (seq >= CP_MIN_SEQ and seq // cp >= CP_MIN_TOKENS_PER_RANK)
    ]


def _pp_plan_sizes(space: PlanSpace, chosen: dict[str, int]) -> list[int]:
    """Any divisor of what is left, up to one layer per stage."""
    return [pp for pp in divisors(space.left(chosen)) if pp <= space.cfg.n_layers]


def _ep_plan_sizes(space: PlanSpace, chosen: dict[str, int]) -> list[int]:
    """Divisors of the routed experts (1 for a dense model)."""
    n_exp = _n_experts(space.cfg)
    return [e for e in divisors(space.left(chosen)) if n_exp and n_exp % e == 0] or [1]


def _dp_replicate_plan_sizes(space: PlanSpace, chosen: dict[str, int]) -> list[int]:
    """HSDP only across nodes: a replica's shard group (the ranks of one pipeline stage of one
    replica) spans at least a node; within a node replicating only adds an all-reduce."""
    return [
        rep
        for rep in divisors(space.left(chosen))
        if rep == 1 or space.world // (chosen["pp"] * rep) >= space.gpus_per_node
    ]


@dataclass(frozen=True)
class AxisOption:
    """A setting that belongs to one axis: a ParallelConfig and Layout field (a name among
    `choices`), shown next to the axis in Layout.describe and tried by the planner, both only
    where the axis is on (size > 1)."""

    name: str
    default: str
    choices: Callable[[], tuple[str, ...]]
    column: str  # its header in `pretrain plan`'s table
    doc: str


CP_STYLES = ("alltoall", "ring")
PP_SCHEDULE = AxisOption(
    "pp_schedule",
    default=DEFAULT_PIPELINE_SCHEDULE,
    choices=pipeline_schedule_names,
    column="schedule",
    doc="a name in parallel/pipeline_schedules.py's registry, which says how many stages each "
    "rank holds and how they are placed",
)
CP_STYLE = AxisOption(
    "cp_style",
    default="alltoall",
    choices=lambda: CP_STYLES,
    column="cp style",
    doc="alltoall: DeepSpeed-Ulysses (all-to-all from sequence- to head-sharded q/k/v around the "
    "attention kernel; any backend; query heads after TP divisible by cp) | ring: torch's "
    "context_parallel (ring attention, K/V passed around the cp ranks; CUDA only, plain causal)",
)


@dataclass(frozen=True)
class Axis:
    """One device-mesh axis.

    name: the ParallelConfig and Layout field, the mesh dimension's name.
    mesh_position: 0 is outermost. Inner axes get the most frequent collectives, so that they
        stay inside a node.
    column: its header in `pretrain plan`'s table.
    batch: its ranks read different slices of the batch (the data-parallel degree dp is the
        product of these axes; the data loader sees only them).
    fsdp: "shard" when dense parameters are FSDP-sharded over it, "replicate" when HSDP
        replicates them over it, None when it splits them otherwise or not at all.
    tokens: token counts and losses are summed over it (otherwise its ranks hold the same loss
        and only coordinate 0 reports it; pp's last stage holds it).
    named_at_one: refusals and suggestions name it even at size 1 (cp only where used).
    remainder: size -1 means "whatever is left of the world size" (dp_shard).
    checks: its divisibility rules against a model, run (in order) when its size is > 1; each
        raises ConfigError with the reason.
    params, activations: how it shards parameters and activations.
    module: where it is applied at run time.
    comm_bytes, step_seconds: its planner cost hooks (above): the bytes its collectives move on a
        rank in a step, and the seconds they add to the step time. FSDP's (over dp_shard x ep x
        cp, with HSDP's replicate all-reduce) sit on dp_shard's row: one group, one exposure.
    apply: "module:function" that parallelize_part calls as function(model, cfg, layout, mesh)
        on every stage, in table order (it does nothing where the axis is off); imported when
        called, so this table imports no run-time code.
    apply_last: applied after activation checkpointing and compile, which it wraps (FSDP).
    plan_sizes: the sizes the planner tries, given the sizes of the axes before it in
        PLAN_ORDER (the remainder axis takes what is left).
    options: its own settings (AxisOption).
    """

    name: str
    mesh_position: int
    column: str
    params: str
    activations: str
    module: str
    batch: bool = False
    fsdp: str | None = None
    tokens: bool = False
    named_at_one: bool = True
    remainder: bool = False
    checks: tuple[Callable[[AxisRequest], None], ...] = ()
    comm_bytes: Callable[[RankVolume], dict[str, int]] | None = None
    step_seconds: Callable[[StepCosts], dict[str, float]] | None = None
    apply: str | None = None
    apply_last: bool = False
    plan_sizes: Callable[[PlanSpace, dict[str, int]], list[int]] | None = None
    options: tuple[AxisOption, ...] = ()

    def apply_function(self) -> Callable[..., None]:
        module, function = self.apply.split(":")  # only called for rows that have one
        return getattr(importlib.import_module(module), function)


# In the order refusals and suggestions name the axes (tests match those messages).
AXES = (
    Axis(
        "tp",
        mesh_position=5,
        column="tp",
        params="attention heads, FFN hidden and vocabulary split (DTensor tensor parallel); "
        "each routed expert split the same way (ETP = TP)",
        activations="sequence parallel outside attention/MLP, heads inside",
        module="parallel/parallelize.py (apply_tp), parallel/expert_parallel.py (apply_expert_tp)",
        checks=(
            _tp_splits_heads,
            _tp_splits_or_replicates_kv_heads,
            _tp_splits_ffn,
            _tp_splits_experts,
            _tp_splits_vocab,
            _tp_splits_sequence,
        ),
        comm_bytes=_tp_bytes,
        step_seconds=_tp_seconds,
        apply="parallel.parallelize:apply_tensor_parallel",
        plan_sizes=_tp_plan_sizes,
    ),
    Axis(
        "pp",
        mesh_position=0,
        column="pp",
        params="whole layers per stage (first stage: embeddings; last: norm and output)",
        activations="one stage's activations per micro-batch in flight",
        module="parallel/engine.py (prune_to_stage, the schedules of parallel/pipeline_schedules.py)",
        checks=(_pp_schedule_takes_stages, _pp_embeddings_untied),
        comm_bytes=_pp_bytes,
        step_seconds=_pp_seconds,
        plan_sizes=_pp_plan_sizes,
        options=(PP_SCHEDULE,),
    ),
    Axis(
        "dp_replicate",
        mesh_position=1,
        column="rep",
        params="replicated (HSDP's replicate dimension: gradients all-reduced)",
        activations="a different slice of the batch",
        module="parallel/parallelize.py (_fsdp_mesh)",
        batch=True,
        fsdp="replicate",
        tokens=True,
        plan_sizes=_dp_replicate_plan_sizes,
    ),
    Axis(
        "dp_shard",
        mesh_position=2,
        column="shard",
        params="FSDP2 dim-0 shards (dense parameters and routed experts)",
        activations="a different slice of the batch",
        module="parallel/parallelize.py (apply_fsdp)",
        batch=True,
        fsdp="shard",
        tokens=True,
        remainder=True,
        comm_bytes=_fsdp_bytes,
        step_seconds=_fsdp_seconds,
        apply="parallel.parallelize:apply_data_parallel",
        apply_last=True,
    ),
    Axis(
        "ep",
        mesh_position=3,
        column="ep",
        params="routed experts split (n_experts / ep whole experts each); dense parameters "
        "FSDP-sharded over it as over dp_shard",
        activations="a different slice of the batch; routed tokens all-to-all to their experts",
        module="parallel/expert_parallel.py",
        batch=True,
        fsdp="shard",
        tokens=True,
        checks=(_ep_has_experts, _ep_splits_experts),
        comm_bytes=_ep_bytes,
        step_seconds=_ep_seconds,
        apply="parallel.expert_parallel:apply_expert_parallel",
        plan_sizes=_ep_plan_sizes,
    ),
    Axis(
        "cp",
        mesh_position=4,
        column="cp",
        params="dense parameters FSDP-sharded over it (same weights, different tokens)",
        activations="2 of the 2*cp chunks of every sequence (load-balanced causal split)",
        module="parallel/context_parallel.py",
        fsdp="shard",
        tokens=True,
        named_at_one=False,
        checks=(
            _cp_splits_sequence_in_balanced_chunks,
            _cp_rank_tokens_split_over_tp,
            _cp_style_fits_attention,
        ),
        comm_bytes=_cp_bytes,
        step_seconds=_cp_seconds,
        apply="parallel.context_parallel:apply_context_parallel",
        plan_sizes=_cp_plan_sizes,
        options=(CP_STYLE,),
    ),
)
AXIS = {a.name: a for a in AXES}
MESH_AXES = tuple(a.name for a in sorted(AXES, key=lambda a: a.mesh_position))  # outermost first
INNER_FIRST = tuple(reversed(MESH_AXES))  # also the order the layout checks run in
SIZED_AXES = tuple(a.name for a in AXES if not a.remainder)  # sizes set in the config
REMAINDER_AXIS = next(a.name for a in AXES if a.remainder)

# The flattened meshes build_mesh makes (in this order), each over its axes in mesh order. Their
# names are what the code asks the mesh for; each is defined by the axes' roles:
#   dp: every data-parallel rank (the data loader's rank);
#   dp_shard_ep: the FSDP mesh of dense parameters without cp;
#   dp_cp: where token counts are summed;
#   dp_shard_ep_cp: the FSDP mesh of dense parameters under cp.
FLAT_MESHES = tuple(
    (flat, tuple(n for n in MESH_AXES if member(AXIS[n])))
    for flat, member in (
        ("dp", lambda a: a.batch),
        ("dp_shard_ep", lambda a: a.batch and a.fsdp == "shard"),
        ("dp_cp", lambda a: a.tokens),
        ("dp_shard_ep_cp", lambda a: a.fsdp == "shard"),
    )
)

# The mesh dimensions parallelize's FSDP meshes are made of (parallel/parallelize.py,
# _fsdp_mesh and apply_fsdp): dense parameters over dp_shard_ep or dp_shard_ep_cp, routed
# experts under ep over dp_shard, HSDP replicating over dp_replicate. A parameter's split over any
# other dimension (tp, ep) is tensor or expert parallel.
FSDP_MESH_DIMS = ("dp_shard_ep_cp", "dp_shard_ep", "dp_shard", "dp_replicate")

# The order _suggest tries sizes in (nested loops, outermost first): on a tie in distance the
# first tried wins, so this order decides which layout a refusal suggests.
SUGGEST_ORDER = ("tp", "pp", "ep", "cp", "dp_replicate")

# The order the planner picks sizes in (each row's plan_sizes, from what the axes before it left;
# the remainder axis takes the rest): tp first, within a node, then cp beside it.
PLAN_ORDER = ("tp", "cp", "pp", "ep", "dp_replicate")

OPTIONS = tuple(o for a in AXES for o in a.options)
OPTION_AXIS = {o.name: a.name for a in AXES for o in a.options}

# The fields every row gives ParallelConfig and Layout (both inherit them): its size (the
# remainder axis -1: "whatever is left of the world size"), then its options.
AxisSettings = make_dataclass(
    "AxisSettings",
    [
        field_
        for a in AXES
        for field_ in (
            (a.name, int, field(default=-1 if a.remainder else 1)),
            *((o.name, str, field(default=o.default)) for o in a.options),
        )
    ],
)
AxisSettings.__module__ = __name__
AxisSettings.__doc__ = "The size of every mesh axis and the axes' own options (parallel/axes.py)."


def axis_settings(obj) -> dict[str, Any]:
    """Every axis size (in table order), then every axis option, of a ParallelConfig or a Layout."""
    return {name: getattr(obj, name) for name in (*(a.name for a in AXES), *OPTION_AXIS)}


def options_in_use(obj) -> dict[str, str]:
    """The options of the axes that are on (size > 1): what a layout's description and the
    planner's overrides name."""
    return {o: getattr(obj, o) for o, axis in OPTION_AXIS.items() if getattr(obj, axis) > 1}


def named_axes(sizes: dict[str, int], *also: dict[str, int]) -> list[str]:
    """The axes a message names, in AXES order: all but those named only where used (size > 1
    in `sizes` or any of `also`)."""
    return [
        a.name for a in AXES if a.named_at_one or any(s.get(a.name, 1) > 1 for s in (sizes, *also))
    ]
