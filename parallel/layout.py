"""Resolve and validate a parallel layout before any process group exists, and build the mesh.

`resolve_layout` is pure arithmetic on the configs: it is what `pretrain config` and the launcher
call to reject an impossible layout in a second, with the reason and a layout that would work,
instead of failing minutes later inside a collective on hundreds of GPUs.

Mesh axes and how expert parallel composes with them
-----------------------------------------------------
The axes are data: parallel/axes.py's table (AXES) gives each its mesh position, its role and its
divisibility rules, and the checks, the mesh and the planner read it. The device mesh has six
named axes, outermost first: ``pp, dp_replicate, dp_shard, ep, cp, tp``
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

from configcore import ConfigError, need
from model_zoo.config import ModelConfig
from parallel.axes import (
    AXES,
    AXIS,
    FLAT_MESHES,
    INNER_FIRST,
    MESH_AXES,
    OPTION_AXIS,
    REMAINDER_AXIS,
    SIZED_AXES,
    SUGGEST_ORDER,
    AxisRequest,
    AxisSettings,
    axis_settings,
    divisors,
    named_axes,
    options_in_use,
    size_grid,
)
from parallel.config import ParallelConfig
from parallel.pipeline_schedules import PipelineSchedule, get_pipeline_schedule


@dataclass(kw_only=True)
class Layout(AxisSettings):
    """A validated layout: every axis size resolved (the fields of the axis table, as in
    ParallelConfig), every stage's layers decided."""

    world_size: int
    global_batch_size: int
    micro_batch_size: int
    seq_len: int
    local_batch_size: int  # sequences per optimizer step on one data-parallel rank
    n_microbatches: int  # forward/backward chunks per step on one data-parallel rank
    virtual_stages: int  # pipeline stages held by one pp rank
    stage_layers: list[list[int]] = field(default_factory=list)  # layer ids of each stage
    precision: str = "fp32"
    activation_checkpointing: str = "none"
    ac_every_n: int = 1
    compile: bool = False
    device: str = "auto"

    @property
    def dp(self) -> int:
        return math.prod(getattr(self, a.name) for a in AXES if a.batch)

    @property
    def n_stages(self) -> int:
        return self.pp * self.virtual_stages

    @property
    def schedule(self) -> PipelineSchedule:
        return get_pipeline_schedule(self.pp_schedule)

    def recomputes(self, lid: int) -> bool:
        """Whether activation checkpointing runs layer `lid`'s forward again in backward (what
        parallelize's apply_ac wraps: every layer, or every ac_every_n-th)."""
        mode = self.activation_checkpointing
        return mode == "full" or (mode == "selective" and lid % self.ac_every_n == 0)

    def stages_of_rank(self, pp_rank: int) -> list[int]:
        """Stage ids held by one pp rank, placed as the schedule says (parallel/pipeline_schedules.py)."""
        if self.pp == 1:
            return [0]
        return self.schedule.stages_of_rank(pp_rank, self.pp, self.virtual_stages)

    def describe(self) -> str:
        """The axes outermost first, each with its options where it is on, then the batch:
        "pp=2 (1F1B) dp_replicate=1 dp_shard=2 ep=1 cp=1 tp=2 (world 8); 4 micro-batches ..."."""
        on = options_in_use(self)
        axes = " ".join(
            f"{name}={getattr(self, name)}"
            + "".join(f" ({value})" for o, value in on.items() if OPTION_AXIS[o] == name)
            for name in MESH_AXES
        )
        return (
            f"{axes} (world {self.world_size}); "
            f"{self.n_microbatches} micro-batches of {self.micro_batch_size} x {self.seq_len} "
            f"per dp rank; precision {self.precision}"
        )


def _balanced_split(n_layers: int, n_stages: int) -> list[int]:
    base, extra = divmod(n_layers, n_stages)
    return [base + (1 if s < extra else 0) for s in range(n_stages)]


def _check_fields(pcfg: ParallelConfig) -> None:
    """Checks no other mesh shape could fix (ParallelConfig.validate, next to its fields)."""
    pcfg.validate()


def _resolve_remainder(pcfg: ParallelConfig, world_size: int) -> int:
    """The size of the remainder axis (dp_shard): the rest of the world when -1, else checked
    to make the product of all axes the world size."""
    sizes = {n: getattr(pcfg, n) for n in (a.name for a in AXES)}
    fixed = math.prod(sizes[n] for n in SIZED_AXES)
    rest = sizes[REMAINDER_AXIS]
    named = named_axes(sizes)
    if rest == -1:
        sized = [n for n in named if n != REMAINDER_AXIS]
        need(
            world_size % fixed == 0,
            f"world_size={world_size} is not divisible by {'*'.join(sized)}={fixed}, "
            f"so {REMAINDER_AXIS}=-1 has no integer value",
        )
        return world_size // fixed
    values = "*".join(str(sizes[n]) for n in named)
    need(
        fixed * rest == world_size,
        f"{'*'.join(named)} = {values} = {fixed * rest} != world_size={world_size}",
    )
    return rest


def _check_axes(pcfg: ParallelConfig, model_cfg: ModelConfig, seq_len: int) -> None:
    """Every axis's divisibility rules against the model (parallel/axes.py), innermost axis
    first, for the axes of size > 1."""
    req = AxisRequest(pcfg, model_cfg, seq_len)
    for name in INNER_FIRST:
        if getattr(pcfg, name) > 1:
            for check in AXIS[name].checks:
                check(req)


def _virtual_stages(pcfg: ParallelConfig) -> int:
    if pcfg.pp == 1:
        return 1
    return pcfg.pp_virtual_stages or get_pipeline_schedule(pcfg.pp_schedule).default_virtual_stages


def _stage_layers(pcfg: ParallelConfig, model_cfg: ModelConfig, v: int) -> list[list[int]]:
    """The layer ids of each of the pp * v stages: parallel.pp_split's, or a balanced split."""
    n_stages = pcfg.pp * v
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
            f"pp={pcfg.pp} x {v} stage(s) per rank = {n_stages} pipeline stages but "
            f"model '{model_cfg.name}' has only n_layers={L}",
        )
        split = _balanced_split(L, n_stages)
    stage_layers, start = [], 0
    for n in split:
        stage_layers.append(list(range(start, start + n)))
        start += n
    return stage_layers


def _batch_split(pcfg: ParallelConfig, dp: int, gbs: int, mbs: int, seq_len: int, v: int):
    """(sequences per dp rank, micro-batches per step) of the global batch over dp ranks."""
    need(
        gbs >= 1 and mbs >= 1 and seq_len >= 1,
        "global_batch_size, micro_batch_size and seq_len must be >= 1",
    )
    batch_axes = "*".join(a.name for a in AXES if a.batch)
    need(
        gbs % dp == 0,
        f"global_batch_size={gbs} is not divisible by the data-parallel degree {batch_axes}={dp}",
    )
    local = gbs // dp
    need(
        local % mbs == 0,
        f"global_batch_size={gbs} over dp={dp} gives {local} sequences per rank, not divisible "
        f"by micro_batch_size={mbs}",
    )
    n_mb = local // mbs
    if pcfg.pp > 1 and pcfg.pp_microbatches:
        need(
            local % pcfg.pp_microbatches == 0,
            f"{local} sequences per dp rank are not divisible by pp_microbatches="
            f"{pcfg.pp_microbatches}",
        )
        n_mb = pcfg.pp_microbatches
    if pcfg.pp > 1:
        reason = get_pipeline_schedule(pcfg.pp_schedule).check_microbatches(pcfg.pp, v, n_mb)
        need(reason is None, reason or "")
    return local, n_mb


def _check(
    pcfg: ParallelConfig, world_size: int, model_cfg: ModelConfig, gbs: int, mbs: int, seq_len: int
) -> Layout:
    """Resolve and check; raise ConfigError(reason) without suggestions."""
    need(world_size >= 1, f"world_size={world_size} must be >= 1")
    _check_fields(pcfg)
    sizes = {a.name: getattr(pcfg, a.name) for a in AXES}
    sizes[REMAINDER_AXIS] = _resolve_remainder(pcfg, world_size)
    _check_axes(pcfg, model_cfg, seq_len)
    v = _virtual_stages(pcfg)
    stage_layers = _stage_layers(pcfg, model_cfg, v)
    dp = math.prod(sizes[a.name] for a in AXES if a.batch)
    local, n_mb = _batch_split(pcfg, dp, gbs, mbs, seq_len, v)
    name = f"model '{model_cfg.name}'"
    need(
        seq_len <= model_cfg.max_seq_len,
        f"seq_len={seq_len} exceeds {name}'s max_seq_len={model_cfg.max_seq_len}",
    )
    return Layout(
        **{**axis_settings(pcfg), **sizes},
        world_size=world_size,
        global_batch_size=gbs,
        micro_batch_size=mbs,
        seq_len=seq_len,
        local_batch_size=local,
        n_microbatches=n_mb,
        virtual_stages=v,
        stage_layers=stage_layers,
        precision=pcfg.precision,
        activation_checkpointing=pcfg.activation_checkpointing,
        ac_every_n=pcfg.ac_every_n,
        compile=pcfg.compile,
        device=pcfg.device,
    )


def check_layout(
    pcfg: ParallelConfig, world_size: int, model_cfg: ModelConfig, gbs: int, mbs: int, seq_len: int
) -> Layout:
    """resolve_layout without the search for an alternative (for callers that enumerate layouts
    themselves, like the planner): raises ConfigError(reason)."""
    return _check(pcfg, world_size, model_cfg, gbs, mbs, seq_len)


def _suggest(pcfg: ParallelConfig, world_size: int, model_cfg, gbs, mbs, seq_len) -> str:
    """The valid layout closest (in log2 distance of the axis sizes) to the requested one."""
    want = {k: max(1, getattr(pcfg, k)) for k in SIZED_AXES}
    best = None
    # every {axis: size} of the sized axes whose product divides world_size (the remainder axis
    # takes the rest), as nested loops over SUGGEST_ORDER, sizes ascending
    left = lambda axis, chosen: divisors(world_size // math.prod(chosen.values()))  # noqa: E731
    for tried in size_grid(SUGGEST_ORDER, left):
        shard = world_size // math.prod(tried.values())
        cand = replace(
            pcfg,
            **tried,
            **{REMAINDER_AXIS: shard},
            pp_split=[] if tried["pp"] != pcfg.pp else list(pcfg.pp_split),
        )
        try:
            _check(cand, world_size, model_cfg, gbs, mbs, seq_len)
        except ConfigError:
            continue
        d = sum(abs(math.log2(getattr(cand, k) / want[k])) for k in want)
        if getattr(pcfg, REMAINDER_AXIS) > 0:
            d += abs(math.log2(shard / getattr(pcfg, REMAINDER_AXIS)))
        if best is None or d < best[0]:
            best = (d, cand)
    if best is None:
        return (
            f"no layout of {world_size} ranks fits global_batch_size={gbs}, "
            f"micro_batch_size={mbs}, seq_len={seq_len}; change the batch sizes"
        )
    c = best[1]
    chosen = {a.name: getattr(c, a.name) for a in AXES}
    asked = {a.name: getattr(pcfg, a.name) for a in AXES}
    overrides = " ".join(f"parallel.{n}={chosen[n]}" for n in named_axes(chosen, asked))
    return f"a valid layout for world_size={world_size}: {overrides}"


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
    """The DeviceMesh over MESH_AXES (pp, dp_replicate, dp_shard, ep, cp, tp), plus the flattened
    meshes of parallel/axes.py's FLAT_MESHES:
    "dp" = (dp_replicate, dp_shard, ep), all data-parallel ranks (the data loader's rank);
    "dp_shard_ep" = (dp_shard, ep), over which FSDP shards dense parameters without cp;
    "dp_cp" = dp and cp, over which token counts are summed; "dp_shard_ep_cp", the FSDP mesh of
    dense parameters under cp (see the module doc).

    Needs the default process group. All axes exist even when of size 1, so code can always
    ask for mesh["tp"] etc."""
    from torch.distributed.device_mesh import init_device_mesh

    shape = tuple(getattr(layout, name) for name in MESH_AXES)
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=MESH_AXES)
    for flat, axes in FLAT_MESHES:
        mesh[axes]._flatten(flat)
    return mesh
