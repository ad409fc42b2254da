"""Step time of a layout: FLOPs per stage over the GPU's peak, communication per collective over
the bandwidth of where the group's ranks sit, and the pipeline bubble of the schedule's order.

Compute: the model's training FLOPs per token (`model_zoo.counting.training_flops_per_token`,
6 x active parameters + attention) split over stages by their layers, plus one more forward of
each recomputed layer, over peak x `efficiency`. Under FP8 the linear layers' FLOPs run at the fp8
peak x efficiency x FP8_EFFICIENCY_RATIO and attention at the bf16 one.

Communication: each axis's term comes from its row of the axis table (parallel/axes.py, the
`step_seconds` hooks: TP + sequence parallel, EP's all-to-alls, PP's sends, context parallel's
all-to-alls or ring, FSDP/HSDP exposed beyond compute), over the bandwidth of the group's ranks.
A group is intra-node when all its ranks share a node: its stride x size fits in gpus_per_node
(parallel/axes.py MESH_AXES: pp, dp_replicate, dp_shard, ep, cp, tp, tp innermost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model_zoo.config import ModelConfig
from model_zoo.counting import count_parameters, training_flops_per_token
from parallel.axes import AXES, INNER_FIRST, StepCosts
from parallel.layout import Layout
from parallel.planner.hardware import GPUSpec
from parallel.planner.memory import COMPUTE_BYTES, config_key

# FP8 matmuls reach a smaller share of their (2x) peak than bf16 ones, and the recipes add casts
# and scale computations: 0.65 makes FP8 linears 1.3x faster than bf16 ones on H100
# (1979 x 0.65 / 989), torchtitan's measured end-to-end gain for Llama-3.1-8B on 8 H100
# (8,532 vs 6,667 tok/s/GPU, compiled, float8 vs bf16).
FP8_EFFICIENCY_RATIO = 0.65


def group_bandwidth(layout: Layout, axes: tuple[str, ...], gpu: GPUSpec, gpus_per_node: int):
    """Bytes/s per rank of a collective over `axes` (NVLink when its ranks share a node)."""
    stride, span = 1, 1
    for axis in INNER_FIRST:
        size = getattr(layout, axis)
        if axis in axes:
            span = stride * size
        stride *= size
    intra = span <= gpus_per_node
    return (gpu.nvlink_gbps if intra else gpu.net_gbps) * 1e9, intra


@dataclass
class StepTime:
    compute: float
    bubble: float
    # seconds of each axis's collectives on the critical path, keyed by the collective's name
    # (parallel/axes.py, each row's step_seconds hook): "tp", "pp", "fsdp" (exposed beyond
    # compute), "ep", "cp"; 0 where an axis is off
    comm: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.compute + self.bubble + sum(self.comm.values())

    @property
    def dominant(self) -> str:
        terms = {"compute": self.compute, "bubble": self.bubble}
        terms.update((f"{name} comm", t) for name, t in self.comm.items())
        return max(terms, key=terms.get)


def _simulate(layout: Layout, fwd: dict[int, float], bwd: dict[int, float]) -> float:
    """Makespan of the schedule's per-rank orders with per-stage forward/backward times (input-
    and weight-gradient halves split the backward evenly), each op waiting for its dependency on
    the neighbouring stage."""
    order = layout.schedule.action_order(layout.pp, layout.virtual_stages, layout.n_microbatches)
    last_stage = layout.n_stages - 1
    done: dict[tuple[str, int, int], float] = {}
    pos = {r: 0 for r in order}
    clock = {r: 0.0 for r in order}
    remaining = sum(len(v) for v in order.values())
    while remaining:
        progressed = False
        for r, ops in order.items():
            while pos[r] < len(ops):
                a = ops[pos[r]]
                if a.kind == "F":
                    dep = ("F", a.stage - 1, a.microbatch) if a.stage > 0 else None
                    cost = fwd[a.stage]
                elif a.kind in ("B", "I"):
                    if a.stage < last_stage:
                        dep = ("G", a.stage + 1, a.microbatch)
                    else:
                        dep = ("F", a.stage, a.microbatch)
                    cost = bwd[a.stage] if a.kind == "B" else bwd[a.stage] / 2
                else:  # W: after this stage's input-gradient half
                    dep = ("G", a.stage, a.microbatch)
                    cost = bwd[a.stage] / 2
                if dep is not None and dep not in done:
                    break
                start = max(clock[r], done[dep] if dep else 0.0)
                clock[r] = start + cost
                done[
                    (
                        "F" if a.kind == "F" else ("G" if a.kind in "BI" else "W"),
                        a.stage,
                        a.microbatch,
                    )
                ] = clock[r]
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError(f"schedule {layout.pp_schedule} order deadlocks in simulation")
    return max(clock.values())


_COUNTS: dict[str, tuple] = {}
_MAKESPANS: dict[tuple, float] = {}


def model_counts(cfg: ModelConfig, seq: int):
    """(ParameterCount, training FLOPs per token), counted once per model and seq_len (counting
    builds the model on the meta device)."""
    key = f"{config_key(cfg)}/{seq}"
    if key not in _COUNTS:
        count = count_parameters(cfg)
        _COUNTS[key] = (count, training_flops_per_token(cfg, seq, count))
    return _COUNTS[key]


def step_time(
    cfg: ModelConfig, layout: Layout, gpu: GPUSpec, gpus_per_node: int, efficiency: float
) -> StepTime:
    seq, mbs = layout.seq_len, layout.micro_batch_size
    count, per_token = model_counts(cfg, seq)
    output_flops = 6 * cfg.padded_vocab_size * cfg.d_model
    layer_flops = (per_token - output_flops) / cfg.n_layers
    attention_share = 12 * cfg.n_heads * cfg.dim_per_head * seq / max(layer_flops, 1)
    bf16 = gpu.bf16_tflops * 1e12 * efficiency
    fp8 = (gpu.fp8_tflops or gpu.bf16_tflops) * 1e12 * efficiency * FP8_EFFICIENCY_RATIO
    fast = layout.precision.startswith("fp8")

    def seconds(flops: float, linear_share: float) -> float:
        if not fast:
            return flops / bf16
        return flops * linear_share / fp8 + flops * (1 - linear_share) / bf16

    tokens_mb = mbs * seq // layout.cp  # a cp rank computes its share of every sequence
    tp = layout.tp
    fwd, bwd = {}, {}
    for sid, layers in enumerate(layout.stage_layers):
        f = 0.0
        recompute = 0.0
        for lid in layers:
            lf = layer_flops * tokens_mb / tp / 3  # forward is a third of forward + backward
            f += seconds(lf, 1 - attention_share)
            ckpt = layout.recomputes(lid)
            if ckpt:
                recompute += seconds(lf, 1 - attention_share)
        if sid == layout.n_stages - 1:
            f += seconds(output_flops * tokens_mb / tp / 3, 0.0)  # output stays bf16 under FP8
        fwd[sid], bwd[sid] = f, 2 * f + recompute
    compute = sum(fwd[s] + bwd[s] for s in layout.stages_of_rank(0)) * layout.n_microbatches
    if layout.pp > 1:
        # the makespan scales with the op times: one simulation per schedule shape and ratio
        # of stage times, shared by layouts differing in micro-batch size, tp, dp or ep
        unit = fwd[0] or 1.0
        key = (layout.pp_schedule, layout.pp, layout.virtual_stages, layout.n_microbatches)
        key += tuple(float(f"{t / unit:.9g}") for t in (*fwd.values(), *bwd.values()))
        if key not in _MAKESPANS:
            scaled = {s: t / unit for s, t in fwd.items()}, {s: t / unit for s, t in bwd.items()}
            _MAKESPANS[key] = _simulate(layout, *scaled)
        makespan = _MAKESPANS[key] * unit
        slowest = (
            max(sum(fwd[s] + bwd[s] for s in layout.stages_of_rank(r)) for r in range(layout.pp))
            * layout.n_microbatches
        )
        compute = slowest
        bubble = max(0.0, makespan - slowest)
    else:
        bubble = 0.0
    costs = StepCosts(
        cfg,
        layout,
        act_bytes=tokens_mb * cfg.d_model * COMPUTE_BYTES[layout.precision],
        layers_per_rank=sum(len(layout.stage_layers[s]) for s in layout.stages_of_rank(0)),
        compute=compute,
        stage_params=count.total / layout.pp / tp,
        cbytes=COMPUTE_BYTES[layout.precision],
        bandwidth=lambda axes: group_bandwidth(layout, axes, gpu, gpus_per_node)[0],
    )
    comm: dict[str, float] = {}
    for axis in AXES:  # each axis's communication term, from its row's hook
        if axis.step_seconds is not None:
            comm.update(axis.step_seconds(costs))
    return StepTime(compute, bubble, comm)
