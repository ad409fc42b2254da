"""`pretrain plan --validate`: run one real training step of layouts on this machine (gloo
processes, a tiny model) and compare the planner's estimates with what each rank measured.

Measured per rank, on the second step (the first one initialises FSDP's lazy state and the
pipeline's shape inference):
  * parameter / gradient / optimizer bytes: the local shards (`to_local()`) of the engine's
    parameters, their gradients after backward, and AdamW's state tensors after `step()`;
  * peak activation bytes: the live storages every op creates during the forward-backward,
    without parameter gradients and FSDP's own buffers (`memory.LiveStorage`, the instrument
    the planner's probes measure with on fake tensors);
  * bytes moved by collectives: a TorchDispatchMode that sees every c10d and functional collective
    (FSDP's, DTensor's, the pipeline's sends/receives, the engine's all-reduces) and adds up the
    buffer each one moves, by the mesh axis of its group.

Run as `python -m parallel.planner.validate SPEC.json OUT_DIR` on each rank (torchrun's
environment variables); `launch_validation` starts the ranks and collects the results.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import ProcessGroup
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

from model_zoo.zoo import get_model_config
from parallel.axes import FLAT_MESHES, MESH_AXES
from parallel.config import ParallelConfig
from parallel.engine import build_engine
from parallel.env import (
    destroy_distributed,
    discover_env,
    free_port,
    init_distributed,
    local_rank_env,
)
from parallel.layout import build_mesh, resolve_layout
from parallel.planner.comm import collective_bytes
from parallel.planner.memory import (
    ActivationModel,
    LiveStorage,
    compute_dtype,
    in_flight_peak,
    rank_coords,
    static_memory,
)

ROOT = Path(__file__).resolve().parents[2]

# collective op name -> which argument is the buffer it moves (the full buffer: all-gather's
# output, reduce-scatter's input, all-reduce's tensor, all-to-all's input, a send's or receive's
# tensor)
_C10D_BUFFER = {
    "allreduce_": 0,
    "allgather_into_tensor_coalesced_": 0,
    "_allgather_base_": 0,
    "allgather_": 0,
    "reduce_scatter_tensor_coalesced_": 1,
    "_reduce_scatter_base_": 1,
    "reduce_scatter_": 1,
    "alltoall_base_": 1,
    "alltoall_": 1,
    "send": 0,
    "recv_": 0,
    "broadcast_": 0,
}
_FUNCOL_BUFFER = {
    "all_reduce": "in",
    "all_reduce_": "in",
    "all_gather_into_tensor": "out",
    "all_gather_into_tensor_out": "out",
    "reduce_scatter_tensor": "in",
    "all_to_all_single": "in",
    "broadcast": "in",
}


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    return 0


class CollectiveCounter(TorchDispatchMode):
    """Bytes of every collective this rank issues, by the mesh axis of its process group."""

    def __init__(self, group_axes: dict[str, str]):
        super().__init__()
        self.group_axes = group_axes
        self.bytes: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def _add(self, group_name, n: int, op: str) -> None:
        axis = self.group_axes.get(str(group_name), f"other:{op}")
        self.bytes[axis] = self.bytes.get(axis, 0) + n
        self.calls[axis] = self.calls.get(axis, 0) + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ns, name = func.namespace, func._opname
        out = func(*args, **kwargs)
        if ns == "c10d" and name in _C10D_BUFFER:
            gname = None
            for a in args:
                if isinstance(a, torch.ScriptObject):  # the boxed ProcessGroup c10d ops take
                    try:
                        gname = ProcessGroup.unbox(a).group_name
                    except RuntimeError:  # another boxed class (ReduceOp)
                        continue
                elif isinstance(a, ProcessGroup):
                    gname = a.group_name
            self._add(gname, _nbytes(args[_C10D_BUFFER[name]]), name)
        elif ns in ("_c10d_functional", "_c10d_functional_autograd") and name in _FUNCOL_BUFFER:
            gname = args[-1] if isinstance(args[-1], str) else kwargs.get("group_name")
            buf = args[0] if _FUNCOL_BUFFER[name] == "in" else out
            self._add(gname, _nbytes(buf), name)
        return out


def _group_axes(mesh) -> dict[str, str]:
    """The name of each process group a collective may run on: every mesh axis and flattened
    mesh of the axis table, and the dimensions of the 2-D meshes parallelize makes."""
    axes = {}
    for axis in (*MESH_AXES, *(flat for flat, _ in FLAT_MESHES)):
        axes[mesh[axis].get_group().group_name] = axis
    for pair in (("dp_replicate", "dp_shard_ep"), ("dp_replicate", "dp_shard"), ("ep", "tp")):
        try:
            sub = mesh[pair]
        except (KeyError, RuntimeError, ValueError):
            continue
        for dim, axis in enumerate(pair):
            axes.setdefault(sub.get_group(dim).group_name, axis)
    axes.setdefault(dist.group.WORLD.group_name, "world")
    return axes


_FSDP_DIR = f"{os.sep}fsdp{os.sep}"


def _inside_fsdp() -> bool:
    """Whether the op runs inside FSDP's own code (its all-gather / reduce-scatter buffers and
    the unsharded parameters it copies out), which the planner counts as communication
    buffers, not activations."""
    frame = sys._getframe(2)
    while frame is not None:
        if _FSDP_DIR in frame.f_code.co_filename and "torch" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


class LiveBytes(LiveStorage):
    """The probes' instrument (`memory.LiveStorage`) over a real step, leaving out FSDP's own
    buffers (its unsharded parameters, all-gather and reduce-scatter buffers: what its code
    allocates) and the unsharded gradients it reduces: every storage FSDP's code reads during
    backward (the cast to the reduce dtype, the copy into the reduce-scatter input, the
    accumulation over micro-batches) is a gradient of its unsharded parameters. Under a
    pipeline those accumulate over the step's micro-batches before the one reduce-scatter; the
    planner counts them with FSDP's buffers, not with the activations."""

    def skip(self, func, args) -> bool:
        if not _inside_fsdp():
            return False
        if torch._C._current_graph_task_id() != -1:  # inside autograd's backward
            for t in torch.utils._pytree.tree_leaves(args):
                if isinstance(t, torch.Tensor):
                    event = self.event_of(t)
                    if event is not None:
                        self.ignored_events.add(event)
        return True


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def _model(run: dict):
    cfg = get_model_config(run["model"])
    return replace(cfg, n_layers=run["n_layers"]) if run.get("n_layers") else cfg


def _one_layout(run: dict, world: int, rank: int) -> dict:
    cfg = _model(run)
    pcfg = ParallelConfig(**run["parallel"])
    gbs, mbs, seq = run["global_batch_size"], run["micro_batch_size"], run["seq_len"]
    layout = resolve_layout(pcfg, world, cfg, gbs, mbs, seq)
    mesh = build_mesh(layout, "cpu")
    engine = build_engine(cfg, pcfg, layout, mesh, "cpu", seed=0)
    opt = torch.optim.AdamW(engine.parameters(), lr=1e-4, foreach=False)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, gbs, seq + 1), generator=gen)
    rows = slice(
        engine.dp_rank * layout.local_batch_size, (engine.dp_rank + 1) * layout.local_batch_size
    )
    result = {}
    for step in range(2):
        inputs, labels = tokens[step, rows, :-1], tokens[step, rows, 1:]
        counter = CollectiveCounter(_group_axes(mesh))
        live = LiveBytes()
        if step == 1:
            # collect reference cycles now and not during the step: when the collector runs
            # would otherwise decide when some autograd buffers die (the peak varied by 10-30%)
            gc.collect()
            gc.disable()
            try:
                with counter, live:
                    engine.forward_backward(inputs, labels)
            finally:
                gc.enable()
            grads = [p.grad for p in engine.parameters() if p.grad is not None]
            grads = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
            result["activations"] = live.peak(grads)
            result["fwd_bwd_collectives"] = dict(counter.bytes)
            result["grads"] = _local_bytes(grads)
            result["grad_detail"] = {
                n: [
                    list(p.to_local().shape) if isinstance(p, DTensor) else list(p.shape),
                    list((p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad).shape),
                ]
                for n, p in engine.named_parameters()
                if p.grad is not None
            }
        else:
            engine.forward_backward(inputs, labels)
        opt.step()
        engine.zero_grad()
    result["params"] = _local_bytes(engine.parameters())
    result["optimizer"] = _local_bytes(
        t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor)
    )
    result["rank"] = rank
    return result


def worker_main(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    env = discover_env()
    init_distributed(env, "cpu", timeout_s=300)
    try:
        results = [_one_layout(run, env.world_size, env.rank) for run in spec["runs"]]
        (Path(out_dir) / f"rank{env.rank}.json").write_text(json.dumps(results))
    finally:
        destroy_distributed()


def launch_validation(world: int, runs: list[dict], out_dir: Path, timeout: float = 600):
    """Run `runs` (all of world size `world`) in one launch of `world` gloo processes; returns
    results[run][rank]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = out_dir / "spec.json"
    spec.write_text(json.dumps({"runs": runs}))
    port = free_port()
    procs = []
    for rank in range(world):
        env = local_rank_env(rank, world, port)
        log = open(out_dir / f"rank{rank}.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "parallel.planner.validate", str(spec), str(out_dir)],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs):
        if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    if any(codes):
        logs = "\n".join(
            (out_dir / f"rank{r}.log").read_text()[-2000:] for r, c in enumerate(codes) if c
        )
        raise RuntimeError(f"validation ranks exited with {codes}:\n{logs}")
    per_rank = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]
    return [[per_rank[r][i] for r in range(world)] for i in range(len(runs))]


def estimate(cfg, layout, rank: int) -> dict:
    """The planner's figures for one rank, in the units `_one_layout` measures."""
    st = static_memory(cfg, layout, rank)
    tokens = layout.seq_len // layout.cp  # a cp rank's share of each sequence
    acts = ActivationModel(cfg, layout.tp, tokens, compute_dtype(layout.precision))
    stage_acts = {s: acts.stage(layout, s) for s in range(layout.n_stages)}
    pp_rank = rank_coords(layout, rank)["pp"]
    return {
        "params": st.params,
        "grads": st.grads,
        "optimizer": st.optimizer,
        "activations": in_flight_peak(layout, pp_rank, stage_acts),
        "collectives": sum(collective_bytes(cfg, layout, rank).values()),
    }


TOLERANCE = {
    "params": 0.0,
    "grads": 0.0,
    "optimizer": 0.0,
    "activations": 0.15,
    "collectives": 0.05,
}


def compare(run: dict, measured: list[dict]) -> list[dict]:
    """Per rank: estimate, measurement, relative error and whether it is within TOLERANCE."""
    cfg = _model(run)
    layout = resolve_layout(
        ParallelConfig(**run["parallel"]),
        len(measured),
        cfg,
        run["global_batch_size"],
        run["micro_batch_size"],
        run["seq_len"],
    )
    rows = []
    for m in measured:
        est = estimate(cfg, layout, m["rank"])
        got = dict(m, collectives=sum(m["fwd_bwd_collectives"].values()))
        for key, tol in TOLERANCE.items():
            err = abs(est[key] - got[key]) / max(got[key], 1)
            rows.append(
                dict(
                    rank=m["rank"],
                    what=key,
                    estimate=est[key],
                    measured=got[key],
                    rel_error=err,
                    ok=err <= tol,
                )
            )
    return rows


if __name__ == "__main__":
    worker_main(sys.argv[1], sys.argv[2])
