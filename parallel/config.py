"""The parallel layout config. Lives in parallel/ (not pretrain/) so the engine can validate a
layout without importing the training code; pretrain/config.py composes it into the run config.

Every field is a plain scalar or list so Hydra can override it from the command line
(`parallel.tp=2 parallel.pp=2 parallel.precision=bf16`). Checking the values
against a model and a world size is `parallel.layout.resolve_layout`, which needs no process group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from configcore import need
from parallel.axes import OPTIONS, REMAINDER_AXIS, SIZED_AXES, AxisSettings

PRECISIONS = ("fp32", "bf16", "fp8_tensorwise", "fp8_rowwise", "fp64")
# Precisions whose parameters are also the compute dtype (no FSDP2 mixed-precision cast).
FULL_PRECISIONS = ("fp32", "fp64")


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of the parameters (the optimizer's master copy) under `precision`."""
    return torch.float64 if precision == "fp64" else torch.float32


AC_MODES = ("none", "full", "selective")
DEVICES = ("auto", "cpu", "cuda")
FP8_FILTERS = ("divisible", "auto")


@dataclass
class ParallelConfig(AxisSettings):
    """Sizes of the device-mesh axes and the axes' own options, one field each from the axis
    table (parallel/axes.py: tp, pp, pp_schedule, dp_replicate, dp_shard, ep, cp, cp_style;
    dp_shard=-1 means "whatever is left of the world size"), and the switches of the engine
    below. See docs/parallel.md."""

    # fp32 | bf16 (bf16 compute, fp32 master weights and gradient reduction) | fp8_tensorwise |
    # fp8_rowwise (torchao float8 linears, everything else as bf16) | fp64 (float64 weights,
    # compute and reductions: rounding ~1e-16, so a layout can be checked against one process at
    # ~1e-10 whatever the CPU; the parity tests' precision, slow and never meant for training).
    precision: str = "fp32"
    # Which nn.Linear become float8 under fp8_*: divisible (every one whose dims are multiples of
    # 16) or auto (torchtitan's auto-filter: also leave in bf16 those too small to gain, by
    # torchao's H100 thresholds). The output layer and the MoE router stay bf16 under both.
    fp8_filter: str = "divisible"
    # FSDP2 all-gathers the float8 weights (half of bf16's bytes) instead of bf16 ones, with the
    # scales of all weights computed in one all-reduce after each optimizer step. fp8_tensorwise
    # and CUDA only (NCCL carries float8; gloo does not).
    fp8_fsdp_all_gather: bool = False
    # The MoE grouped experts in float8 too (torchao.prototype.moe_training, rowwise scales,
    # torch._scaled_grouped_mm): they carry most of an MoE model's FLOPs. CUDA (Hopper) only.
    fp8_moe_experts: bool = False
    # Micro-batches per optimizer step on each data-parallel rank; 0 means local_batch /
    # micro_batch_size (the same count gradient accumulation uses without a pipeline).
    pp_microbatches: int = 0
    # Stages per pipeline rank; 0 means the schedule's natural value (1 for a single-stage
    # schedule, 2 for a multi-stage one).
    pp_virtual_stages: int = 0
    # Layers per pipeline stage (length pp * virtual stages, summing to n_layers); empty = balanced.
    pp_split: list[int] = field(default_factory=list)
    # none | full (every block) | selective (every ac_every_n-th block).
    activation_checkpointing: str = "none"
    ac_every_n: int = 2
    # torch.compile each transformer block (keeps parameter names).
    compile: bool = False
    # auto: cuda when available, else cpu. One code path: nccl on cuda, gloo on cpu.
    device: str = "auto"

    def validate(self) -> ParallelConfig:
        """The checks no mesh shape could fix (their messages list the valid values); the ones
        against a model and a world size are parallel.layout.resolve_layout's."""
        for key, allowed in (
            ("precision", PRECISIONS),
            ("activation_checkpointing", AC_MODES),
            ("device", DEVICES),
            ("fp8_filter", FP8_FILTERS),
            *((option.name, option.choices()) for option in OPTIONS),  # the axes' own
        ):
            value = getattr(self, key)
            need(value in allowed, f"parallel.{key}={value!r} is not one of {', '.join(allowed)}")
        for key in SIZED_AXES:  # the axes' table, parallel/axes.py
            need(getattr(self, key) >= 1, f"parallel.{key}={getattr(self, key)} must be >= 1")
        rest = getattr(self, REMAINDER_AXIS)
        need(
            rest >= 1 or rest == -1,
            f"parallel.{REMAINDER_AXIS}={rest} must be >= 1 or -1 (the rest of the world)",
        )
        need(self.ac_every_n >= 1, f"parallel.ac_every_n={self.ac_every_n} must be >= 1")
        fp8 = self.precision.startswith("fp8")
        need(
            not self.fp8_fsdp_all_gather or self.precision == "fp8_tensorwise",
            f"parallel.fp8_fsdp_all_gather=true needs parallel.precision=fp8_tensorwise (got "
            f"{self.precision}): torchao all-gathers float8 weights with one scale per tensor only",
        )
        need(
            not self.fp8_moe_experts or fp8,
            f"parallel.fp8_moe_experts=true needs parallel.precision=fp8_tensorwise or "
            f"fp8_rowwise (got {self.precision})",
        )
        need(
            not (self.cp_style == "ring" and self.cp > 1 and self.device == "cpu"),
            RING_NEEDS_CUDA,
        )
        return self


RING_NEEDS_CUDA = (
    "parallel.cp_style=ring needs CUDA: torch's context_parallel has no CPU sharding strategy "
    "for SDPA; use parallel.cp_style=alltoall"
)
