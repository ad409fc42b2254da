"""The axis table (parallel/axes.py) against what reads it: the config and layout fields, the mesh
build_mesh makes, and the planner's rank coordinates."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest

from model_zoo.zoo import get_model_config
from parallel.axes import AXES, FLAT_MESHES, INNER_FIRST, MESH_AXES
from parallel.config import ParallelConfig
from parallel.layout import Layout, build_mesh, resolve_layout
from parallel.planner.memory import axis_sizes, fake_world, rank_coords


def test_every_axis_is_a_config_and_layout_field_at_its_own_mesh_position():
    config_fields = {f.name for f in dataclasses.fields(ParallelConfig)}
    layout_fields = {f.name for f in dataclasses.fields(Layout)}
    for axis in AXES:
        assert axis.name in config_fields and axis.name in layout_fields, axis.name
    assert sorted(a.mesh_position for a in AXES) == list(range(len(AXES)))
    assert MESH_AXES == ("pp", "dp_replicate", "dp_shard", "ep", "cp", "tp")
    assert INNER_FIRST == tuple(reversed(MESH_AXES))


def test_flattened_meshes_are_the_ones_the_engine_and_fsdp_ask_for():
    # the engine's data-parallel rank and token sums, and parallelize's FSDP meshes, by name
    assert dict(FLAT_MESHES) == {
        "dp": ("dp_replicate", "dp_shard", "ep"),
        "dp_shard_ep": ("dp_shard", "ep"),
        "dp_cp": ("dp_replicate", "dp_shard", "ep", "cp"),
        "dp_shard_ep_cp": ("dp_shard", "ep", "cp"),
    }


@pytest.mark.parametrize(
    "model, pcfg",
    [
        ("deepseek-v2-lite-tiny", ParallelConfig(pp=2, dp_replicate=2, ep=2, cp=2, tp=2)),
        ("llama3-tiny", ParallelConfig(pp=2, dp_replicate=2, dp_shard=2, cp=2, tp=2)),
    ],
)
def test_mesh_and_planner_coordinates_follow_the_table(model, pcfg):
    cfg = get_model_config(model)
    world = 32
    layout = resolve_layout(pcfg, world, cfg, 8, 1, 64)
    sizes = axis_sizes(layout)
    with fake_world(world):
        mesh = build_mesh(layout, "cpu")
        assert mesh.mesh_dim_names == MESH_AXES
        assert tuple(mesh.mesh.shape) == tuple(getattr(layout, a) for a in MESH_AXES)
        grid = mesh.mesh
        for rank in range(world):
            where = (grid == rank).nonzero()[0].tolist()
            coords = rank_coords(layout, rank)
            assert [coords[a] for a in MESH_AXES] == where, rank
        for flat, axes in FLAT_MESHES:
            group = mesh[flat].mesh.tolist()  # rank 0's group, in the flattened mesh's order
            assert len(group) == sizes[flat] == math.prod(getattr(layout, a) for a in axes)
            for position, rank in enumerate(group):
                assert rank_coords(layout, rank)[flat] == position, (flat, rank)


def _one_axis_on(name: str):
    """(model config, layout) with `name` at size 2 and every other axis at 1 (HSDP for
    dp_replicate: it replicates over 2 shards of 2), bf16."""
    cfg = get_model_config("deepseek-v2-lite-tiny" if name == "ep" else "llama3-tiny")
    sizes = {"dp_shard": 1, name: 2}
    if name == "dp_replicate":
        sizes["dp_shard"] = 2
    world = math.prod(sizes.values())
    return cfg, resolve_layout(ParallelConfig(precision="bf16", **sizes), world, cfg, 8, 1, 64)


# what each axis's hooks report: collective_bytes keys, StepTime.comm keys (FSDP, over dp_shard x
# ep x cp with HSDP's all-reduce over dp_replicate, is dp_shard's row: one group, one exposure)
BYTES_KEYS = {"dp_shard": ("fsdp",), "dp_replicate": ("dp_replicate",)}
SECONDS_KEY = {"dp_shard": "fsdp", "dp_replicate": "fsdp"}


@pytest.mark.parametrize("name", [a.name for a in AXES])
def test_each_axis_cost_comes_from_its_row(name, monkeypatch):
    """One axis on: its row's hooks report its bytes and seconds and no other axis's term moves;
    and the planner reads them from the table (a row's hooks replaced, the planner's figures are
    the replacement's)."""
    import parallel.planner.comm as comm
    import parallel.planner.cost as cost
    from parallel.planner.hardware import GPUS

    cfg, layout = _one_axis_on(name)
    got = comm.collective_bytes(cfg, layout, 0)
    own = BYTES_KEYS.get(name, (name,))
    assert all(got[k] > 0 for k in own), (name, got)
    moved = {k for k, v in got.items() if v and k not in (*own, "fsdp", "other")}
    assert not moved, (name, moved)  # fsdp: ep and cp shard dense parameters too
    t = cost.step_time(cfg, layout, GPUS["H100"], 8, 0.5)
    key = SECONDS_KEY.get(name, name)
    if key != "fsdp":  # FSDP's may hide under compute entirely
        assert t.comm[key] > 0, (name, t.comm)
    moved = {k for k, v in t.comm.items() if v and k != key}
    assert moved <= {"fsdp"}, (name, moved)

    row = "dp_shard" if name == "dp_replicate" else name
    patched = tuple(
        dataclasses.replace(
            a, comm_bytes=lambda v: {"tp": 12345}, step_seconds=lambda c: {"tp": 6.5}
        )
        if a.name == row
        else a
        for a in AXES
    )
    monkeypatch.setattr(comm, "AXES", patched)
    monkeypatch.setattr(cost, "AXES", patched)
    assert comm.collective_bytes(cfg, layout, 0)["tp"] == 12345
    assert cost.step_time(cfg, layout, GPUS["H100"], 8, 0.5).comm["tp"] == 6.5


def test_axis_hooks_are_silent_in_one_process():
    from parallel.planner.comm import collective_bytes
    from parallel.planner.cost import step_time
    from parallel.planner.hardware import GPUS

    cfg = get_model_config("llama3-tiny")
    layout = resolve_layout(ParallelConfig(precision="bf16"), 1, cfg, 8, 1, 64)
    assert collective_bytes(cfg, layout, 0) == {
        "tp": 0, "pp": 0, "fsdp": 0, "dp_replicate": 0, "ep": 0, "cp": 0, "other": 16,
    }  # fmt: skip
    t = step_time(cfg, layout, GPUS["H100"], 8, 0.5)
    assert t.total == t.compute and t.dominant == "compute"


def test_every_sized_axis_is_searched_suggested_and_applied_where_its_row_says():
    from parallel.axes import PLAN_ORDER, REMAINDER_AXIS, SIZED_AXES, SUGGEST_ORDER

    assert sorted(PLAN_ORDER) == sorted(SIZED_AXES) == sorted(SUGGEST_ORDER)
    assert REMAINDER_AXIS not in PLAN_ORDER
    for axis in AXES:
        assert (axis.plan_sizes is None) == axis.remainder, axis.name
        if axis.apply:
            fn = axis.apply_function()  # the named function exists and takes the hook's four
            assert list(inspect.signature(fn).parameters)[:4] == ["model", "cfg", "layout", "mesh"]
        for option in axis.options:
            assert option.default in option.choices(), option.name
