"""Bytes each rank's collectives move in one `engine.forward_backward`, by kind.

The volume of a collective is the full buffer it moves (all-gather: its output, reduce-scatter:
its input, all-reduce: its tensor, all-to-all: its input, send / receive: the tensor), the same
definition `validate.CollectiveCounter` measures with. Each axis's volume is its row's
`comm_bytes` hook in the axis table (parallel/axes.py, where each hook's docstring gives its
formula); this module fills the rank's volume they read. Besides them, the engine's token-count
and loss all-reduces (8 bytes each).
"""

from __future__ import annotations

import math

from model_zoo.config import ModelConfig
from parallel.axes import AXES, RankVolume
from parallel.config import FULL_PRECISIONS
from parallel.layout import Layout
from parallel.planner.memory import (
    COMPUTE_BYTES,
    FSDP_AXES,
    axis_sizes,
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


def _fsdp_params(cfg: ModelConfig, layout: Layout, sizes: dict[str, int], stages: list[int]):
    """(padded all-gather numel, FSDP shard count) of every parameter of the rank's stages."""
    rules = param_rules(cfg, layout)
    out = []
    for sid in stages:
        for _, rep in stage_param_names(cfg, layout, sid, rules):
            rule = rules[rep]
            n = math.prod(sizes[a] for a, _ in rule.splits if a in FSDP_AXES)
            out.append((_padded_unsharded(rule, sizes), n))
    return out


def collective_bytes(cfg: ModelConfig, layout: Layout, rank: int) -> dict[str, int]:
    """Bytes this rank's collectives move in one step, per axis (FSDP's as "fsdp" and HSDP's
    replicate all-reduce as "dp_replicate")."""
    coords = rank_coords(layout, rank)
    cbytes = COMPUTE_BYTES[layout.precision]
    tokens = layout.micro_batch_size * layout.seq_len // layout.cp  # this cp rank's
    sizes, stages = axis_sizes(layout), list(layout.stages_of_rank(coords["pp"]))
    v = RankVolume(
        cfg, layout, sizes, stages, coords["pp"], tokens, tokens * cfg.d_model * cbytes, cbytes,
        layout.precision in FULL_PRECISIONS, lambda: _fsdp_params(cfg, layout, sizes, stages),
    )  # fmt: skip
    out: dict[str, int] = {}
    for axis in AXES:
        if axis.comm_bytes is not None:
            out.update(axis.comm_bytes(v))
    out["other"] = 16  # the engine's token-count and loss all-reduces
    return out
