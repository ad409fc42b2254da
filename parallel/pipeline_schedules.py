"""The registry of pipeline schedules: the one place a schedule's name is written.

Each entry maps the config value (`parallel.pp_schedule=...`) to torch's schedule class and says
how its stages are placed on the pp ranks. Whether a schedule holds one stage per rank or several
is not written here: it is read from the class (`PipelineScheduleSingle` or
`PipelineScheduleMulti` in torch.distributed.pipelining.schedules), and so is how the engine
constructs it (a single stage or the list of the rank's stages).

Adding a schedule is one `register_pipeline_schedule(PipelineSchedule(...))` call below (see
docs/contributing.md): the layout checks, the engine, the config's list of valid values and the
planner (`pretrain plan`) all read this registry.

`action_order` gives, for every pp rank, the order in which that rank runs forward / backward
(/ weight-gradient) chunks. For the multi-stage schedules it is torch's own `pipeline_order`,
computed by the schedule class itself on placeholder stages (no process group); for 1F1B, whose
class computes no order table, it is the order `Schedule1F1B._step_microbatches` runs (warm-up
forwards, then one backward one forward, then cool-down backwards). The planner simulates these
orders to get the bubble and the micro-batches each rank keeps in flight.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    PipelineScheduleSingle,
    Schedule1F1B,
    ScheduleInterleaved1F1B,
    ScheduleZBVZeroBubble,
)

from configcore import ConfigError

# Stage placement over pp ranks: "loop" puts stages r, r+pp, r+2pp, ... on rank r (Megatron's
# interleaving); "v" puts r and 2pp-1-r on rank r, so the first and last stage share rank 0.
PLACEMENTS = ("loop", "v")


@dataclass(frozen=True)
class Action:
    """One unit of a rank's work: kind F (forward), B (full backward), I (input-gradient
    backward) or W (weight-gradient backward) of a micro-batch on a stage."""

    kind: str
    stage: int
    microbatch: int


@dataclass(frozen=True)
class PipelineSchedule:
    name: str  # the config value, e.g. "ZBVZeroBubble"
    torch_class: type
    placement: str = "loop"
    # stages per rank the schedule requires (None: any count >= 2 for a multi-stage schedule)
    virtual_stages: int | None = None
    # whether the micro-batch count must be a multiple of pp (torch's interleaved schedules
    # build rounds of pp micro-batches)
    microbatches_multiple_of_pp: bool = False
    # whether every stage needs at least one micro-batch (n_mb >= pp * virtual stages)
    microbatch_per_stage: bool = False
    summary: str = ""
    # (rank, pp, n_microbatches) -> that rank's actions, for single-stage classes (which compute
    # no order table); multi-stage classes give theirs (torch's pipeline_order)
    single_stage_order: Callable[[int, int, int], list[Action]] | None = None

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement {self.placement!r} is not one of {PLACEMENTS}")
        if not issubclass(self.torch_class, (PipelineScheduleSingle, PipelineScheduleMulti)):
            raise TypeError(f"{self.torch_class} is not a torch pipeline schedule class")

    @property
    def multi_stage(self) -> bool:
        """Several stages per rank: read from torch's class hierarchy."""
        return issubclass(self.torch_class, PipelineScheduleMulti)

    @property
    def default_virtual_stages(self) -> int:
        if not self.multi_stage:
            return 1
        return self.virtual_stages or 2

    def check_stages(self, v: int) -> str | None:
        """Why this schedule cannot hold `v` stages per rank, or None."""
        if not self.multi_stage and v != 1:
            multi = "/".join(s.name for s in SCHEDULES.values() if s.multi_stage)
            return (
                f"pp_schedule={self.name} holds one stage per rank; pp_virtual_stages={v} "
                f"needs pp_schedule={multi} (a multi-stage schedule)"
            )
        if self.multi_stage and self.virtual_stages and v != self.virtual_stages:
            return (
                f"pp_schedule={self.name} holds exactly {self.virtual_stages} stages per rank"
                f"{' (a V)' if self.placement == 'v' else ''}; got pp_virtual_stages={v}"
            )
        if self.multi_stage and v < 2:
            return f"pp_schedule={self.name} needs pp_virtual_stages >= 2, got {v}"
        return None

    def check_microbatches(self, pp: int, v: int, n_microbatches: int) -> str | None:
        """Why `n_microbatches` per step cannot run pp ranks of v stages, or None."""
        # every schedule needs at least one micro-batch per pp rank in flight
        if n_microbatches < pp:
            return (
                f"{n_microbatches} micro-batches per step cannot fill a pipeline of pp={pp}; "
                f"lower micro_batch_size or set pp_microbatches >= {pp}"
            )
        if self.microbatch_per_stage and n_microbatches < pp * v:
            return (
                f"pp_schedule={self.name} needs at least one micro-batch per stage: "
                f"{n_microbatches} < {pp * v} stages"
            )
        if self.microbatches_multiple_of_pp and n_microbatches % pp:
            return (
                f"pp_schedule={self.name} needs micro-batches ({n_microbatches}) divisible by "
                f"pp={pp}"
            )
        return None

    def stages_of_rank(self, pp_rank: int, pp: int, v: int) -> list[int]:
        """Stage ids held by one pp rank, in the order the schedule expects them."""
        if self.placement == "v":
            return [pp_rank, 2 * pp - 1 - pp_rank]
        return [pp_rank + k * pp for k in range(v)]

    def build(self, stages: list, n_microbatches: int, **kwargs):
        """The torch schedule over this rank's PipelineStages (one, or all of them)."""
        if self.multi_stage:
            return self.torch_class(stages, n_microbatches, **kwargs)
        if len(stages) != 1:
            raise ValueError(f"{self.name} runs one stage per rank, got {len(stages)}")
        return self.torch_class(stages[0], n_microbatches, **kwargs)

    def action_order(self, pp: int, v: int, n_microbatches: int) -> dict[int, list[Action]]:
        """Per pp rank, the compute actions in the order that rank runs them (see module doc).
        Cached: the planner asks for the same orders for thousands of layouts."""
        key = (self.name, pp, v, n_microbatches)
        if key not in _ORDERS:
            _ORDERS[key] = self._action_order(pp, v, n_microbatches)
        return _ORDERS[key]

    def _action_order(self, pp: int, v: int, n_microbatches: int) -> dict[int, list[Action]]:
        if not self.multi_stage:
            if self.single_stage_order is None:
                raise NotImplementedError(f"{self.name} has no single_stage_order")
            return {r: self.single_stage_order(r, pp, n_microbatches) for r in range(pp)}
        n_stages = pp * v
        stages = [_PlaceholderStage(sid, n_stages, pp, 0) for sid in self.stages_of_rank(0, pp, v)]
        sched = _order_only(self.torch_class)(stages, n_microbatches)
        orders = {}
        for rank, ops in sched.pipeline_order.items():
            orders[rank] = [
                Action(_KIND[op.computation_type.name], op.stage_index, op.microbatch_index)
                for op in ops
                if op is not None and op.computation_type.name in _KIND
            ]
        return orders


@functools.cache
def _order_only(torch_class: type) -> type:
    """The schedule class without its last constructor step, the lowering of the order table
    into send/receive and FSDP unshard/reshard actions (`_prepare_schedule_with_comms`): only
    the compute order (`pipeline_order`) is read here, and the lowering costs ~0.2 s per
    pipeline shape at 64+ micro-batches, most of a large `pretrain plan`."""

    def skip_lowering(self, actions, *args, **kwargs) -> None:
        del actions, args, kwargs

    return type(
        torch_class.__name__, (torch_class,), {"_prepare_schedule_with_comms": skip_lowering}
    )


_ORDERS: dict[tuple, dict[int, list[Action]]] = {}
_KIND = {"FORWARD": "F", "FULL_BACKWARD": "B", "BACKWARD_INPUT": "I", "BACKWARD_WEIGHT": "W"}


class _PlaceholderStage(types.SimpleNamespace):
    """What a schedule class reads from its stages while it computes its order table."""

    def __init__(self, stage_index: int, num_stages: int, group_size: int, group_rank: int):
        super().__init__(
            stage_index=stage_index,
            num_stages=num_stages,
            group_size=group_size,
            group_rank=group_rank,
            is_first=stage_index == 0,
            is_last=stage_index == num_stages - 1,
            submod=nn.Module(),
        )


def _one_f_one_b_order(rank: int, pp: int, m: int) -> list[Action]:
    """Schedule1F1B._step_microbatches' order on `rank`: min(m, pp - rank) warm-up forwards,
    then alternately one backward and one forward ("1B1F"), then the remaining backwards."""
    warmup = min(m, pp - rank)
    order = [Action("F", rank, i) for i in range(warmup)]
    for b in range(m):
        order.append(Action("B", rank, b))
        if warmup + b < m:
            order.append(Action("F", rank, warmup + b))
    return order


SCHEDULES: dict[str, PipelineSchedule] = {}
DEFAULT_PIPELINE_SCHEDULE = "1F1B"  # ParallelConfig.pp_schedule's default


def register_pipeline_schedule(schedule: PipelineSchedule) -> PipelineSchedule:
    if schedule.name in SCHEDULES:
        raise ValueError(f"pipeline schedule {schedule.name!r} is already registered")
    SCHEDULES[schedule.name] = schedule
    return schedule


def pipeline_schedule_names() -> tuple[str, ...]:
    return tuple(SCHEDULES)


def get_pipeline_schedule(name: str) -> PipelineSchedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ConfigError(
            f"parallel.pp_schedule={name!r} is not one of {', '.join(SCHEDULES)}"
        ) from None


register_pipeline_schedule(
    PipelineSchedule(
        "1F1B",
        Schedule1F1B,
        summary="one stage per rank; warm-up forwards, then one backward one forward",
        single_stage_order=_one_f_one_b_order,
    )
)
register_pipeline_schedule(
    PipelineSchedule(
        "Interleaved1F1B",
        ScheduleInterleaved1F1B,
        placement="loop",
        microbatches_multiple_of_pp=True,
        summary="pp_virtual_stages per rank (r, r+pp, ...): bubble divided by the stage count",
    )
)
register_pipeline_schedule(
    PipelineSchedule(
        "ZBVZeroBubble",
        ScheduleZBVZeroBubble,
        placement="v",
        virtual_stages=2,
        microbatches_multiple_of_pp=True,
        microbatch_per_stage=True,
        summary="two stages per rank in a V (r, 2pp-1-r); backward split into input and weight "
        "gradients to fill the bubble",
    )
)
