"""Enumerate the layouts the engine accepts for a model and world, estimate each, rank them.

Pruning (so every zoo model answers in seconds), stated in `pretrain plan --help`. Each axis's
sizes come from its row's `plan_sizes` hook in the axis table (parallel/axes.py), its options'
values from the row (all where the axis is on):
  * tp only within a node (tp <= gpus_per_node) and a power of two;
  * cp a power of two with tp x cp within a node, from seq_len 8192 on and with at least 2048
    tokens per cp rank, both styles (alltoall, ring);
  * micro-batch sizes 1, 2, 4, 8 (those dividing the per-rank batch);
  * pp only up to n_layers stages, every schedule; Interleaved1F1B with 2 stages per rank;
  * ep a divisor of the routed experts;
  * selective checkpointing every 2nd layer (ac_every_n=2);
  * FP8 recipes only on GPUs with FP8 tensor cores;
  * dp_replicate > 1 only across nodes (dp_shard a multiple of gpus_per_node / (tp * ep ...)
    is not required; HSDP within a node is pruned: it only adds an all-reduce).
  * activations are not probed for a (tp, compute dtype, tokens per rank) none of whose layouts'
    parameters, gradients, optimizer state and buffers alone fit (those layouts are listed with
    that lower bound), nor a zero-bubble layout's split backward when its estimate without it does
    not fit.
Every surviving combination is checked by `check_layout` (the engine's own rules); activation
probes are shared between layouts with the same (tp, dtype, seq_len / cp), a few probes each.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from configcore import ConfigError
from model_zoo.config import ModelConfig
from parallel.axes import (
    AXES,
    AXIS,
    MESH_AXES,
    OPTIONS,
    PLAN_ORDER,
    REMAINDER_AXIS,
    PlanSpace,
    axis_settings,
    options_in_use,
    size_grid,
)
from parallel.config import ParallelConfig
from parallel.layout import Layout, check_layout
from parallel.planner.cost import StepTime, model_counts, step_time
from parallel.planner.hardware import GPUSpec
from parallel.planner.memory import (
    COMPUTE_BYTES,
    ActivationModel,
    compute_dtype,
    config_key,
    in_flight_peak,
    pipeline_receive_buffers,
    static_memory,
)

# What the allocator and the runtime take beyond the tensors counted: CUDA context + NCCL
# buffers (about 1 GiB measured on H100 with torch 2.x) and caching-allocator fragmentation
# (5% of the tensors, torchtitan's rule of thumb for FSDP2 without expandable segments).
RUNTIME_BYTES = 1 << 30
FRAGMENTATION = 0.05
MICRO_BATCHES = (1, 2, 4, 8)
AC_CHOICES = ("none", "selective", "full")


@dataclass
class PlannedLayout:
    pcfg: ParallelConfig
    layout: Layout
    params: int
    grads: int
    optimizer: int
    activations: int
    comm_buffers: int
    total: int
    fits: bool
    time: StepTime
    tokens_per_s_per_gpu: float
    mfu: float
    per_rank: list[dict] = field(default_factory=list)
    activations_measured: bool = True

    def overrides(self) -> list[str]:
        p, lay = self.pcfg, self.layout
        out = [
            *(f"parallel.{a.name}={getattr(lay, a.name)}" for a in AXES),
            f"parallel.precision={p.precision}",
            f"parallel.activation_checkpointing={p.activation_checkpointing}",
            f"trainer.micro_batch_size={lay.micro_batch_size}",
            *(f"parallel.{name}={value}" for name, value in options_in_use(lay).items()),
        ]
        if p.activation_checkpointing == "selective":
            out.append(f"parallel.ac_every_n={p.ac_every_n}")
        return out

    def as_json(self) -> dict:
        lay = self.layout
        on = options_in_use(lay)
        return {
            **{a.name: getattr(lay, a.name) for a in AXES},
            **{o.name: on.get(o.name) for o in OPTIONS},  # null where the axis is off
            "virtual_stages": lay.virtual_stages,
            "micro_batch_size": lay.micro_batch_size,
            "n_microbatches": lay.n_microbatches,
            "activation_checkpointing": lay.activation_checkpointing,
            "precision": lay.precision,
            "bytes_per_gpu": {
                "params": self.params,
                "grads": self.grads,
                "optimizer": self.optimizer,
                "activations": self.activations,
                "comm_buffers": self.comm_buffers,
                "total": self.total,
            },
            "fits": self.fits,
            "activations_measured": self.activations_measured,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "mfu": self.mfu,
            "dominant": self.time.dominant,
            "step_s": self.time.total,
        }


def _option_choices(sizes: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """Each axis option's values to try: all where its axis is on, the default where it is off."""
    return {
        o.name: o.choices() if sizes[a.name] > 1 else (o.default,) for a in AXES for o in a.options
    }


def candidates(
    cfg: ModelConfig,
    world: int,
    gpus_per_node: int,
    gbs: int,
    seq: int,
    precisions: tuple[str, ...],
):
    """Every (ParallelConfig, Layout) the engine accepts, within the pruning above (each axis's
    sizes from its row's plan_sizes hook, parallel/axes.py)."""
    space = PlanSpace(cfg, world, gpus_per_node, seq)
    for sizes in size_grid(PLAN_ORDER, lambda axis, chosen: AXIS[axis].plan_sizes(space, chosen)):
        sizes[REMAINDER_AXIS] = space.left(sizes)  # the rest of the world
        options = _option_choices(sizes)
        for *values, mbs, ac, prec in itertools.product(
            *options.values(), MICRO_BATCHES, AC_CHOICES, precisions
        ):
            pcfg = ParallelConfig(
                **sizes,
                **dict(zip(options, values)),
                precision=prec,
                activation_checkpointing=ac,
            )
            try:
                yield pcfg, check_layout(pcfg, world, cfg, gbs, mbs, seq)
            except ConfigError:
                continue


_STATIC: dict[tuple, object] = {}


def _static(cfg: ModelConfig, layout: Layout, rank: int):
    """static_memory, shared by layouts that differ only in what changes activations, not
    shards: micro-batch size, checkpointing, an axis option like cp_style."""
    key = (
        config_key(cfg),
        layout.world_size,
        *(getattr(layout, name) for name in MESH_AXES),
        layout.virtual_stages,
        # the stages the rank holds: all a schedule changes of its shards (not the axes' options)
        tuple(layout.stages_of_rank(rank // (layout.world_size // layout.pp))),
        layout.precision == "fp32",
        COMPUTE_BYTES[layout.precision],
        rank,
    )
    if key not in _STATIC:
        _STATIC[key] = static_memory(cfg, layout, rank)
    return _STATIC[key]


def _rank_memory(cfg, layout: Layout, stage_acts: dict, ranks) -> list[dict]:
    per_rank = []
    for rank in ranks:
        st = _static(cfg, layout, rank)
        pp_rank = rank // (layout.world_size // layout.pp)
        act = in_flight_peak(layout, pp_rank, stage_acts) if stage_acts else 0
        buffers = st.comm_buffers + pipeline_receive_buffers(cfg, layout, pp_rank)
        tensors = st.params + st.grads + st.optimizer + buffers + act
        per_rank.append(
            dict(
                rank=rank,
                params=st.params,
                grads=st.grads,
                optimizer=st.optimizer,
                activations=act,
                comm_buffers=buffers,
                total=int(tensors * (1 + FRAGMENTATION)) + RUNTIME_BYTES,
            )
        )
    return per_rank


def evaluate(
    cfg: ModelConfig,
    pcfg: ParallelConfig,
    layout: Layout,
    gpu: GPUSpec,
    gpus_per_node: int,
    efficiency: float,
    acts: ActivationModel | None,
    all_ranks: bool = False,
) -> PlannedLayout:
    """Memory of the worst rank (every pp rank at dp/tp coordinate 0, where torch.chunk puts
    the larger shards) and the step time. acts=None: activations not measured (the layout's
    parameters, gradients, optimizer state and buffers alone do not fit). A zero-bubble layout
    is first estimated without what its split backward holds in addition (a lower bound); the
    split probes run only if that lower bound fits."""
    ranks = (
        range(layout.world_size)
        if all_ranks
        else [r * (layout.world_size // layout.pp) for r in range(layout.pp)]
    )
    measured = acts is not None
    stage_acts = {}
    if acts is not None:
        stage_acts = {s: acts.stage(layout, s, split=False) for s in range(layout.n_stages)}
    per_rank = _rank_memory(cfg, layout, stage_acts, ranks)
    if acts is not None and acts.splits(layout):
        if max(r["total"] for r in per_rank) <= gpu.hbm_bytes or all_ranks:
            stage_acts = {s: acts.stage(layout, s) for s in range(layout.n_stages)}
            per_rank = _rank_memory(cfg, layout, stage_acts, ranks)
        else:
            measured = False  # does not fit even without the split's bytes
    worst = max(per_rank, key=lambda d: d["total"])
    t = step_time(cfg, layout, gpu, gpus_per_node, efficiency)
    tokens = layout.global_batch_size * layout.seq_len
    tps = tokens / t.total / layout.world_size
    mfu = tps * model_counts(cfg, layout.seq_len)[1] / (gpu.bf16_tflops * 1e12)
    return PlannedLayout(
        pcfg,
        layout,
        worst["params"],
        worst["grads"],
        worst["optimizer"],
        worst["activations"],
        worst["comm_buffers"],
        worst["total"],
        worst["total"] <= gpu.hbm_bytes and measured,
        t,
        tps,
        mfu,
        per_rank,
        activations_measured=measured,
    )


def static_fits(cfg: ModelConfig, layout: Layout, gpu: GPUSpec) -> bool:
    """Whether the bytes that do not depend on activations (parameters, gradients, optimizer
    state, FSDP and pipeline buffers, the allowance) fit on the worst rank: the layouts whose
    parameters alone cannot fit are ranked without probing their activations."""
    for r in range(layout.pp):
        rank = r * (layout.world_size // layout.pp)
        st = _static(cfg, layout, rank)
        buffers = st.comm_buffers + pipeline_receive_buffers(cfg, layout, r)
        tensors = st.params + st.grads + st.optimizer + buffers
        if int(tensors * (1 + FRAGMENTATION)) + RUNTIME_BYTES > gpu.hbm_bytes:
            return False
    return True


def _acts_key(layout: Layout) -> tuple:
    """What the activation probes depend on: tp, the compute dtype, the tokens per rank."""
    return (layout.tp, compute_dtype(layout.precision), layout.seq_len // layout.cp)


def plan(
    cfg: ModelConfig,
    nodes: int,
    gpus_per_node: int,
    gpu: GPUSpec,
    gbs: int,
    seq: int,
    efficiency: float = 0.5,
    progress=None,
) -> list[PlannedLayout]:
    """Every candidate layout, best first: fitting layouts by tokens/s/GPU, then the rest by
    memory."""
    world = nodes * gpus_per_node
    precisions = ("bf16", "fp8_tensorwise", "fp8_rowwise") if gpu.fp8_tflops else ("bf16",)
    cands = list(candidates(cfg, world, gpus_per_node, gbs, seq, precisions))
    if not cands:
        raise ConfigError(
            f"no layout of {world} GPUs fits global_batch_size={gbs}, seq_len={seq} for "
            f"model '{cfg.name}'; change trainer.global_batch_size"
        )
    # probe a (tp, compute dtype, tokens per rank) only if some layout of it can fit
    probed = {_acts_key(layout) for _, layout in cands if static_fits(cfg, layout, gpu)}
    models: dict[tuple, ActivationModel] = {}
    out = []
    fp8_twin: dict[tuple, PlannedLayout] = {}
    for pcfg, layout in progress(cands) if progress else cands:
        if layout.precision.startswith("fp8"):
            # the two FP8 recipes shard, store and move the same bytes and the cost model gives
            # them the same speed: evaluate one, copy it for the other
            twin_key = (
                *axis_settings(pcfg).values(),
                layout.micro_batch_size,
                pcfg.activation_checkpointing,
            )
            twin = fp8_twin.get(twin_key)
            if twin is not None:
                out.append(replace(twin, pcfg=pcfg, layout=layout))
                continue
        key = _acts_key(layout)
        if key in probed and key not in models:
            models[key] = ActivationModel(cfg, layout.tp, key[2], key[1])
        acts = models.get(key) if static_fits(cfg, layout, gpu) else None
        planned = evaluate(cfg, pcfg, layout, gpu, gpus_per_node, efficiency, acts)
        if layout.precision.startswith("fp8"):
            fp8_twin[twin_key] = planned
        out.append(planned)
    out.sort(key=lambda p: (not p.fits, -p.tokens_per_s_per_gpu if p.fits else p.total))
    return out
