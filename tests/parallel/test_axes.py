"""The axis table (parallel/axes.py) against what reads it: the config and layout fields, the mesh
build_mesh makes, and the planner's rank coordinates."""

from __future__ import annotations

import dataclasses
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
