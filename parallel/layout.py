"""Resolve and validate a parallel layout before any process group exists, and build the mesh.

`resolve_layout` is pure arithmetic on the configs: it is what `pretrain config` and the launcher
call to reject an impossible layout in a second, with the reason and a layout that would work,
instead of failing minutes later inside a collective on hundreds of GPUs.

Mesh axes and how expert parallel composes with them
-----------------------------------------------------
The device mesh has six named axes, outermost first: ``pp, dp_replicate, dp_shard, ep, cp, tp``
and world_size = pp * dp_replicate * dp_shard * ep * cp * tp. tp is innermost so that
tensor-parallel collectives (the most frequent) stay inside a node; cp next to it (an all-to-all or
a ring of K/V blocks in every attention layer); pp is outermost (point-to-point only).

`ep` is a data-parallel axis for everything but the routed experts. This is torchtitan's design
("ep borrows from dp_shard"), only spelled so that every axis is a factor of the world size:
torchtitan's dp_shard=4, ep=2 is our dp_shard=2, ep=2.
  * dense parameters (attention, norms, embeddings, shared experts, router) are FSDP-sharded over
    the flattened ``(dp_shard, ep)`` mesh ("dp_shard_ep") and replicated over dp_replicate;
  * routed experts are split over ``ep`` (each rank holds n_experts / ep whole experts), FSDP-sharded
    over ``dp_shard`` only, and tensor-parallel over ``tp`` inside each expert (ETP = TP);
  * every rank of (dp_replicate, dp_shard, ep) reads a different slice of the batch:
    data-parallel degree dp = dp_replicate * dp_shard * ep.

`cp` (context parallel) splits each sequence: the cp ranks of one data-parallel rank receive the
same batch and each keeps 2 of its 2*cp sequence chunks (parallel/context_parallel.py). They hold
the same weights and see different tokens, so for FSDP cp is one more sharding axis, as
torchtitan's dp_shard_cp: dense parameters are sharded over ``(dp_shard, ep, cp)``
("dp_shard_ep_cp"); token counts and losses are summed over ``(dp_replicate, dp_shard, ep, cp)``
("dp_cp"). cp is not part of "dp": the data loader and the batch arithmetic do not see it.
Routed experts under ep > 1 stay sharded over dp_shard only, and the engine sums their gradients
over cp: an FSDP mesh over (dp_shard, cp) would put the ep axis between its dimensions, and
DTensor composes meshes only in ascending axis order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from model_zoo.config import ConfigError, ModelConfig, need
from parallel.config import ParallelConfig
from parallel.schedules import PipelineSchedule, get_schedule

MESH_AXES = ("pp", "dp_replicate", "dp_shard", "ep", "cp", "tp")


@dataclass
class Layout:
    """A validated layout: every size resolved, every stage's layers decided."""

    world_size: int
    pp: int
    dp_replicate: int
    dp_shard: int
    ep: int
    tp: int
    global_batch_size: int
    micro_batch_size: int
    seq_len: int
    local_batch_size: int  # sequences per optimizer step on one data-parallel rank
    n_microbatches: int  # forward/backward chunks per step on one data-parallel rank
    pp_schedule: str
    virtual_stages: int  # pipeline stages held by one pp rank
    stage_layers: list[list[int]] = field(default_factory=list)  # layer ids of each stage
    precision: str = "fp32"
    activation_checkpointing: str = "none"
    ac_every_n: int = 1
    compile: bool = False
    device: str = "auto"
    cp: int = 1
    cp_style: str = "alltoall"

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard * self.ep

    @property
    def n_stages(self) -> int:
        return self.pp * self.virtual_stages

    @property
    def schedule(self) -> PipelineSchedule:
        return get_schedule(self.pp_schedule)

    def stages_of_rank(self, pp_rank: int) -> list[int]:
        """Stage ids held by one pp rank, placed as the schedule says (parallel/schedules.py)."""
        if self.pp == 1:
            return [0]
        return self.schedule.stages_of_rank(pp_rank, self.pp, self.virtual_stages)

    def describe(self) -> str:
        return (
            f"pp={self.pp} dp_replicate={self.dp_replicate} dp_shard={self.dp_shard} "
            f"ep={self.ep} cp={self.cp}{f' ({self.cp_style})' if self.cp > 1 else ''} "
            f"tp={self.tp} (world {self.world_size}); "
            f"{self.n_microbatches} micro-batches of {self.micro_batch_size} x {self.seq_len} "
            f"per dp rank; precision {self.precision}"
        )


def _n_experts(model_cfg) -> int:
    """Routed experts of an MoE config (0 for dense)."""
    moe = getattr(model_cfg, "moe", None)
    return int(getattr(moe, "n_experts", 0) or 0)


def _is_mla(model_cfg) -> bool:
    mla = getattr(model_cfg, "mla", None)
    return bool(mla is not None and getattr(mla, "enabled", False))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _balanced_split(n_layers: int, n_stages: int) -> list[int]:
    base, extra = divmod(n_layers, n_stages)
    return [base + (1 if s < extra else 0) for s in range(n_stages)]


def _check_fields(pcfg: ParallelConfig) -> None:
    """Checks no other mesh shape could fix (ParallelConfig.validate, next to its fields)."""
    pcfg.validate()


def _check(
    pcfg: ParallelConfig, world_size: int, model_cfg: ModelConfig, gbs: int, mbs: int, seq_len: int
) -> Layout:
    """Resolve and check; raise ConfigError(reason) without suggestions."""
    need(world_size >= 1, f"world_size={world_size} must be >= 1")
    _check_fields(pcfg)
    fixed = pcfg.tp * pcfg.pp * pcfg.dp_replicate * pcfg.ep * pcfg.cp
    with_cp = "*cp" if pcfg.cp > 1 else ""  # cp named only where it is used
    if pcfg.dp_shard == -1:
        need(
            world_size % fixed == 0,
            f"world_size={world_size} is not divisible by tp*pp*dp_replicate*ep{with_cp}={fixed}, "
            "so dp_shard=-1 has no integer value",
        )
        dp_shard = world_size // fixed
    else:
        dp_shard = pcfg.dp_shard
        cp_term = f"*{pcfg.cp}" if pcfg.cp > 1 else ""
        need(
            fixed * dp_shard == world_size,
            f"tp*pp*dp_replicate*dp_shard*ep{with_cp} = {pcfg.tp}*{pcfg.pp}*{pcfg.dp_replicate}*"
            f"{dp_shard}*{pcfg.ep}{cp_term} = {fixed * dp_shard} != world_size={world_size}",
        )
    tp, pp, ep, cp = pcfg.tp, pcfg.pp, pcfg.ep, pcfg.cp
    name = f"model '{model_cfg.name}'"

    # ---- tensor parallel: every sharded dimension must split evenly -------------------------
    if tp > 1:
        need(
            model_cfg.n_heads % tp == 0,
            f"{name}: n_heads={model_cfg.n_heads} is not divisible by tp={tp}",
        )
        if not _is_mla(model_cfg):
            # KV heads are split over tp when it divides them, and replicated when tp is a
            # multiple of them (each rank keeps the KV head of its query heads; parallelize.py).
            kv = model_cfg.kv_heads
            need(
                kv % tp == 0 or tp % kv == 0,
                f"{name}: n_kv_heads={kv} is not divisible by tp={tp}, nor is tp a multiple of "
                f"it (KV heads are split over tp, or replicated when tp > n_kv_heads)",
            )
        need(
            model_cfg.ffn_hidden_size % tp == 0,
            f"{name}: ffn_hidden_size={model_cfg.ffn_hidden_size} is not divisible by tp={tp}",
        )
        if _n_experts(model_cfg):
            hidden = model_cfg.moe.expert_hidden_size
            need(
                hidden % tp == 0,
                f"{name}: moe.expert_hidden_size={hidden} is not divisible by "
                f"tp={tp} (every expert is split over tp)",
            )
        need(
            model_cfg.padded_vocab_size % tp == 0,
            f"{name}: padded vocab {model_cfg.padded_vocab_size} is not divisible by tp={tp}; "
            f"set model.pad_vocab_multiple to a multiple of {tp}",
        )
        # sequence parallel splits the sequence between the tp ranks outside attention/MLP
        # (under cp, each cp rank's share of it: _check_cp)
        if cp == 1:
            need(
                seq_len % tp == 0,
                f"seq_len={seq_len} is not divisible by tp={tp} (sequence parallel)",
            )
    # ---- context parallel ----------------------------------------------------------------------
    if cp > 1:
        _check_cp(pcfg, model_cfg, seq_len, name)
    # ---- expert parallel -----------------------------------------------------------------------
    n_exp = _n_experts(model_cfg)
    if ep > 1:
        need(n_exp > 0, f"{name} has no routed experts, so ep={ep} has nothing to split; use ep=1")
        need(n_exp % ep == 0, f"{name}: n_experts={n_exp} is not divisible by ep={ep}")
    # ---- pipeline ------------------------------------------------------------------------------
    sched = pcfg.pp_schedule
    schedule = get_schedule(sched)
    v = pcfg.pp_virtual_stages or schedule.default_virtual_stages
    if pp > 1:
        reason = schedule.check_stages(v)
        need(reason is None, reason or "")
        need(
            not model_cfg.tie_embeddings,
            f"{name} ties its embedding and output matrices, which would live on the first and "
            "last pipeline stage; pipeline parallel needs untied embeddings (use pp=1)",
        )
    else:
        v = 1
    n_stages = pp * v
    L = model_cfg.n_layers
    if pcfg.pp_split:
        split = list(pcfg.pp_split)
        need(
            len(split) == n_stages,
            f"parallel.pp_split has {len(split)} entries but there are pp*virtual_stages="
            f"{n_stages} stages",
        )
        need(
            sum(split) == L, f"parallel.pp_split sums to {sum(split)} but the model has {L} layers"
        )
        need(all(n >= 0 for n in split), "parallel.pp_split entries must be >= 0")
        # an empty middle stage would only forward activations; the first/last own embeddings/head
        need(all(n >= 1 for n in split[1:-1]), "middle pipeline stages need at least one layer")
    else:
        need(
            L >= n_stages,
            f"pp={pp} x {v} stage(s) per rank = {n_stages} pipeline stages but {name} has only "
            f"n_layers={L}",
        )
        split = _balanced_split(L, n_stages)
    stage_layers, start = [], 0
    for n in split:
        stage_layers.append(list(range(start, start + n)))
        start += n
    # ---- batch ---------------------------------------------------------------------------------
    dp = pcfg.dp_replicate * dp_shard * ep
    need(
        gbs >= 1 and mbs >= 1 and seq_len >= 1,
        "global_batch_size, micro_batch_size and seq_len must be >= 1",
    )
    need(
        gbs % dp == 0,
        f"global_batch_size={gbs} is not divisible by the data-parallel degree "
        f"dp_replicate*dp_shard*ep={dp}",
    )
    local = gbs // dp
    need(
        local % mbs == 0,
        f"global_batch_size={gbs} over dp={dp} gives {local} sequences per rank, not divisible "
        f"by micro_batch_size={mbs}",
    )
    n_mb = local // mbs
    if pp > 1 and pcfg.pp_microbatches:
        need(
            local % pcfg.pp_microbatches == 0,
            f"{local} sequences per dp rank are not divisible by pp_microbatches="
            f"{pcfg.pp_microbatches}",
        )
        n_mb = pcfg.pp_microbatches
    if pp > 1:
        reason = schedule.check_microbatches(pp, v, n_mb)
        need(reason is None, reason or "")
    need(
        seq_len <= model_cfg.max_seq_len,
        f"seq_len={seq_len} exceeds {name}'s max_seq_len={model_cfg.max_seq_len}",
    )
    return Layout(
        world_size=world_size,
        pp=pp,
        dp_replicate=pcfg.dp_replicate,
        dp_shard=dp_shard,
        ep=ep,
        tp=tp,
        global_batch_size=gbs,
        micro_batch_size=mbs,
        seq_len=seq_len,
        local_batch_size=local,
        n_microbatches=n_mb,
        pp_schedule=sched,
        virtual_stages=v,
        stage_layers=stage_layers,
        precision=pcfg.precision,
        activation_checkpointing=pcfg.activation_checkpointing,
        ac_every_n=pcfg.ac_every_n,
        compile=pcfg.compile,
        device=pcfg.device,
        cp=cp,
        cp_style=pcfg.cp_style,
    )


def _check_cp(pcfg: ParallelConfig, model_cfg: ModelConfig, seq_len: int, name: str) -> None:
    """Context parallel: the sequence splits into 2*cp chunks, rank r keeping chunks r and
    2cp-1-r (so every rank does the same causal work, and both styles give a rank the same
    tokens); alltoall also splits the query heads left after tp over cp."""
    cp, tp = pcfg.cp, pcfg.tp
    need(
        seq_len % (2 * cp) == 0,
        f"seq_len={seq_len} is not divisible by 2 x cp={2 * cp} (the load-balanced causal split "
        f"gives cp rank r chunks r and {2 * cp - 1}-r of {2 * cp})",
    )
    local = seq_len // cp
    need(
        local % tp == 0,
        f"seq_len={seq_len} over cp={cp} leaves {local} tokens per cp rank, not divisible by "
        f"tp={tp} (sequence parallel splits each cp rank's tokens over tp)",
    )
    if pcfg.cp_style == "alltoall":
        heads = model_cfg.n_heads // tp
        need(
            heads % cp == 0,
            f"{name}: {heads} query heads per tp rank (n_heads={model_cfg.n_heads} / tp={tp}) are "
            f"not divisible by cp={cp}: parallel.cp_style=alltoall gives each cp rank heads/cp of "
            f"them (GQA's KV heads are repeated to the query heads before the all-to-all, so only "
            f"the query heads must divide); use a cp that divides {heads}, or "
            f"parallel.cp_style=ring on CUDA",
        )
    else:
        need(
            model_cfg.sliding_window == 0,
            f"{name} has sliding_window={model_cfg.sliding_window}: parallel.cp_style=ring runs "
            f"torch's ring attention, plain causal only (no mask reaches its kernel); use "
            f"parallel.cp_style=alltoall",
        )


def check_layout(
    pcfg: ParallelConfig, world_size: int, model_cfg: ModelConfig, gbs: int, mbs: int, seq_len: int
) -> Layout:
    """resolve_layout without the search for an alternative (for callers that enumerate layouts
    themselves, like the planner): raises ConfigError(reason)."""
    return _check(pcfg, world_size, model_cfg, gbs, mbs, seq_len)


def _suggest(pcfg: ParallelConfig, world_size: int, model_cfg, gbs, mbs, seq_len) -> str:
    """The valid layout closest (in log2 distance of the axis sizes) to the requested one."""
    want = {k: max(1, getattr(pcfg, k)) for k in ("tp", "pp", "dp_replicate", "ep", "cp")}
    best = None
    for tp, pp, ep, cp, rep in _axis_sizes(world_size):
        shard = world_size // (tp * pp * ep * cp * rep)
        cand = replace(
            pcfg,
            tp=tp,
            pp=pp,
            ep=ep,
            cp=cp,
            dp_replicate=rep,
            dp_shard=shard,
            pp_split=[] if pp != pcfg.pp else list(pcfg.pp_split),
        )
        try:
            _check(cand, world_size, model_cfg, gbs, mbs, seq_len)
        except ConfigError:
            continue
        d = sum(abs(math.log2(getattr(cand, k) / want[k])) for k in want)
        if pcfg.dp_shard > 0:
            d += abs(math.log2(shard / pcfg.dp_shard))
        if best is None or d < best[0]:
            best = (d, cand)
    if best is None:
        return (
            f"no layout of {world_size} ranks fits global_batch_size={gbs}, "
            f"micro_batch_size={mbs}, seq_len={seq_len}; change the batch sizes"
        )
    c = best[1]
    return (
        f"a valid layout for world_size={world_size}: parallel.tp={c.tp} parallel.pp={c.pp} "
        f"parallel.dp_replicate={c.dp_replicate} parallel.dp_shard={c.dp_shard} "
        f"parallel.ep={c.ep}" + (f" parallel.cp={c.cp}" if c.cp > 1 or pcfg.cp > 1 else "")
    )


def _axis_sizes(world_size: int):
    """Every (tp, pp, ep, cp, dp_replicate) whose product divides world_size (dp_shard takes
    the rest)."""
    for tp in _divisors(world_size):
        for pp in _divisors(world_size // tp):
            for ep in _divisors(world_size // (tp * pp)):
                for cp in _divisors(world_size // (tp * pp * ep)):
                    for rep in _divisors(world_size // (tp * pp * ep * cp)):
                        yield tp, pp, ep, cp, rep


def resolve_layout(
    pcfg: ParallelConfig,
    world_size: int,
    model_cfg: ModelConfig,
    global_batch_size: int,
    micro_batch_size: int,
    seq_len: int,
) -> Layout:
    """Validate `pcfg` for this world and model without any process group.

    Raises ConfigError("parallel layout rejected: <reason>; <a valid alternative>")."""
    try:
        _check_fields(pcfg)
    except ConfigError as err:
        raise ConfigError(f"parallel layout rejected: {err}") from None
    try:
        return _check(pcfg, world_size, model_cfg, global_batch_size, micro_batch_size, seq_len)
    except ConfigError as err:
        hint = _suggest(pcfg, world_size, model_cfg, global_batch_size, micro_batch_size, seq_len)
        raise ConfigError(f"parallel layout rejected: {err}; {hint}") from None


def build_mesh(layout: Layout, device_type: str = "cpu"):
    """The DeviceMesh over (pp, dp_replicate, dp_shard, ep, cp, tp), plus flattened meshes:
    "dp" = (dp_replicate, dp_shard, ep), all data-parallel ranks (the data loader's rank);
    "dp_shard_ep" = (dp_shard, ep), over which FSDP shards dense parameters without cp;
    "dp_cp" = dp and cp, over which token counts are summed; "dp_shard_ep_cp", the FSDP mesh of
    dense parameters under cp (see the module doc).

    Needs the default process group. All six axes exist even when of size 1, so code can always
    ask for mesh["tp"] etc."""
    from torch.distributed.device_mesh import init_device_mesh

    shape = (layout.pp, layout.dp_replicate, layout.dp_shard, layout.ep, layout.cp, layout.tp)
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=MESH_AXES)
    mesh["dp_replicate", "dp_shard", "ep"]._flatten("dp")
    mesh["dp_shard", "ep"]._flatten("dp_shard_ep")
    mesh["dp_replicate", "dp_shard", "ep", "cp"]._flatten("dp_cp")
    mesh["dp_shard", "ep", "cp"]._flatten("dp_shard_ep_cp")
    return mesh
