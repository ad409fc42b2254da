"""Adding a parallel axis is its row in the axis table plus its own module: the claim of
docs/contributing.md ("Adding a parallel axis"), checked by doing it.

A copy of the source tree gets one new axis, `mirror` (its ranks hold the same weights and read the
same batch: redundant replicas, the simplest axis there is), by editing parallel/axes.py and adding
parallel/mirror.py, and nothing else. In that copy the axis is then a config field Hydra
overrides, a factor of the world size that the layout checks and their messages name, a mesh
dimension, a term of the planner's search, a column of `pretrain plan`'s table, and a layout
that trains two real ranks to the one-process run's losses, gradient norms and weights (float64,
the parity tolerance)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("configcore", "model_zoo", "parallel", "pretrain", "data_pipeline", "configs")

ROW = """    Axis(
        "mirror",
        mesh_position=6,
        column="mirror",
        params="replicated: every mirror rank holds the whole of its other axes' shards",
        activations="the same batch as the other mirror ranks",
        module="parallel/mirror.py",
        named_at_one=False,
        apply="parallel.mirror:apply_mirror",
        plan_sizes=lambda space, chosen: [m for m in (1, 2) if space.left(chosen) % m == 0],
    ),
"""

MODULE = '''"""Mirror parallel: redundant replicas. Each rank of a mirror group starts from the group's
first rank's weights and, reading the same batch, stays equal to it without communicating."""

import torch.distributed as dist
from torch.distributed.tensor import DTensor


def apply_mirror(model, cfg, layout, mesh) -> None:
    if layout.mirror == 1:
        return
    group = mesh["mirror"].get_group()
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p.data
        dist.broadcast(local, group=group, group_src=0)
'''

CHECK = """
import contextlib, dataclasses, io, json, sys
from pathlib import Path

from configcore import ConfigError
from model_zoo.zoo import get_model_config
from parallel.config import ParallelConfig
from parallel.layout import build_mesh, resolve_layout
from parallel.planner.memory import fake_world
from parallel.planner.search import candidates
from pretrain.config import compose_config
from pretrain.parity.harness import FP64_TOL, launch, max_rel_param_diff, reference_run, rel
import pretrain.plan

out = {}
cfg = get_model_config("llama3-tiny")
run = compose_config(["model=llama3-tiny", "parallel.mirror=2"])
out["hydra"] = run.parallel.mirror
layout = resolve_layout(ParallelConfig(mirror=2, dp_shard=2), 4, cfg, 8, 1, 64)
out["describe"] = layout.describe()
try:
    resolve_layout(ParallelConfig(mirror=2, dp_shard=3), 4, cfg, 8, 1, 64)
except ConfigError as err:
    out["refusal"] = str(err)
with fake_world(4):
    out["mesh"] = list(build_mesh(layout, "cpu").mesh_dim_names)
out["planned"] = sorted(
    {lay.mirror for _, lay in candidates(cfg, 4, 4, 8, 64, ("bf16",))}
)
import parallel.mirror  # parallelize_part calls it (the planner's memory model runs it)
applied, apply_mirror = [], parallel.mirror.apply_mirror
parallel.mirror.apply_mirror = lambda model, cfg, lay, mesh: (
    applied.append(lay.mirror), apply_mirror(model, cfg, lay, mesh))
table = io.StringIO()
with contextlib.redirect_stdout(table):
    pretrain.plan.main(
        ["model=llama3-tiny", "trainer.seq_len=64", "trainer.global_batch_size=8",
         "--nodes", "1", "--gpus-per-node", "2", "--gpu", "H100", "--top", "1000"]
    )
out["table"] = table.getvalue()
out["applied"] = sorted(set(applied))
steps, gbs, seq = 3, 4, 32
spec = {"model": "llama3-tiny", "model_overrides": {"n_layers": 2}, "global_batch": gbs,
        "seq_len": seq, "micro_batch": 2, "steps": steps, "seed": 0,
        "runs": [{"name": "mirror2", "parallel": {"mirror": 2}}]}
result = launch(2, spec, Path(sys.argv[1]))[0]
ref = reference_run(dataclasses.replace(cfg, n_layers=2), steps, gbs, seq, micro_batch=2)
out["layout"] = result["layout"]
out["loss"] = max(rel(a, b) for a, b in zip(result["losses"], ref["losses"]))
out["grad_norm"] = max(rel(a, b) for a, b in zip(result["grad_norms"], ref["grad_norms"]))
out["params"] = max_rel_param_diff(result["params"], ref["params"])
out["tol"] = FP64_TOL
print("RESULT " + json.dumps(out))
"""


def _tree_with_mirror_axis(dest: Path) -> None:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    axes = dest / "parallel" / "axes.py"
    text = axes.read_text()
    end = "\n)\nAXIS = {a.name: a for a in AXES}"
    assert text.count(end) == 1
    text = text.replace(end, "\n" + ROW.rstrip("\n") + end)
    for order in ("PLAN_ORDER", "SUGGEST_ORDER"):  # where the planner and a refusal try it
        start = text.index(f"{order} = (")
        close = text.index(")", start)
        text = text[:close] + ', "mirror"' + text[close:]
    axes.write_text(text)
    (dest / "parallel" / "mirror.py").write_text(MODULE)


def test_a_new_axis_is_its_row_and_its_module(tmp_path):
    tree = tmp_path / "tree"
    _tree_with_mirror_axis(tree)
    changed = sorted(
        str(p.relative_to(tree))
        for p in tree.rglob("*.py")
        if not (ROOT / p.relative_to(tree)).exists()
        or (ROOT / p.relative_to(tree)).read_bytes() != p.read_bytes()
    )
    assert changed == ["parallel/axes.py", "parallel/mirror.py"]

    # the copy's packages come first: run from its root, as the parity workers are
    env = {**os.environ, "PRETRAIN_CONFIG_DIR": str(tree / "configs")}  # threads: the suite's
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path / "run")],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-5000:]
    got = json.loads(lines[0][len("RESULT ") :])
    assert got["hydra"] == 2
    assert "cp=1 tp=1 mirror=2 (world 4)" in got["describe"]
    assert "mirror" in got["refusal"], got["refusal"]
    assert got["mesh"][-1] == "mirror"
    assert got["planned"] == [1, 2]
    header = next(x for x in got["table"].splitlines() if x.startswith("  #"))
    assert header.split()[1:3] == ["mirror", "tp"], header
    rows = [x.split() for x in got["table"].splitlines() if x[:3].strip().isdigit()]
    assert {r[1] for r in rows} == {"1", "2"}, got["table"]
    assert got["applied"] == [1, 2]  # parallelize_part ran the row's hook on every layout
    assert "mirror=2" in got["layout"]
    for what in ("loss", "grad_norm", "params"):
        assert got[what] < got["tol"], (what, got)
