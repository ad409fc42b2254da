"""Memory per GPU of a layout, from the real model and the real parallelize functions.

Parameters, gradients, optimizer state: the model is built on the meta device, pruned to one
layer of each kind (dense / MoE: every layer of a kind has the same parameter names and shapes),
and parallelized with `parallel.parallelize.parallelize_part` on a fake process group (torch's
in-process "fake" backend: no communication, any world size). Each parameter's DTensor placements
say which dimension each mesh axis splits; the planner replays them, with torch.chunk's rounding,
for the layout's real axis sizes and any rank's mesh coordinates: tensor/expert-parallel splits
first, then FSDP2's dim-0 shard of the local tensor. That is exact per rank (FSDP's padding to
equal shards is not counted: it is what `DTensor.to_local()` holds).

  parameters: fp32 (the master weights, also under bf16/fp8: FSDP2's mixed precision casts copies)
  gradients:  fp32, the same shards
  optimizer:  AdamW's exp_avg and exp_avg_sq (fp32, same shards) + one fp32 step scalar per tensor

Activations are measured, not modelled: probe stages (the real Transformer pruned the way the
engine prunes a pipeline stage, tensor-parallelized on a fake group, activation checkpointing
applied by `parallelize.apply_ac`) run one forward and backward of a micro-batch under
FakeTensorMode, watched by `LiveStorage` (the instrument the validation measures real runs with).
One probe per (layer kind, checkpointing) gives what a layer keeps for backward and its transient;
one probe with the embeddings, a layer and the output layer + loss gives a stage's fixed parts;
`ActivationModel` composes any stage from them, and `in_flight_peak` multiplies by the
micro-batches the schedule keeps in flight. Under context parallelism the probes run at a cp
rank's share of the sequence.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel
from torch.distributed.tensor.placement_types import Shard, _StridedShard
from torch.multiprocessing.reductions import StorageWeakRef
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass

from model_zoo.config import ModelConfig
from model_zoo.model import build_model
from model_zoo.moe import moe_layers
from parallel import parallelize
from parallel.axes import AXES, FLAT_MESHES, FSDP_MESH_DIMS, INNER_FIRST, MESH_AXES
from parallel.config import FULL_PRECISIONS, ParallelConfig, param_dtype
from parallel.engine import prune_to_stage
from parallel.layout import Layout, build_mesh, resolve_layout
from parallel.pipeline_schedules import SCHEDULES

# the mesh dimensions a parameter is FSDP-sharded or replicated over (any other split is tp/ep)
FSDP_AXES = FSDP_MESH_DIMS
F32 = 4
COMPUTE_BYTES = {"fp32": 4, "bf16": 2, "fp8_tensorwise": 2, "fp8_rowwise": 2, "fp64": 8}


@contextlib.contextmanager
def fake_world(world_size: int):
    """An in-process fake default process group of `world_size` ranks (this process is rank 0)."""
    if dist.is_initialized():
        raise RuntimeError("the planner needs its own (fake) process group; one already exists")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


_CFG_KEYS: dict[int, tuple[ModelConfig, str]] = {}


def config_key(cfg: ModelConfig) -> str:
    """repr(cfg) (ModelConfig is a mutable, unhashable dataclass), computed once per config
    object: the planner looks it up for every one of thousands of layouts. The config is kept
    referenced so that its id is not reused by another object."""
    entry = _CFG_KEYS.get(id(cfg))
    if entry is None or entry[0] is not cfg:
        entry = _CFG_KEYS[id(cfg)] = (cfg, repr(cfg))
    return entry[1]


def layer_kinds(cfg: ModelConfig) -> list[str]:
    return ["moe" if cfg.is_moe_layer(i) else "dense" for i in range(cfg.n_layers)]


def representative_layers(cfg: ModelConfig) -> dict[str, int]:
    """kind -> the first layer id of that kind."""
    reps: dict[str, int] = {}
    for i, kind in enumerate(layer_kinds(cfg)):
        reps.setdefault(kind, i)
    return reps


def _shallow(cfg: ModelConfig, layer_ids) -> ModelConfig:
    """The config with only as many layers as the highest id kept needs: building the layers
    after it on the meta device would only be pruned again (names and kinds are unchanged)."""
    deepest = max([*layer_ids, *representative_layers(cfg).values()])
    return replace(cfg, n_layers=deepest + 1)


@dataclass(frozen=True)
class ParamRule:
    """One parameter: its global shape and, in application order, (mesh axis, tensor dim) of
    every split (tp/ep first, then the FSDP axis on dim 0)."""

    shape: tuple[int, ...]
    splits: tuple[tuple[str, int], ...]

    def local_numel(self, sizes: dict[str, int], coords: dict[str, int]) -> int:
        local = list(self.shape)
        for axis, dim in self.splits:
            n, i = sizes[axis], coords[axis]
            chunk = math.ceil(local[dim] / n) if local[dim] else 0
            local[dim] = max(0, min(chunk, local[dim] - i * chunk))
        return math.prod(local)

    def tp_local_numel(self, sizes: dict[str, int]) -> int:
        """After the tensor/expert-parallel splits only: what FSDP all-gathers for compute."""
        zero = {a: 0 for a in sizes}
        kept = ParamRule(self.shape, tuple(s for s in self.splits if s[0] not in FSDP_AXES))
        return kept.local_numel(sizes, zero)


def _canonical(cfg: ModelConfig, layout_key: tuple) -> ParallelConfig:
    """The smallest layout whose placements name the same axes and dims as the key's: tp as
    the layout's, every other axis that is on at 2, FSDP's mixed precision where it runs."""
    tp, fsdp, on = layout_key
    return ParallelConfig(
        **{a.name: 2 if a.name in on else 1 for a in AXES if a.name not in ("tp", "pp")},
        tp=tp,
        precision="bf16" if fsdp else "fp32",
        # the style changes attention's kernel only, not a placement; ring needs no DeepSpeed
        cp_style="alltoall" if cfg.sliding_window else "ring",
    )


_RULES: dict[tuple, dict] = {}
_RULE_REPS: dict[int, dict[str, int]] = {}  # id(rules) -> kind -> representative layer
_PROBES: dict[tuple, tuple] = {}


def _param_rules_cached(cfg: ModelConfig, layout_key: tuple) -> dict[str, ParamRule]:
    key = (config_key(cfg), layout_key)
    if key not in _RULES:
        _RULES[key] = _extract_rules(cfg, layout_key)
        _RULE_REPS[id(_RULES[key])] = representative_layers(cfg)
    return _RULES[key]


def _extract_rules(cfg: ModelConfig, layout_key: tuple) -> dict[str, ParamRule]:
    pcfg = _canonical(cfg, layout_key)
    world = math.prod(getattr(pcfg, a.name) for a in AXES)
    seq = math.lcm(2 * pcfg.cp * pcfg.tp, 8)  # cp's balanced chunks, then sequence parallel
    dp = math.prod(getattr(pcfg, a.name) for a in AXES if a.batch)
    layout = resolve_layout(pcfg, world, cfg, dp, 1, seq)
    with fake_world(world):
        mesh = build_mesh(layout, "cpu")
        keep = sorted(representative_layers(cfg).values())
        model = build_model(_shallow(cfg, keep), device="meta")
        prune_to_stage(model, keep, True, True)
        parallelize.parallelize_part(model, cfg, layout, mesh)
        rules = {}
        for name, p in model.named_parameters():
            splits: list[tuple[str, int]] = []
            if isinstance(p, DTensor):
                names = p.device_mesh.mesh_dim_names
                pairs = [
                    (axis, pl.dim)
                    for axis, pl in zip(names, p.placements)
                    if isinstance(pl, (Shard, _StridedShard))  # FSDP over TP: strided
                ]
                splits = [s for s in pairs if s[0] not in FSDP_AXES]
                splits += [s for s in pairs if s[0] in FSDP_AXES]
            rules[name] = ParamRule(tuple(p.shape), tuple(splits))
    return rules


def param_rules(cfg: ModelConfig, layout: Layout) -> dict[str, ParamRule]:
    """Parameter name (with the representative layer id) -> its sharding rule under `layout`."""
    fsdp = layout.dp > 1 or layout.cp > 1 or layout.precision not in FULL_PRECISIONS
    # which axes split which dims (the sizes are applied per layout); tp as it is: the
    # replicated-KV-heads rule depends on tp vs n_kv_heads
    on = tuple(a.name for a in AXES if a.name not in ("tp", "pp") and getattr(layout, a.name) > 1)
    return _param_rules_cached(cfg, (layout.tp, fsdp, on))


def axis_sizes(layout: Layout) -> dict[str, int]:
    """Sizes of the mesh axes and of the flattened meshes (parallel/axes.py)."""
    sizes = {name: getattr(layout, name) for name in MESH_AXES}
    for flat, axes in FLAT_MESHES:
        sizes[flat] = math.prod(sizes[a] for a in axes)
    return sizes


def rank_coords(layout: Layout, rank: int) -> dict[str, int]:
    """Mesh coordinates of a global rank (over MESH_AXES, row-major, the last innermost) and on
    the flattened meshes (row-major over their axes)."""
    coords, rest = {}, rank
    for axis in INNER_FIRST:
        size = getattr(layout, axis)
        coords[axis] = rest % size
        rest //= size
    for flat, axes in FLAT_MESHES:
        coords[flat] = 0
        for axis in axes:
            coords[flat] = coords[flat] * getattr(layout, axis) + coords[axis]
    return coords


def stage_param_names(
    cfg: ModelConfig, layout: Layout, stage: int, rules: dict
) -> list[tuple[str, str]]:
    """(real name, representative name) of every parameter of pipeline stage `stage`."""
    reps = representative_layers(cfg)
    kinds = layer_kinds(cfg)
    first, last = stage == 0, stage == layout.n_stages - 1
    out = []
    for name in rules:
        if name.startswith("layers."):
            rep_id = int(name.split(".")[1])
            kind = next(k for k, i in reps.items() if i == rep_id)
            tail = name.split(".", 2)[2]
            for lid in layout.stage_layers[stage]:
                if kinds[lid] == kind:
                    out.append((f"layers.{lid}.{tail}", name))
        elif name.startswith("tok_embeddings.") and first:
            out.append((name, name))
        elif name.startswith(("norm.", "output.")) and last:
            out.append((name, name))
    return out


_TOTALS: dict[tuple, dict] = {}


def _group_totals(rules: dict[str, ParamRule], sizes: dict, coords: dict) -> dict[str, tuple]:
    """(local numel, tensors, tp-local numel) of one layer of each kind, of the embeddings and
    of the head (final norm + output layer) on a rank with these mesh coordinates: every layer
    of a kind has the same parameters, so a stage's bytes are sums of these (cached: thousands
    of layouts share a sharding)."""
    key = (id(rules), tuple(sizes.items()), tuple((a, c) for a, c in coords.items() if a != "pp"))
    if key not in _TOTALS:
        kind_of = {f"layers.{i}.": k for k, i in _reps_of(rules).items()}
        out: dict[str, list[int]] = {}
        for name, rule in rules.items():
            if name.startswith("layers."):
                group = kind_of[".".join(name.split(".")[:2]) + "."]
            elif name.startswith("tok_embeddings."):
                group = "embeddings"
            else:
                group = "head"
            t = out.setdefault(group, [0, 0, 0])
            t[0] += rule.local_numel(sizes, coords)
            t[1] += 1
            t[2] += rule.tp_local_numel(sizes)
        _TOTALS[key] = {g: tuple(v) for g, v in out.items()}
    return _TOTALS[key]


def _reps_of(rules: dict[str, ParamRule]) -> dict[str, int]:
    return _RULE_REPS[id(rules)]


@dataclass
class StaticMemory:
    params: int
    grads: int
    optimizer: int
    comm_buffers: int  # FSDP's unsharded parameters / gradient buffers for compute
    n_tensors: int


def static_memory(cfg: ModelConfig, layout: Layout, rank: int) -> StaticMemory:
    """Exact parameter, gradient and AdamW bytes of one rank, plus FSDP's unsharded buffers."""
    rules = param_rules(cfg, layout)
    sizes, coords = axis_sizes(layout), rank_coords(layout, rank)
    totals = _group_totals(rules, sizes, coords)
    kinds = layer_kinds(cfg)
    numel = n_tensors = 0
    unsharded: dict[str, int] = {}  # block key -> tp-local numel (FSDP all-gathers a block)
    for sid in layout.stages_of_rank(coords["pp"]):
        first, last = sid == 0, sid == layout.n_stages - 1
        parts = [(f"layers.{lid}", kinds[lid]) for lid in layout.stage_layers[sid]]
        parts += [(f"root{sid}", g) for g, on in (("embeddings", first), ("head", last)) if on]
        for block, group in parts:
            n, count, tp_local = totals.get(group, (0, 0, 0))
            numel += n
            n_tensors += count
            unsharded[block] = unsharded.get(block, 0) + tp_local
    fsdp = layout.dp > 1 or layout.cp > 1 or layout.precision not in FULL_PRECISIONS
    buffers = 0
    if fsdp and unsharded:
        cbytes = COMPUTE_BYTES[layout.precision]
        biggest = max(unsharded.values())
        if layout.pp > 1:
            # reshard_after_forward=False: the stage stays unsharded all step, and its unsharded
            # gradients accumulate over the micro-batches until the one reduce-scatter (measured
            # in the validation: every block's compute-dtype gradients live to the step's end)
            buffers = 2 * sum(unsharded.values()) * cbytes + biggest * F32
        else:  # the block being computed and the one prefetched, one block's gradients
            buffers = 2 * biggest * cbytes + biggest * (cbytes + F32)
    return StaticMemory(
        params=numel * F32,
        grads=numel * F32,
        optimizer=2 * numel * F32 + n_tensors * F32,
        comm_buffers=buffers,
        n_tensors=n_tensors,
    )


# ------------------------------------------------------------------------------------------------
# Activations
# ------------------------------------------------------------------------------------------------
class LiveStorage(TorchDispatchMode):
    """Every storage an op creates while active, with when it was created and freed (an op
    counter), so that the bytes live at any point, and the peak without storages that turned
    out to be parameter gradients, can be taken afterwards. The one instrument of the probes
    (fake tensors) and of the validation's real runs (`validate.LiveBytes` adds FSDP's buffers
    to what it leaves out), so estimate and measurement count the same things.

    Storages are keyed by the C++ storage itself (`_cdata`) and watched through StorageWeakRef
    (a Python storage wrapper dies at once; data pointers are all 0 under FakeTensorMode and
    get reused in real runs), checked after every op as torch's MemTracker does. Written here
    because MemTracker refuses modules that run more than once in a tracked region (gradient
    accumulation, pipeline schedules) and, on fake DTensors, reports peaks 1.5-2.5x what the
    same ops allocate on real tensors (the tp > 1 over-count this replaced). Views (an output
    sharing an input's storage) allocate nothing and are not counted."""

    def __init__(self):
        super().__init__()
        self.clock = 0
        self.events: list[list] = []  # [nbytes, created, freed or None]
        self._live: dict[int, tuple[int, StorageWeakRef]] = {}  # storage key -> (event, ref)
        self.ignored_events: set[int] = set()

    @staticmethod
    def plain_tensors(t: torch.Tensor) -> list[torch.Tensor]:
        """The tensors that own storage behind `t`: a wrapper subclass (DTensor's local shard,
        the AsyncCollectiveTensor a functional collective returns) by its inner tensors, whose
        ops run below this mode and whose storages are the real ones."""
        if is_traceable_wrapper_subclass(t):
            attrs, _ = t.__tensor_flatten__()
            inner = [getattr(t, a) for a in attrs]
            return [
                x
                for i in inner
                if isinstance(i, torch.Tensor)
                for x in LiveStorage.plain_tensors(i)
            ]
        return [t]

    def event_of(self, t: torch.Tensor) -> int | None:
        for x in self.plain_tensors(t):
            entry = self._live.get(x.untyped_storage()._cdata)
            if entry is not None:
                return entry[0]
        return None

    def _expire(self) -> None:
        for key, (event, ref) in list(self._live.items()):
            if ref.expired():
                self.events[event][2] = self.clock
                del self._live[key]

    def skip(self, func, args) -> bool:
        """Whether the outputs of this op are left out (a subclass hook)."""
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.clock += 1
        self._expire()
        if self.skip(func, args):
            return out
        inputs = {
            x.untyped_storage()._cdata
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
            for x in self.plain_tensors(t)
        }
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            for x in self.plain_tensors(t):
                st = x.untyped_storage()
                key = st._cdata
                if key in self._live or key in inputs or st.nbytes() == 0:
                    continue
                self._live[key] = (len(self.events), StorageWeakRef(st))
                self.events.append([st.nbytes(), self.clock, None])
        return out

    def live_bytes(self) -> int:
        """Bytes of the counted storages alive now."""
        self._expire()
        return sum(
            self.events[e][0] for e, _ in self._live.values() if e not in self.ignored_events
        )

    def peak(self, gradients=()) -> int:
        """Peak live bytes, without the storages of `gradients` (the parameters' .grad after
        backward: matched among the storages alive now, so a freed activation whose memory a
        gradient reused is still counted) and the ignored events."""
        self._expire()
        left_out = set(self.ignored_events)
        for g in gradients:
            event = self.event_of(g)
            if event is not None:
                left_out.add(event)
        deltas: dict[int, int] = {}
        for event, (n, start, end) in enumerate(self.events):
            if event in left_out:
                continue
            deltas[start] = deltas.get(start, 0) + n
            if end is not None:
                deltas[end] = deltas.get(end, 0) - n
        live = best = 0
        for t in sorted(deltas):
            live += deltas[t]
            best = max(best, live)
        return best


def probe(
    cfg: ModelConfig,
    layer_ids: tuple[int, ...],
    first: bool,
    last: bool,
    tp: int,
    mbs: int,
    seq: int,
    checkpointed: bool,
    dtype: torch.dtype,
    split: bool = False,
) -> tuple[int, ...]:
    """One micro-batch through a stage holding `layer_ids`, measured on fake tensors (cached).

    split=False, forward + full backward: (bytes live when the first layer starts, bytes kept
    after the forward and loss, peak bytes, bytes of the stage's output tensor).
    split=True, forward + torch's zero-bubble split backward: (bytes kept after the forward,
    bytes held after the input-gradient half, peak bytes)."""
    key = (config_key(cfg), layer_ids, first, last, tp, mbs, seq, checkpointed, dtype, split)
    if key not in _PROBES:
        disk = _disk_key(key)
        cached = _load_disk_cache().get(disk)
        if cached is None:
            args = (cfg, layer_ids, first, last, tp, mbs, seq, checkpointed, dtype, split)
            cached = _run_probe(*args)
            _store_disk_cache(disk, cached)
        _PROBES[key] = tuple(cached)
    return _PROBES[key]


# Probes are cached on disk too (a few seconds each for a large model): keyed by the probe, the
# torch version and the source of the code that decides what is saved for backward, so a change
# to the model or the parallelize functions measures again. PRETRAIN_PLAN_CACHE=0 disables it.
_CODE = (
    "model_zoo",
    "parallel/parallelize.py",
    "parallel/expert_parallel.py",
    "parallel/planner/memory.py",
)
_DISK: dict | None = None


def _cache_path() -> Path | None:
    if os.environ.get("PRETRAIN_PLAN_CACHE", "1") == "0":
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pretrain" / "plan-probes.json"


@functools.cache
def _code_digest() -> str:
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256(torch.__version__.encode())
    for rel in _CODE:
        path = root / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _disk_key(key: tuple) -> str:
    return hashlib.sha256(f"{_code_digest()}/{key!r}".encode()).hexdigest()


def _load_disk_cache() -> dict:
    global _DISK
    if _DISK is None:
        path = _cache_path()
        try:
            _DISK = json.loads(path.read_text()) if path and path.exists() else {}
        except (OSError, ValueError):
            _DISK = {}  # an unreadable cache is measured again
    return _DISK


def _store_disk_cache(key: str, value) -> None:
    cache = _load_disk_cache()
    cache[key] = list(value)
    path = _cache_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the planner still works, it measures every time


def _run_probe(cfg, layer_ids, first, last, tp, mbs, seq, checkpointed, dtype, split) -> tuple:
    from torch._subclasses.fake_tensor import FakeTensorMode  # private module: keep it local

    pcfg = ParallelConfig(tp=tp, activation_checkpointing="full" if checkpointed else "none")
    layout = resolve_layout(pcfg, tp, cfg, mbs, mbs, seq)
    with fake_world(tp):
        mesh = build_mesh(layout, "cpu")
        model = build_model(_shallow(cfg, layer_ids), device="meta")
        prune_to_stage(model, layer_ids, first, last)
        # the compute dtype FSDP2's mixed precision would cast the parameters to (no FSDP here)
        model.to(dtype)
        parallelize.parallelize_part(model, cfg, layout, mesh)
        with FakeTensorMode(allow_non_fake_inputs=True):
            measure = _measure_split if split else _measure
            return measure(model, cfg, first, last, tp, mbs, seq, dtype)


def _balanced_dispatch(moe):
    """MoE.dispatch with every expert receiving the same number of tokens (a real counts tensor,
    so the expert loop's split sizes are known under fake tensors, where torch.bincount of fake
    routing decisions has no size). Expert parallel moves tokens, not their count per rank: with
    balanced routing each rank computes n_tokens * top_k expert rows whatever ep is."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily  # private, local

    def dispatch(x, expert_ids):
        flat = expert_ids.reshape(-1)
        n, e = flat.numel(), moe.cfg.n_experts
        with unset_fake_temporarily():
            counts = torch.full((e,), n // e, dtype=torch.int64)
            counts[: n % e] += 1
        order = torch.argsort(flat, stable=True)
        return x[order // moe.cfg.top_k], counts, order

    return dispatch


def _probe_inputs(model, cfg, first, tp, mbs, seq, dtype):
    for _, moe in moe_layers(model):
        moe.dispatch = _balanced_dispatch(moe)
    model.to_empty(device="cpu")
    model.init_buffers()
    positions = torch.arange(seq).expand(mbs, seq)
    if first:
        inputs = torch.randint(0, cfg.vocab_size, (mbs, seq))
    else:
        # not a leaf, like the activation a pipeline stage receives and hands to autograd.grad
        leaf = torch.randn(mbs, seq // tp, cfg.d_model, dtype=dtype, requires_grad=True)
        inputs = leaf.clone()
    labels = torch.randint(0, cfg.vocab_size, (mbs, seq))
    return inputs, positions, labels


def _forward(model, inputs, positions, labels, last: bool, tracker):
    """The stage's forward (and loss on the last stage): (output, backward root, its grads)."""
    out = model(inputs, position_ids=positions)
    if last:
        loss = F.cross_entropy(out.flatten(0, 1).float(), labels.flatten(), reduction="sum")
        return out, loss, None
    return out, out, [torch.ones_like(out)]


def _peak_without_gradients(model, tracker) -> int:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for p in model.parameters():
        p.grad = None
    return tracker.peak(grads)


def _measure(model, cfg, first, last, tp, mbs, seq, dtype) -> tuple[int, int, int, int]:
    """Forward + full backward (what 1F1B and gradient accumulation run): (bytes live when the
    first layer starts, bytes kept after the forward and loss, peak bytes, bytes of the stage's
    output tensor). The first figure splits what the stage keeps into what comes before its
    layers (embeddings, the rotary tables every layer shares) and the rest; the last one is
    the hidden state a layer hands on, which the next one does not necessarily keep (a bf16
    input to RMSNorm is saved as its fp32 copy)."""
    inputs, positions, labels = _probe_inputs(model, cfg, first, tp, mbs, seq, dtype)
    marks = {}

    def mark(*_):  # returns None: the block's inputs stay as they are
        marks.setdefault("pre", t.live_bytes())

    hook = next(iter(model.layers.values())).register_forward_pre_hook(mark)
    # vocab-parallel cross-entropy on the DTensor logits, as the engine computes the loss
    ctx = loss_parallel() if tp > 1 and last else contextlib.nullcontext()
    with LiveStorage() as t, ctx:
        out, root, grads = _forward(model, inputs, positions, labels, last, t)
        kept = t.live_bytes()
        out_bytes = sum(x.untyped_storage().nbytes() for x in LiveStorage.plain_tensors(out))
        torch.autograd.backward([root], grads)
    hook.remove()
    return marks["pre"], kept, _peak_without_gradients(model, t), out_bytes


def _measure_split(model, cfg, first, last, tp, mbs, seq, dtype) -> tuple[int, int, int]:
    """Forward + the zero-bubble split with torch's own functions: input gradients first (what
    the weight gradients still need stays alive), weight gradients later. Only where the engine
    splits it: not on the first stage (no input gradient), nor under tp > 1 (autograd.grad
    cannot stop at DTensor leaves) or checkpointing (recomputation inside autograd.grad); there
    the planner holds the whole forward until the weight-gradient half (an upper bound)."""
    inputs, positions, labels = _probe_inputs(model, cfg, first, tp, mbs, seq, dtype)
    with LiveStorage() as t:
        out, root, grads = _forward(model, inputs, positions, labels, last, t)
        kept = t.live_bytes()
        _, groups = stage_backward_input([root], grads, [inputs], model.parameters())
        after_input_grad = t.live_bytes()
        stage_backward_weight(model.parameters(), groups)
    return kept, after_input_grad, _peak_without_gradients(model, t)


@dataclass(frozen=True)
class StageActivations:
    kept: int  # bytes one micro-batch keeps from its forward until its backward
    transient: int  # extra bytes at the peak of one micro-batch's forward + backward
    # bytes it still holds between a zero-bubble schedule's input-gradient and weight-gradient
    # halves (the linear layers' inputs and output gradients the weight gradients need)
    after_input_grad: int = 0
    # the transient of the input- and weight-gradient halves: the input half keeps what the
    # weight half needs, so its peak is higher than a full backward's
    split_transient: int = 0
    # bytes of one micro-batch's output the pipeline schedule keeps until the step ends: the
    # engine's schedule.step() returns the merged outputs (torch's return_outputs=True default),
    # so the last stage holds every micro-batch's logits
    output_kept: int = 0
    # bytes of the activation (forward) and of its gradient (backward) a micro-batch hands to
    # the next / previous stage, held until the step ends under a multi-stage schedule: torch's
    # _PipelineScheduleRuntime waits for all its sends at the end of the step (the send works
    # hold their tensors), and a same-rank hand-over stays in the receiving stage's per
    # micro-batch receive slot (set_local_fwd_input / set_local_bwd_input)
    handed_out: int = 0
    handed_back: int = 0


class ActivationModel:
    """Activation bytes of a model at one (tp, seq per rank, dtype), composed from probes of
    single blocks: every layer of a kind keeps the same bytes, so one probe per (layer kind,
    checkpointing) gives a layer's figures, and one probe with embeddings, one layer and the
    output layer + loss gives what a stage keeps before and after its layers. A stage is the
    sum (its transient the largest of its parts'); `tests/parallel/test_planner.py` checks the
    composition against a probe of the whole stage. Probed at micro-batch 1 and scaled by the
    micro-batch size (every activation of a decoder is per sequence; the validation measures
    the real run at the real micro-batch size). Under context parallelism `seq` is the
    sequence a cp rank holds (seq_len / cp): every activation outside attention is per token,
    and attention's own (q, k, v, output, softmax statistics) is the same product of tokens and
    heads whether a rank holds seq/cp tokens of every head or, inside the all-to-all, every
    token of heads/cp."""

    def __init__(self, cfg: ModelConfig, tp: int, seq: int, dtype: torch.dtype):
        self.cfg, self.tp, self.seq, self.dtype = cfg, tp, seq, dtype
        self.reps = representative_layers(cfg)
        self.kinds = layer_kinds(cfg)
        self._memo: dict[tuple, tuple] = {}
        self._stages: dict[tuple, StageActivations] = {}

    def _probe(self, ids, first, last, ckpt, split=False):
        args = (self.cfg, tuple(ids), first, last, self.tp, 1, self.seq, ckpt, self.dtype)
        return probe(*args, split=split)

    def _cached(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def layer(self, kind: str, ckpt: bool) -> tuple[int, int]:
        """(kept, transient) of one layer of `kind` inside a stack: what a one-layer probe keeps
        beyond what was live before it and beyond its output (which the next layer, or the
        stage's hand-over, accounts for), and the probe's peak over what it keeps."""

        def compute():
            pre, kept, peak, out = self._probe([self.reps[kind]], False, False, ckpt)
            return kept - pre - out, peak - kept

        return self._cached(("layer", kind, ckpt), compute)

    def _middle(self) -> tuple[int, int]:
        """(bytes a stage without embeddings holds before its first layer: the rotary tables
        every layer reads, bytes of the hidden state a stage hands on)."""
        kind, lid = next(iter(self.reps.items()))
        pre, _, _, out = self._cached(("middle",), lambda: self._probe([lid], False, False, False))
        return pre, out

    def base(self, first: bool, last: bool) -> tuple[int, int]:
        """(kept, transient) of a stage's fixed part: embeddings (first) / norm + output layer
        + loss (last) or the stage output it hands on (not last), measured in one probe of
        embeddings, one layer and the output layer."""

        def compute():
            kind, lid = next(iter(self.reps.items()))
            pre, kept, peak, _ = self._probe([lid], True, True, False)
            return pre, kept - pre - self.layer(kind, False)[0], peak - kept

        emb, tail, loss_transient = self._cached(("base",), compute)
        shared, hand_over = self._middle()
        before = emb if first else shared
        # the output layer + loss's transient is only the last stage's
        return before + (tail if last else hand_over), (loss_transient if last else 0)

    def released_before_layers(self, last: bool) -> int:
        """Bytes of the last stage's tail (norm, output layer, logits, loss) its backward has
        freed by the time the layers' backward (and a checkpointed layer's recomputation)
        runs: a layer's transient comes on top of the stage's kept bytes without them."""
        return self.base(False, True)[0] - self._middle()[0] if last else 0

    def split(self, kind: str, first: bool, last: bool) -> tuple[int, int]:
        """Under a zero-bubble schedule: (bytes one layer of `kind` holds between the input-
        and weight-gradient halves, the split backward's transient), from split probes of one
        and two layers; for the fixed part (first/last) the same from a one-layer probe with
        it."""

        def compute():
            ids = [i for i, k in enumerate(self.kinds) if k == kind]
            one = self._probe(ids[:1], False, False, False, split=True)
            if len(ids) == 1:
                return one[1], one[2] - one[0]
            two = self._probe(ids[:2], False, False, False, split=True)
            return two[1] - one[1], one[2] - one[0]

        per_layer, transient = self._cached(("split", kind), compute)
        if not last:
            return per_layer, transient
        kept, after, peak = self._cached(
            ("split-last", kind),
            lambda: self._probe([self.reps[kind]], False, True, False, split=True),
        )
        return after - per_layer, peak - kept

    def splits(self, layout: Layout) -> bool:
        """Whether some stage of the layout runs a split (zero-bubble) backward the probes can
        follow: a zero-bubble schedule at tp=1 with layers not all checkpointed."""
        return (
            layout.pp > 1
            and self.tp == 1
            and layout.activation_checkpointing != "full"
            and splits_backward(layout)
        )

    def stage(self, layout: Layout, stage: int, split: bool = True) -> StageActivations:
        """One stage's figures, composed from its blocks; split=False leaves out what a
        zero-bubble split backward holds beyond a full one (a lower bound, no split probes).
        Memoised on what they depend on: the search asks for the same stage under every
        precision, FSDP/HSDP split and data-parallel size (~10x fewer compositions)."""
        key = (
            stage,
            tuple(layout.stage_layers[stage]),
            layout.n_stages,
            layout.pp,
            layout.pp_schedule,
            layout.virtual_stages,
            layout.n_microbatches,
            layout.activation_checkpointing,
            layout.ac_every_n,
            layout.micro_batch_size,
            layout.seq_len,
            layout.cp,
            layout.tp,
            split,
        )
        if key not in self._stages:
            self._stages[key] = self._compose_stage(layout, stage, split)
        return self._stages[key]

    def _compose_stage(self, layout: Layout, stage: int, split: bool) -> StageActivations:
        first, last = stage == 0, stage == layout.n_stages - 1
        kept, transient = self.base(first, last)
        released = self.released_before_layers(last)
        ckpts = []
        for lid in layout.stage_layers[stage]:
            ckpt = layout.recomputes(lid)
            ckpts.append(ckpt)
            k, t = self.layer(self.kinds[lid], ckpt)
            kept += k
            transient = max(transient, t - released)
        zero_bubble = self.splits(layout) and not first and not any(ckpts)
        # without the split probes (split=False) a lower bound: nothing held between the
        # halves, the full backward's transient (the input half's is higher)
        after, split_transient = (0 if zero_bubble else kept), transient
        if split and zero_bubble:
            kind0 = self.kinds[layout.stage_layers[stage][0]]
            after, split_transient = self.split(kind0, first, last) if last else (0, 0)
            if not last:
                after = sum(self._middle())
            for lid in layout.stage_layers[stage]:
                a, st = self.split(self.kinds[lid], False, False)
                after += a
                split_transient = max(split_transient, st)
        mbs = layout.micro_batch_size
        elem = torch.empty(0, dtype=self.dtype).element_size()
        logits = handed = 0
        if last and layout.pp > 1:
            logits = mbs * self.seq * (self.cfg.padded_vocab_size // self.tp) * elem
        if layout.pp > 1 and layout.schedule.multi_stage:
            handed = boundary_bytes(self.cfg, layout, self.dtype)
        return StageActivations(
            kept * mbs,
            max(transient, 0) * mbs,
            max(after, 0) * mbs,
            split_transient=max(split_transient, 0) * mbs,
            output_kept=logits,
            handed_out=0 if last else handed,
            handed_back=0 if first else handed,
        )


def splits_backward(layout: Layout) -> bool:
    """Whether the layout's schedule runs input- and weight-gradient halves (zero bubble)."""
    order = layout.schedule.action_order(layout.pp, layout.virtual_stages, layout.n_microbatches)
    return any(a.kind == "I" for a in order[0])


def boundary_bytes(cfg: ModelConfig, layout: Layout, dtype: torch.dtype) -> int:
    """One micro-batch's activation at a stage boundary: [mbs, seq / cp / tp, d_model], what
    the pipeline sends (the local shard of the sequence-parallel hidden state)."""
    elem = torch.empty(0, dtype=dtype).element_size()
    tokens = layout.seq_len // layout.cp // layout.tp
    return layout.micro_batch_size * tokens * cfg.d_model * elem


def pipeline_receive_buffers(cfg: ModelConfig, layout: Layout, pp_rank: int) -> int:
    """Bytes of the receive buffers torch's pipeline stages allocate once, one per micro-batch
    and boundary with another rank (activations from the previous stage, gradients from the
    next), kept for the whole run: memory the step uses but does not allocate."""
    if layout.pp == 1:
        return 0
    one = boundary_bytes(cfg, layout, compute_dtype(layout.precision))
    crossings = _remote_boundaries(layout.pp_schedule, layout.pp, layout.virtual_stages, pp_rank)
    return crossings * layout.n_microbatches * one


@functools.cache
def _remote_boundaries(schedule: str, pp: int, v: int, pp_rank: int) -> int:
    """Stage boundaries of one pp rank's stages whose other side is on another rank."""
    sched = SCHEDULES[schedule]
    owner = {s: r for r in range(pp) for s in sched.stages_of_rank(r, pp, v)}
    return sum(
        0 <= nb < pp * v and owner[nb] != pp_rank
        for sid in sched.stages_of_rank(pp_rank, pp, v)
        for nb in (sid - 1, sid + 1)
    )


_COUNT_FIELDS = ("kept", "after_input_grad", "output_kept", "handed_out", "handed_back")


@functools.cache
def _holding_counts(schedule: str, pp: int, v: int, n_mb: int, pp_rank: int):
    """For every action of one pp rank's order: how many micro-batches each of its stages holds
    in each state (the _COUNT_FIELDS of StageActivations) while it runs, which of the rank's
    stages runs it and whether it is a half of a split backward. Depends on the schedule only,
    so it is computed once and shared by every layout with that pipeline shape."""
    sched = SCHEDULES[schedule]
    local = sched.stages_of_rank(pp_rank, pp, v)
    index = {s: i for i, s in enumerate(local)}
    live = [0] * len(local)  # forward done, no backward yet
    halfway = [0] * len(local)  # input gradient done, weight gradient not yet
    outputs = [0] * len(local)  # forwards done: their outputs kept until the step ends
    out_done = [0] * len(local)  # backward done: its handed-out activation still held
    grad_done = [0] * len(local)  # input gradient done: the gradient handed back held
    rows, stage_of, split = [], [], []
    for a in sched.action_order(pp, v, n_mb)[pp_rank]:
        i = index[a.stage]
        if a.kind == "F":
            live[i] += 1
            outputs[i] += 1
        rows.append(
            [c[j] for j in range(len(local)) for c in (live, halfway, outputs, out_done, grad_done)]
        )
        stage_of.append(i)
        split.append(a.kind in ("I", "W"))
        if a.kind in ("B", "I"):
            live[i] -= 1
            grad_done[i] += 1
        if a.kind == "I":
            halfway[i] += 1
        if a.kind == "W":
            halfway[i] -= 1
        if a.kind in ("B", "W"):  # the stage output is no longer needed by its backward
            out_done[i] += 1
    return local, np.array(rows, dtype=np.int64), np.array(stage_of), np.array(split)


def in_flight_peak(layout: Layout, pp_rank: int, acts: dict[int, StageActivations]) -> int:
    """Peak activation bytes of one pp rank over the schedule: the micro-batches each of its
    stages holds at every point of the rank's order of work, plus the running op's transient.
    A micro-batch's activations are released by its (full or weight-gradient) backward."""
    if layout.pp == 1:
        a = acts[0]
        return a.kept + a.transient  # gradient accumulation: one micro-batch at a time
    local = layout.stages_of_rank(pp_rank)
    return _pipeline_peak(
        layout.pp_schedule,
        layout.pp,
        layout.virtual_stages,
        layout.n_microbatches,
        pp_rank,
        tuple(acts[s] for s in local),
    )


@functools.lru_cache(maxsize=1 << 16)
def _pipeline_peak(
    schedule: str, pp: int, v: int, n_mb: int, pp_rank: int, stage_acts: tuple
) -> int:
    """in_flight_peak of one pipeline shape and one tuple of the rank's stage figures (frozen
    dataclasses, hashable): many layouts of a search share both."""
    local, counts, stage_of, split = _holding_counts(schedule, pp, v, n_mb, pp_rank)
    acts = dict(zip(local, stage_acts))
    values = np.array([getattr(acts[s], f) for s in local for f in _COUNT_FIELDS], dtype=np.int64)
    transient = np.array([acts[s].transient for s in local], dtype=np.int64)[stage_of]
    split_transient = np.array([acts[s].split_transient for s in local], dtype=np.int64)
    transient = np.where(split, split_transient[stage_of], transient)
    return int((counts @ values + transient).max())


def compute_dtype(precision: str) -> torch.dtype:
    return param_dtype(precision) if precision in FULL_PRECISIONS else torch.bfloat16
