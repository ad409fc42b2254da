"""The pipeline-schedule registry agrees with torch: names, single/multi-stage, stage placement,
and the per-rank order of work the planner simulates."""

import dataclasses
from collections import Counter

import pytest
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    ScheduleGPipe,
    generate_stage_to_rank_mapping,
    get_schedule_class,
)

from configcore import ConfigError
from model_zoo.zoo import get_model_config
from parallel.config import ParallelConfig
from parallel.layout import resolve_layout
from parallel.pipeline_schedules import (
    SCHEDULES,
    PipelineSchedule,
    get_pipeline_schedule,
    register_pipeline_schedule,
)


def test_names_are_torchs_and_stage_count_comes_from_the_class():
    for name, sched in SCHEDULES.items():
        # torch's own name -> class lookup (used by torchtitan's configs) agrees with ours
        assert get_schedule_class(name) is sched.torch_class
        assert sched.multi_stage == issubclass(sched.torch_class, PipelineScheduleMulti)
    assert not SCHEDULES["1F1B"].multi_stage
    assert SCHEDULES["Interleaved1F1B"].multi_stage and SCHEDULES["ZBVZeroBubble"].multi_stage


@pytest.mark.parametrize("pp", [2, 4])
def test_stage_placement_matches_torch(pp):
    for sched in SCHEDULES.values():
        v = sched.default_virtual_stages
        want = generate_stage_to_rank_mapping(pp, pp * v, style=sched.placement)
        got = {sid: r for r in range(pp) for sid in sched.stages_of_rank(r, pp, v)}
        assert got == want, sched.name


@pytest.mark.parametrize("pp, m", [(2, 4), (4, 8), (4, 12)])
def test_every_rank_runs_each_microbatch_of_its_stages_once(pp, m):
    for sched in SCHEDULES.values():
        v = sched.default_virtual_stages
        orders = sched.action_order(pp, v, m)
        assert set(orders) == set(range(pp))
        for rank, actions in orders.items():
            stages = sched.stages_of_rank(rank, pp, v)
            kinds = Counter((a.kind, a.stage, a.microbatch) for a in actions)
            assert all(a.stage in stages for a in actions), sched.name
            for sid in stages:
                for mb in range(m):
                    assert kinds[("F", sid, mb)] == 1
                    # a full backward, or the input- and weight-gradient halves
                    full, split = (
                        kinds[("B", sid, mb)],
                        (kinds[("I", sid, mb)], kinds[("W", sid, mb)]),
                    )
                    assert (full, split) in ((1, (0, 0)), (0, (1, 1))), (sched.name, sid, mb)
            # a micro-batch's backward never comes before its forward on the same stage
            pos = {(a.kind, a.stage, a.microbatch): i for i, a in enumerate(actions)}
            for (kind, sid, mb), i in pos.items():
                if kind != "F":
                    assert pos[("F", sid, mb)] < i


def test_1f1b_keeps_pp_minus_rank_microbatches_in_flight():
    """Torch's Schedule1F1B: rank r runs min(m, pp - r) forwards before its first backward."""
    orders = SCHEDULES["1F1B"].action_order(4, 1, 8)
    for rank, actions in orders.items():
        first_b = next(i for i, a in enumerate(actions) if a.kind == "B")
        assert first_b == 4 - rank


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="is not one of 1F1B, Interleaved1F1B, ZBVZeroBubble"):
        get_pipeline_schedule("GPipe")


def test_a_new_schedule_is_one_registry_entry():
    """Registering torch's GPipe makes the layout accept it with no other change."""
    llama = dataclasses.replace(get_model_config("llama3-tiny"), n_layers=4)
    pcfg = ParallelConfig(pp=2, pp_schedule="GPipe")
    with pytest.raises(ConfigError):
        resolve_layout(pcfg, 2, llama, 8, 1, 32)
    gpipe = PipelineSchedule("GPipe", ScheduleGPipe, summary="all forwards, then all backwards")
    register_pipeline_schedule(gpipe)
    try:
        layout = resolve_layout(pcfg, 2, llama, 8, 1, 32)
        assert not gpipe.multi_stage and layout.virtual_stages == 1
        assert layout.stages_of_rank(1) == [1]
        with pytest.raises(ConfigError, match="needs pp_schedule=Interleaved1F1B/ZBVZeroBubble"):
            resolve_layout(dataclasses.replace(pcfg, pp_virtual_stages=2), 2, llama, 8, 1, 32)
        with pytest.raises(ValueError, match="already registered"):
            register_pipeline_schedule(gpipe)
    finally:
        del SCHEDULES["GPipe"]


@pytest.mark.parametrize("pp, m", [(2, 4), (4, 8)])
def test_order_without_the_comm_lowering_is_torchs_order(pp, m):
    """action_order builds each multi-stage class without its send/recv lowering (the costly
    last constructor step): the compute order must be the one the full class computes."""
    from parallel.pipeline_schedules import _PlaceholderStage

    for sched in SCHEDULES.values():
        if not sched.multi_stage:
            continue
        v = sched.default_virtual_stages
        stages = [_PlaceholderStage(s, pp * v, pp, 0) for s in sched.stages_of_rank(0, pp, v)]
        full = sched.torch_class(stages, m)
        assert full.pipeline_order_with_comms  # the full class did lower its table
        want = {
            r: [(a.computation_type.name, a.stage_index, a.microbatch_index) for a in ops if a]
            for r, ops in full.pipeline_order.items()
        }
        kind = {"F": "FORWARD", "B": "FULL_BACKWARD", "I": "BACKWARD_INPUT", "W": "BACKWARD_WEIGHT"}
        got = {
            r: [(kind[a.kind], a.stage, a.microbatch) for a in acts]
            for r, acts in sched._action_order(pp, v, m).items()
        }
        assert got == {r: [w for w in ws if w[0] in kind.values()] for r, ws in want.items()}
