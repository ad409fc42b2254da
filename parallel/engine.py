"""The parallel training engine: a zoo model, a layout and a mesh in; a training step out.

`build_engine` follows torchtitan's order of transformations on a model built on the meta device
(so nothing of full size is allocated per rank until weights are materialised):

  1. FP8: swap nn.Linear for torchao Float8Linear (before TP, so TP plans see the float8 modules);
  2. pipeline split: one copy of the meta model per local stage, pruned to that stage's layers
     (embeddings on the first stage, final norm + output + loss on the last);
  3. per stage: tensor + sequence parallel (DTensor plans), activation checkpointing, per-block
     torch.compile, FSDP2 fully_shard (HSDP with a 2-D data-parallel mesh);
  4. materialise (`to_empty`) and fill in this rank's shards of `build_model(cfg, seed)`'s weights,
     each rank keeping its own shard, so every layout starts from exactly the same weights.

Parameter names never change (ModuleDict layers keep their index; composable checkpointing and
`Module.compile` add no wrapper), so `named_parameters()` and the state dicts use the single-device
names and checkpoints move between layouts.

Loss normalisation: each micro-batch contributes sum(token CE) / N where N is the number of label
tokens in the GLOBAL batch (all data-parallel ranks, all micro-batches), and data-parallel gradient
reduction sums instead of averaging. Gradients are then exactly those of the mean token
cross-entropy over the global batch, whatever the layout or the number of micro-batches.

Context parallel (parallel/context_parallel.py): the cp ranks of a data-parallel rank get the same
batch from the loader; the engine keeps this cp rank's load-balanced part of the inputs, labels
and position ids (RoPE follows the shard), while document ids stay whole, since the model builds
the intra-document mask for the full sequence that attention sees. Token counts are summed over
the data-parallel and cp ranks ("dp_cp"); each cp rank's loss is its tokens' share.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed._composable import checkpoint as composable_checkpoint
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    _add_send_recv,
    _add_unshard_reshard,
    _ComputationType,
    _PipelineScheduleRuntime,
)
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.parallel import loss_parallel

from configcore import ConfigError
from model_zoo.config import ModelConfig
from model_zoo.layers import upcast
from model_zoo.model import Transformer, build_model
from model_zoo.moe import expert_load, moe_layers, set_aux_loss_scale, update_expert_biases
from parallel import context_parallel, parallelize
from parallel.axes import AXES
from parallel.config import RING_NEEDS_CUDA, ParallelConfig, param_dtype
from parallel.layout import Layout

IGNORE_INDEX = -100


@dataclass
class _StageInfo:
    stage_id: int
    is_first: bool
    is_last: bool


class Engine:
    """What the training loop calls. See docs/parallel.md for the contract."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        layout: Layout,
        mesh,
        device: torch.device,
        model_parts: list[nn.Module],
        stages: list[_StageInfo],
    ):
        self.model_cfg = model_cfg
        self.layout = layout
        self.mesh = mesh
        self.device = device
        self.model_parts = model_parts
        self._stages = stages
        self._tp = mesh["tp"].size()
        self._pp_rank = mesh["pp"].get_local_rank()
        self._dp_group = mesh["dp"].get_group()
        self._pp_group = mesh["pp"].get_group()
        self._cp_mesh = mesh["cp"]
        self._cp_rank = mesh["cp"].get_local_rank()
        # token counts and routing statistics: every rank that holds other tokens of the batch
        self._tokens_group = mesh["dp_cp"].get_group()
        self.holds_last_stage = any(s.is_last for s in stages)
        # Whether this rank's loss counts in the global sum: the last stage's, once per group of
        # ranks holding the same value (coordinate 0 of every axis the loss is not summed over,
        # parallel/axes.py's `tokens`: tp; pp is the stage, decided above)
        self.reports_loss = self.holds_last_stage and all(
            mesh[a.name].get_local_rank() == 0 for a in AXES if not a.tokens and a.name != "pp"
        )
        self.holds_first_stage = any(s.is_first for s in stages)
        self._denominator = 1.0  # label tokens of the global batch, set per step
        self._schedule = None
        self._forward_only_schedule = None  # built on the first validation (_eval_schedule)
        self._label_scores: list[torch.Tensor] | None = None  # set by eval_label_scores
        self._pp_stages = []
        self.precompute_fp8_scales = False  # parallel.fp8_fsdp_all_gather (build_engine sets it)
        if layout.pp > 1:
            self._build_schedule()

    @property
    def checkpointed_layers(self) -> list[int]:
        """Layer ids whose activations are recomputed in backward (activation checkpointing)."""
        return sorted(
            int(k)
            for part in self.model_parts
            for k, block in part.layers.items()
            if composable_checkpoint.state(block) is not None
        )

    # ---- data-parallel identity -----------------------------------------------------------------
    @property
    def dp_rank(self) -> int:
        """Which slice of the global batch this rank reads (0..dp_size-1)."""
        return self.mesh["dp"].get_local_rank()

    @property
    def dp_size(self) -> int:
        return self.layout.dp

    # ---- MoE routing statistics ------------------------------------------------------------------
    @torch.no_grad()
    def sum_expert_counts_over_dp(self) -> None:
        """Sum every MoE layer's tokens-per-expert counts over the data-parallel ranks, in place.

        Each dp rank routes its own slice of the batch, so its counts cover only that slice; the
        load metric and DeepSeek-V3's bias update need the global batch's counts (as one process
        would see them), and with per-rank counts the replicated router biases would drift apart
        between ranks. cp ranks route other tokens of the same sequences: summed with dp. tp
        ranks route the same tokens and pp ranks hold other layers: neither is summed. One
        all-reduce for all layers of this rank's stages."""
        if self.layout.dp == 1 and self.layout.cp == 1:
            return
        counts = [m.tokens_per_expert for part in self.model_parts for _, m in moe_layers(part)]
        if not counts:
            return
        flat = torch.cat([c.reshape(-1) for c in counts])
        dist.all_reduce(flat, group=self._tokens_group)
        for c, summed in zip(counts, flat.split([c.numel() for c in counts])):
            c.copy_(summed.view_as(c))

    def gather_over_pp(self, local: dict) -> dict:
        """Merge a per-stage dict (e.g. the expert load of this rank's MoE layers) over the
        pipeline ranks, so rank 0 can log the whole model's (collective over the pp group)."""
        if self.layout.pp == 1:
            return local
        gathered: list = [None] * self.layout.pp
        dist.all_gather_object(gathered, local, group=self._pp_group)
        merged = {}
        for part in gathered:
            merged.update(part or {})
        return merged

    @torch.no_grad()
    def after_optimizer_step(self, log_load: bool) -> dict[str, list[float]] | None:
        """MoE bookkeeping after each optimizer step (collective on every rank; nothing for a
        dense model): sum the tokens-per-expert counts over dp when they are read, return the
        expert load of every MoE layer of the whole model (in layer order, gathered over pp)
        when `log_load`, then apply DeepSeek-V3's aux-loss-free bias update (a no-op unless
        moe.bias_update_speed > 0), which resets the counts for the next step.

        Whether to do it is decided from the config, not this rank's stages: the collectives
        span the pipeline ranks, which all must join, including a stage of dense layers only."""
        cfg = self.model_cfg
        if not any(cfg.is_moe_layer(i) for i in range(cfg.n_layers)):
            return None
        balancing = cfg.moe.bias_update_speed > 0
        if log_load or balancing:  # not a collective per step when nothing reads the counts
            self.sum_expert_counts_over_dp()
        load = None
        if log_load:
            local = {}
            for part in self.model_parts:
                local.update({name: frac.tolist() for name, frac in expert_load(part).items()})
            merged = self.gather_over_pp(local)
            load = dict(sorted(merged.items(), key=lambda kv: int(kv[0].split(".")[1])))
        for part in self.model_parts:
            update_expert_biases(part)
        return load

    def after_optimizer_step_fp8(self) -> None:
        """Under parallel.fp8_fsdp_all_gather: the next forward's float8 weight scales, in one
        all-reduce per part (torchtitan's post-optimizer hook); nothing otherwise."""
        if self.precompute_fp8_scales:
            for part in self.model_parts:
                parallelize.precompute_fp8_scales(part)

    # ---- parameters ---------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(single-device FQN, parameter) of this rank's parts; parameters may be DTensors."""
        seen = set()
        for part in self.model_parts:
            for name, p in part.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield name, p

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters():
            yield p

    def zero_grad(self) -> None:
        for part in self.model_parts:
            part.zero_grad(set_to_none=True)

    # ---- the training step --------------------------------------------------------------------
    def _loss_context(self):
        # Vocab-parallel cross-entropy: logits stay sharded over the vocabulary (no gather).
        if self._tp > 1:
            return loss_parallel()
        return contextlib.nullcontext()

    def _loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum of token CE of this micro-batch over the global token count (see module doc)."""
        if self._label_scores is not None:  # eval_label_scores: per-sequence figures as well
            self._label_scores.append(_label_scores(logits, labels))
        loss = F.cross_entropy(
            upcast(logits.flatten(0, 1)),
            labels.flatten(0, 1),
            reduction="sum",
            ignore_index=IGNORE_INDEX,
        )
        return loss / self._denominator

    def forward_backward(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        sync: bool = True,
    ) -> float | torch.Tensor:
        """Forward and backward over this data-parallel rank's local batch (all micro-batches).

        inputs, labels: LongTensor [local_batch, seq] (labels == -100 are ignored);
        position_ids / document_ids: optional [local_batch, seq] for packed documents (the model's
        intra-document attention mask). Gradients
        accumulate into the parameters; the return value is the mean token CE over the global
        batch (identical on every rank): a float, or with sync=False a 0-dim float64 tensor on
        the device, so that the step needs no host synchronisation (the trainer reads it at
        log steps)."""
        lay = self.layout
        if inputs.shape[0] != lay.local_batch_size:
            raise ValueError(
                f"forward_backward got {inputs.shape[0]} sequences; this layout "
                f"expects local_batch={lay.local_batch_size} per dp rank"
            )
        # non-blocking: from the loader's pinned batches the copy overlaps the work queued before
        inputs = inputs.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if position_ids is None:
            # Always explicit: under sequence parallel the hidden state the model sees holds only
            # seq/tp positions, so the model's default (positions 0..h.shape[1]) would be wrong.
            position_ids = torch.arange(inputs.shape[1], device=self.device).expand_as(inputs)
        kwargs = {"position_ids": position_ids.to(self.device, non_blocking=True)}
        if document_ids is not None:
            kwargs["document_ids"] = document_ids.to(self.device, non_blocking=True)
        inputs, labels, kwargs = self._context_shard(inputs, labels, kwargs)
        n_tokens = (self._local_labels(labels) != IGNORE_INDEX).sum().to(torch.float64)
        dist.all_reduce(n_tokens, group=self._tokens_group)
        # Kept on the device (no host read before the forward); float32 like the loss it
        # divides, so the quotient is the one a Python float divisor gives (exact integers).
        self._denominator = n_tokens.clamp(min=1.0).to(torch.float32)
        # MoE balancing losses enter backward once per micro-batch and rank: weight each by its
        # share of the global batch, as the CE loss is (its sum over the global token count).
        micro_sequences = (
            lay.micro_batch_size if lay.pp == 1 else inputs.shape[0] // lay.n_microbatches
        )
        local_seq = inputs.shape[1] // (lay.cp if self._ring else 1)  # this cp rank's tokens
        for part in self.model_parts:
            set_aux_loss_scale(part, micro_sequences * local_seq / self._denominator)

        local_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        with self._loss_context():
            if lay.pp > 1:
                with self._ring_context(inputs, labels, kwargs) as (inputs, labels, kwargs):
                    local_loss += self._run_schedule(self._schedule.step, inputs, labels, kwargs)
            else:
                model = self.model_parts[0]
                mbs = lay.micro_batch_size
                for start in range(0, inputs.shape[0], mbs):
                    sl = slice(start, start + mbs)
                    micro = {k: v[sl] for k, v in kwargs.items()}
                    with self._ring_context(inputs[sl], labels[sl], micro) as (x, y, micro):
                        loss = self._loss_fn(model(x, **micro), y)
                        loss.backward()
                    local_loss += _to_local_scalar(loss.detach())
        self._sum_expert_grads_over_cp()
        # Each (data-parallel rank, last stage) contributes once (reports_loss: tp ranks hold the
        # same value)
        if not self.reports_loss:
            local_loss.zero_()
        dist.all_reduce(local_loss)
        return float(local_loss.item()) if sync else local_loss

    @torch.no_grad()
    def eval_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """Forward only over this dp rank's local batch (the training shape: local_batch
        sequences, in micro-batches or through the pipeline schedule's forward-only `eval`):
        (sum of token CE, label tokens), both summed over the global batch and identical on
        every rank. Labels equal to -100 count for nothing (padding rows). Gradients, weights
        and the MoE routing counters are left as they were."""
        local, labels = self._eval_forward(inputs, labels, "eval_loss")
        if not self.reports_loss:
            local.zero_()
        n_tokens = (self._local_labels(labels) != IGNORE_INDEX).sum().to(torch.float64)
        dist.all_reduce(n_tokens, group=self._tokens_group)
        dist.all_reduce(local)
        return float(local.item()), int(n_tokens.item())

    @torch.no_grad()
    def eval_label_scores(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The forward-only path of `eval_loss`, per sequence: float64 [global_batch, 3] on the
        CPU, identical on every rank, row `dp_rank * local_batch + i` for this dp rank's i-th
        sequence: the sum of the log-probabilities of its label tokens, how many of them are not
        the logits' argmax (0: the labels are the greedy continuation), and its label count.
        What lm-eval's loglikelihood requests need (pretrain/downstream_eval.py), under every
        layout validation runs: tp ranks gather the vocabulary shards of the logits, the cp
        ranks' sequence shards add up, only the last pipeline stage contributes."""
        lay = self.layout
        self._label_scores = []
        try:
            self._eval_forward(inputs, labels, "eval_label_scores")
            scores = self._label_scores
        finally:
            self._label_scores = None
        n = self.dp_size * lay.local_batch_size
        out = torch.zeros(n, 3, dtype=torch.float64, device=self.device)
        lo = self.dp_rank * lay.local_batch_size
        if self.reports_loss:
            out[lo : lo + lay.local_batch_size] = torch.cat(scores)
        dist.all_reduce(out)
        out = out.cpu()
        # the micro-batches' rows are taken in order: their label counts say so
        expected = (labels != IGNORE_INDEX).sum(1).to(torch.float64)
        if not torch.equal(out[lo : lo + lay.local_batch_size, 2], expected.cpu()):
            raise RuntimeError(
                "eval_label_scores: the per-sequence label counts differ from the batch's "
                f"({out[lo : lo + lay.local_batch_size, 2].tolist()} vs {expected.tolist()}); "
                "the pipeline schedule returned its micro-batches out of order"
            )
        return out

    def _eval_forward(self, inputs, labels, what: str):
        """The forward-only pass both evaluations share: (this rank's loss sum, its labels)."""
        lay = self.layout
        if inputs.shape[0] != lay.local_batch_size:
            raise ValueError(
                f"{what} got {inputs.shape[0]} sequences; this layout expects "
                f"local_batch={lay.local_batch_size} per dp rank"
            )
        inputs, labels = inputs.to(self.device), labels.to(self.device)
        pos = torch.arange(inputs.shape[1], device=self.device).expand_as(inputs)
        inputs, labels, kwargs = self._context_shard(inputs, labels, {"position_ids": pos})
        counters = [
            (m.tokens_per_expert, m.tokens_per_expert.clone())
            for part in self.model_parts
            for _, m in moe_layers(part)
        ]
        saved, self._denominator = self._denominator, 1.0  # the loss function returns sums
        local = torch.zeros((), dtype=torch.float64, device=self.device)
        try:
            with self._loss_context():
                local += self._forward_only(inputs, labels, kwargs)
        finally:
            self._denominator = saved
            for live, before in counters:
                live.copy_(before)
        return local, labels

    def _forward_only(self, inputs, labels, kwargs: dict) -> torch.Tensor:
        """Sum of this rank's micro-batch losses (only the last stage holds any)."""
        if self.layout.pp > 1:
            with self._ring_context(inputs, labels, kwargs) as (inputs, labels, kwargs):
                return self._run_schedule(self._eval_schedule().eval, inputs, labels, kwargs)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        model, mbs = self.model_parts[0], self.layout.micro_batch_size
        for start in range(0, inputs.shape[0], mbs):
            sl = slice(start, start + mbs)
            micro = {k: v[sl] for k, v in kwargs.items()}
            with self._ring_context(inputs[sl], labels[sl], micro) as (x, y, micro):
                total += _to_local_scalar(self._loss_fn(model(x, **micro), y))
        return total

    # ---- context parallel -----------------------------------------------------------------------
    @property
    def _ring(self) -> bool:
        return self.layout.cp > 1 and self.layout.cp_style == "ring"

    def _context_shard(self, inputs, labels, kwargs: dict):
        """This cp rank's tokens (alltoall: sliced here; ring: inside _ring_context, by torch).
        Document ids stay whole: the model builds the mask of the full sequence from their
        length. A sliding window without document ids gets all-zero ones (one document) for
        the same reason: the model's mask must span the whole sequence."""
        lay = self.layout
        if lay.cp == 1:
            return inputs, labels, kwargs
        if self._ring:
            if "document_ids" in kwargs:
                raise ConfigError(
                    "parallel.cp_style=ring runs torch's ring attention, plain causal only: the "
                    "intra-document mask (data.intra_doc_mask=true) cannot reach its kernel; use "
                    "parallel.cp_style=alltoall"
                )
            return inputs, labels, kwargs
        if "document_ids" not in kwargs and self.model_cfg.sliding_window > 0:
            kwargs["document_ids"] = torch.zeros_like(inputs)
        shard = lambda t: context_parallel.shard_sequence(t, lay.cp, self._cp_rank)  # noqa: E731
        kwargs = {k: v if k == "document_ids" else shard(v) for k, v in kwargs.items()}
        return shard(inputs), shard(labels), kwargs

    @torch.no_grad()
    def _sum_expert_grads_over_cp(self) -> None:
        """ep > 1 with cp > 1: the routed experts are FSDP-sharded over dp_shard only (see
        parallel/layout.py), so the cp ranks' gradients of the same expert shard are summed
        here, after backward (one all-reduce of all expert gradients of this rank's stages)."""
        if self.layout.cp == 1 or self.layout.ep == 1:
            return
        grads = [
            p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            for part in self.model_parts
            for _, m in moe_layers(part)
            for p in m.experts.parameters()
            if p.grad is not None
        ]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self._cp_mesh.get_group())
            for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(summed.view_as(g))

    def _local_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels this cp rank computes the loss of (ring: the part torch will keep)."""
        if self._ring:
            return context_parallel.shard_sequence(labels, self.layout.cp, self._cp_rank)
        return labels

    @contextlib.contextmanager
    def _ring_context(self, inputs, labels, kwargs: dict):
        """Under the ring style, (inputs, labels, kwargs) sharded by torch's context_parallel
        (copies: it shards its buffers in place), with SDPA as ring attention inside; else the
        arguments as they are."""
        if not self._ring:
            yield inputs, labels, kwargs
            return
        buffers = [inputs.clone(), labels.clone(), kwargs["position_ids"].clone()]
        with context_parallel.ring_context(self._cp_mesh, buffers):
            yield buffers[0], buffers[1], {"position_ids": buffers[2]}

    def _run_schedule(self, run, inputs, labels, kwargs: dict) -> torch.Tensor:
        """One pass of the pipeline schedule (`run` is its step or its forward-only eval): the
        first stage feeds the inputs, the last computes the loss of each micro-batch; returns
        the sum of this rank's micro-batch losses (zero off the last stage)."""
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.holds_first_stage else ()
        target = {"target": labels, "losses": losses} if self.holds_last_stage else {}
        run(*args, **target, **kwargs)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for loss in losses:
            total += _to_local_scalar(loss)
        return total

    def _eval_schedule(self):
        """The pipeline schedule validation runs, forward-only, on stages of its own.

        Its own PipelineStage objects (over the same modules): running torch's `eval` on the
        training schedule's stages re-initialises their buffers for a forward without backward,
        and the next training step of a multi-stage schedule then computed wrong gradients
        (Interleaved1F1B; measured: step 3 loss 6.658 instead of 6.577). And for torch's
        multi-stage runtime schedules, a runtime schedule (torch's private
        `_PipelineScheduleRuntime`, the class they are built on) of the schedule's forward
        actions alone: their own `eval` executes the whole action list, and ZBV's backward
        actions fail ("can't steal_bwd_input if this stage doesn't have backward"). Both are
        checked by tests/pretrain/test_eval.py::test_forward_only_path_of_multi_stage_pipelines."""
        if self._forward_only_schedule is None:
            lay = self.layout
            stages = [
                PipelineStage(part, info.stage_id, lay.n_stages, self.device, group=self._pp_group)
                for part, info in zip(self.model_parts, self._stages)
            ]
            schedule = lay.schedule.build(
                stages, lay.n_microbatches, loss_fn=self._loss_fn, scale_grads=False
            )
            if isinstance(schedule, _PipelineScheduleRuntime):
                schedule = _forward_only_runtime(schedule, stages, lay.n_microbatches)
            self._forward_only_schedule = schedule
        return self._forward_only_schedule

    def _build_schedule(self) -> None:
        lay = self.layout
        self._pp_stages = [
            PipelineStage(part, info.stage_id, lay.n_stages, self.device, group=self._pp_group)
            for part, info in zip(self.model_parts, self._stages)
        ]
        # scale_grads=False: our loss is already normalised by the global token count. The
        # registry (parallel/pipeline_schedules.py) knows whether the class takes one stage or a list.
        self._schedule = lay.schedule.build(
            self._pp_stages, lay.n_microbatches, loss_fn=self._loss_fn, scale_grads=False
        )

    # ---- gradient clipping --------------------------------------------------------------------
    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float, sync: bool = True) -> float | torch.Tensor:
        """Clip by the global gradient norm over every axis (tp/dp shards, pipeline stages,
        expert shards); returns the L2 norm before clipping (same on all ranks)."""
        groups: dict = {}
        for p in self.parameters():
            if p.grad is None:
                continue
            g = p.grad
            # DTensors of one mesh and placement can be reduced together; plain tensors alone
            key = (id(g.device_mesh), tuple(g.placements)) if isinstance(g, DTensor) else None
            groups.setdefault(key, []).append(p)
        total_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        for params in groups.values():
            grads = [p.grad for p in params]
            norm = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
            if isinstance(norm, DTensor):
                norm = norm.full_tensor()  # sums squares over shards, not over replicas
            total_sq += norm.to(torch.float64) ** 2
        if self.layout.pp > 1:
            # each pp rank holds different stages: add their squared norms
            dist.all_reduce(total_sq, group=self._pp_group)
        total = total_sq.sqrt()
        for params in groups.values():
            # the norm in the gradients' own dtype (fp32, or float64 under fp64), as
            # torch.nn.utils.clip_grad_norm_ in one process computes it
            norm = total.to(params[0].grad.dtype)
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
        return float(total.item()) if sync else total

    # ---- state dicts --------------------------------------------------------------------------
    def model_state_dict(self) -> dict:
        """Single-device FQNs -> this rank's (DTensor) parameters, for torch.distributed.checkpoint."""
        sd = {}
        for part in self.model_parts:
            sd.update(get_model_state_dict(part))
        return sd

    def load_model_state_dict(self, state_dict: dict) -> None:
        """Load a dict shaped like model_state_dict() (e.g. filled in place by dcp.load)."""
        for part in self.model_parts:
            keys = set(get_part_keys(part))
            missing = keys - set(state_dict)
            if missing:
                raise KeyError(f"state dict lacks {sorted(missing)[:5]}")
            set_model_state_dict(
                part, {k: state_dict[k] for k in keys}, options=StateDictOptions(strict=True)
            )

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter as a full CPU tensor (fp32, float64 under fp64), on every rank
        (collective; for tests/export)."""
        local = {}
        for name, p in self.named_parameters():
            t = p.full_tensor() if isinstance(p, DTensor) else p
            local[name] = upcast(t.detach()).cpu().clone()
        return self.gather_over_pp(local)


def _forward_only_runtime(schedule, stages, n_microbatches: int):
    """A runtime schedule of `schedule`'s forward actions, in its order, lowered the way torch
    lowers a compute-only schedule (FSDP unshard/reshard, then the sends and receives) but
    without its check that every micro-batch also has a backward."""
    forward = {
        rank: [a for a in acts if a and a.computation_type == _ComputationType.FORWARD]
        for rank, acts in schedule.pipeline_order.items()
    }
    runtime = _PipelineScheduleRuntime(
        stages, n_microbatches, loss_fn=schedule._loss_fn, scale_grads=False
    )
    # The constructor gave the stages its default (looped) placement: put back the schedule's
    # (V-shaped for ZBV) on the runtime and on its stages.
    mapping = schedule.stage_index_to_group_rank
    runtime.stage_index_to_group_rank = mapping
    for stage in stages:
        stage.stage_index_to_group_rank = mapping
    runtime.pipeline_order_with_comms = _add_send_recv(
        {rank: _add_unshard_reshard(acts) for rank, acts in forward.items()},
        stage_to_rank=lambda s: mapping[s],
        num_stages=len(mapping),
    )
    return runtime


def get_part_keys(part: nn.Module) -> list[str]:
    return [k for k, _ in part.named_parameters()]


def _label_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence of a micro-batch: [sum of label log-probabilities, labels that are not the
    argmax, label count], float64. Under TP the logits are gathered over the vocabulary first
    (an evaluation batch's logits, the size one device holds without TP); the log-softmax runs
    in the logits' precision (fp32 at least), as lm-eval's `hf` model and DecoderLM take it."""
    if isinstance(logits, DTensor):
        logits = logits.full_tensor()
    logp = F.log_softmax(upcast(logits), -1)
    mask = labels != IGNORE_INDEX
    safe = labels.clamp(min=0)
    picked = logp.gather(-1, safe[..., None])[..., 0].to(torch.float64)
    missed = (logp.argmax(-1) != safe) & mask
    return torch.stack(
        [
            torch.where(mask, picked, 0.0).sum(1),
            missed.sum(1).to(torch.float64),
            mask.sum(1).to(torch.float64),
        ],
        dim=1,
    )


def _to_local_scalar(t: torch.Tensor) -> torch.Tensor:
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().to(torch.float64).reshape(())


# ------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------
def build_engine(
    model_cfg: ModelConfig,
    pcfg: ParallelConfig,
    layout: Layout,
    mesh,
    device: torch.device | str,
    seed: int = 0,
) -> Engine:
    """Build the parallel model for this rank and return the Engine (collective: all ranks)."""
    device = torch.device(device)
    if layout.cp > 1 and layout.cp_style == "ring" and device.type != "cuda":
        raise ConfigError(RING_NEEDS_CUDA)
    meta_model = build_model(model_cfg, device="meta").to(param_dtype(layout.precision))
    if layout.precision.startswith("fp8"):
        parallelize.convert_fp8(
            meta_model,
            layout.precision,
            fp8_filter=pcfg.fp8_filter,
            fsdp_float8_all_gather=pcfg.fp8_fsdp_all_gather,
            moe_experts=pcfg.fp8_moe_experts,
        )
    pp_rank = mesh["pp"].get_local_rank()
    parts, infos = [], []
    stage_ids = layout.stages_of_rank(pp_rank) if layout.pp > 1 else [0]
    for sid in stage_ids:
        part = meta_model if len(stage_ids) == 1 else copy.deepcopy(meta_model)
        if layout.pp > 1:
            prune_to_stage(part, layout.stage_layers[sid], sid == 0, sid == layout.n_stages - 1)
        infos.append(_StageInfo(sid, sid == 0, sid == layout.n_stages - 1))
        parts.append(part)
    for part in parts:
        parallelize.parallelize_part(part, model_cfg, layout, mesh)
    _materialise(parts, seed, device)
    engine = Engine(model_cfg, layout, mesh, device, parts, infos)
    engine.precompute_fp8_scales = pcfg.fp8_fsdp_all_gather
    return engine


def prune_to_stage(model: Transformer, layer_ids: list[int], first: bool, last: bool) -> None:
    """Keep only a pipeline stage's layers (their ids, so parameter names stay the single
    model's), the embeddings on the first stage and the norm and output layer on the last. The
    planner prunes its probe models with it too, so they hold what the engine's stages hold."""
    keep = {str(i) for i in layer_ids}
    for key in list(model.layers.keys()):
        if key not in keep:
            del model.layers[key]
    if not first:
        model.tok_embeddings = None
    if not last:
        model.norm = None
        model.output = None


@torch.no_grad()
def _materialise(parts: list[nn.Module], seed: int, device: torch.device) -> None:
    """Allocate every part on `device` and fill in this rank's shard of the single-device weights.

    Each parameter's initial value is generated on the CPU from (seed, name) alone
    (`Transformer.initial_value`), so this rank generates only the parameters its stages hold,
    one at a time, and slices its own shard locally (src_data_rank=None: no communication; any
    placement DTensor supports works, including FSDP-over-TP strided shards). Peak extra memory
    is one full parameter, not a copy of the model, and the values are exactly those of
    `build_model(cfg, seed)` in one process: the definition of "the same model" for every layout."""
    for part in parts:
        part.to_empty(device=device)
        part.init_buffers()
        for name, p in part.named_parameters():
            full = part.initial_value(name, seed)
            if isinstance(p, DTensor):
                shard = distribute_tensor(
                    full.to(device, p.dtype), p.device_mesh, p.placements, src_data_rank=None
                )
                p.to_local().copy_(shard.to_local())
            else:
                p.copy_(full.to(device, p.dtype))
            del full  # freed before the next parameter is generated: one full tensor at a time
