"""The parallel axes as data: one row per device-mesh axis, read by the layout checks and the
mesh builder (parallel/layout.py), the config's own checks (parallel/config.py) and the planner
(parallel/planner/): the axis list, its order on the mesh, the flattened meshes, which axes split
the batch and which shard dense parameters, and each axis's divisibility rules against a model.

What each axis does at run time (the tensor-parallel plan, the pipeline split, the all-to-alls of
expert and context parallelism) stays in the axis's own module; the row says where that is.
Adding an axis: docs/contributing.md, "Adding a parallel axis".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from configcore import need
from model_zoo.config import ModelConfig
from parallel.pipeline_schedules import get_pipeline_schedule


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


@dataclass(frozen=True)
class Axis:
    """One device-mesh axis.

    name: the ParallelConfig and Layout field, the mesh dimension's name.
    mesh_position: 0 is outermost. Inner axes get the most frequent collectives, so that they
        stay inside a node.
    batch: its ranks read different slices of the batch (the data-parallel degree dp is the
        product of these axes; the data loader sees only them).
    fsdp: "shard" when dense parameters are FSDP-sharded over it, "replicate" when HSDP
        replicates them over it, None when it splits them otherwise or not at all.
    tokens: token counts and losses are summed over it.
    named_at_one: refusals and suggestions name it even at size 1 (cp only where used).
    remainder: size -1 means "whatever is left of the world size" (dp_shard).
    checks: its divisibility rules against a model, run (in order) when its size is > 1; each
        raises ConfigError with the reason.
    params, activations: how it shards parameters and activations.
    module: where it is applied at run time.
    """

    name: str
    mesh_position: int
    params: str
    activations: str
    module: str
    batch: bool = False
    fsdp: str | None = None
    tokens: bool = False
    named_at_one: bool = True
    remainder: bool = False
    checks: tuple[Callable[[AxisRequest], None], ...] = ()


# In the order refusals and suggestions name the axes (tests match those messages).
AXES = (
    Axis(
        "tp",
        mesh_position=5,
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
    ),
    Axis(
        "pp",
        mesh_position=0,
        params="whole layers per stage (first stage: embeddings; last: norm and output)",
        activations="one stage's activations per micro-batch in flight",
        module="parallel/engine.py (prune_to_stage, the schedules of parallel/pipeline_schedules.py)",
        checks=(_pp_schedule_takes_stages, _pp_embeddings_untied),
    ),
    Axis(
        "dp_replicate",
        mesh_position=1,
        params="replicated (HSDP's replicate dimension: gradients all-reduced)",
        activations="a different slice of the batch",
        module="parallel/parallelize.py (_fsdp_mesh)",
        batch=True,
        fsdp="replicate",
        tokens=True,
    ),
    Axis(
        "dp_shard",
        mesh_position=2,
        params="FSDP2 dim-0 shards (dense parameters and routed experts)",
        activations="a different slice of the batch",
        module="parallel/parallelize.py (apply_fsdp)",
        batch=True,
        fsdp="shard",
        tokens=True,
        remainder=True,
    ),
    Axis(
        "ep",
        mesh_position=3,
        params="routed experts split (n_experts / ep whole experts each); dense parameters "
        "FSDP-sharded over it as over dp_shard",
        activations="a different slice of the batch; routed tokens all-to-all to their experts",
        module="parallel/expert_parallel.py",
        batch=True,
        fsdp="shard",
        tokens=True,
        checks=(_ep_has_experts, _ep_splits_experts),
    ),
    Axis(
        "cp",
        mesh_position=4,
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


def named_axes(sizes: dict[str, int], *also: dict[str, int]) -> list[str]:
    """The axes a message names, in AXES order: all but those named only where used (size > 1
    in `sizes` or any of `also`)."""
    return [
        a.name for a in AXES if a.named_at_one or any(s.get(a.name, 1) > 1 for s in (sizes, *also))
    ]
