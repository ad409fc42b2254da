"""Transformations applied to one pipeline stage of a zoo model, in torchtitan's order:
tensor/sequence parallel, activation checkpointing, torch.compile, FSDP2. Plus FP8 conversion,
which runs earlier on the whole meta model.

Model code is untouched: plans address modules by their names in model_zoo/model.py
(`layers.<i>.attention.wq`, `feed_forward.w1`, ...).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.distributed.tensor import Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from configcore import need
from model_zoo.config import ModelConfig
from model_zoo.moe import GroupedExperts
from parallel import context_parallel
from parallel.axes import AXES
from parallel.config import FULL_PRECISIONS, RING_NEEDS_CUDA, param_dtype
from parallel.layout import Layout

# ------------------------------------------------------------------------------------------------
# FP8
# ------------------------------------------------------------------------------------------------
FP8_RECIPES = {"fp8_tensorwise": "tensorwise", "fp8_rowwise": "rowwise"}


def _fp8_filter(module: nn.Module, fqn: str) -> bool:
    """Which Linear layers become float8 (parallel.fp8_filter=divisible): not the output layer
    (its logits feed the loss and are the most precision-sensitive; torchtitan excludes it too),
    not the MoE router (tiny and decides discrete routing), and only those whose dims the scaled
    matmul supports (multiples of 16)."""
    if not isinstance(module, nn.Linear):
        return False
    if fqn == "output" or fqn.endswith("router.gate") or ".gate" in fqn.rsplit(".", 1)[-1]:
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def fp8_linear_filter(fp8_filter: str, precision: str):
    """The module filter of parallel.fp8_filter. `auto` is torchtitan's auto-filter
    (`float8.filter_fqns=["output"]` with `auto_filter_small_kn`, which calls torchao's
    `_auto_filter_for_recipe`): besides dims that are not multiples of 16, it leaves in bf16 the
    linears whose (out N, in K) are below torchao's H100 break-even: tensorwise K <= 4096 and
    N <= 1024; rowwise N <= 2048, or K <= 1024, or N <= 4096 and K <= 2048. Our router
    exclusion applies to both."""
    if fp8_filter == "divisible":
        return _fp8_filter
    from torchao.float8 import _auto_filter_for_recipe  # heavy optional dependency (torchao)

    auto = _auto_filter_for_recipe(FP8_RECIPES[precision], filter_fqns=["output"])
    return lambda module, fqn: _fp8_filter(module, fqn) and auto(module, fqn)


def convert_fp8(
    model: nn.Module,
    precision: str,
    fp8_filter: str = "divisible",
    fsdp_float8_all_gather: bool = False,
    moe_experts: bool = False,
) -> None:
    """Swap nn.Linear for torchao Float8Linear (dynamic scaling, tensorwise or rowwise) where
    the filter allows; with `fsdp_float8_all_gather`, FSDP2 all-gathers their weights in float8;
    with `moe_experts`, the GroupedExperts weights become torchao's float8 training tensors,
    whose torch._grouped_mm runs as a rowwise-scaled float8 grouped GEMM (check_gpu_features
    refuses it where it cannot run)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(FP8_RECIPES[precision])
    if fsdp_float8_all_gather:
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
    convert_to_float8_training(
        model, config=config, module_filter_fn=fp8_linear_filter(fp8_filter, precision)
    )
    if moe_experts:
        convert_fp8_experts(model)


def convert_fp8_experts(model: nn.Module) -> None:
    """torchao.prototype.moe_training (0.18): Float8TrainingOpConfig wraps the 3-D expert weights
    so that torch._grouped_mm on them quantises both operands rowwise to e4m3 and calls
    torch._scaled_grouped_mm (forward and both backward GEMMs)."""
    from torchao.prototype.moe_training.config import Float8TrainingOpConfig  # optional (torchao)
    from torchao.quantization import quantize_

    quantize_(
        model,
        Float8TrainingOpConfig(),
        filter_fn=lambda module, fqn: isinstance(module, GroupedExperts),
    )


def precompute_fp8_scales(model: nn.Module) -> None:
    """After each optimizer step under parallel.fp8_fsdp_all_gather: the float8 scales of all
    sharded weights in one all-reduce (torchtitan's Float8 post-optimizer hook), instead of one
    per weight inside the next forward's all-gather."""
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp  # optional (torchao)

    precompute_float8_dynamic_scale_for_fsdp(model)


def fp8_counts(model: nn.Module) -> dict[str, int]:
    """How many modules the FP8 conversion touched: float8 linears, linears left in high
    precision, expert modules whose weights are float8 training tensors."""
    from torchao.float8.float8_linear import Float8Linear  # optional (torchao)

    float8 = sum(isinstance(m, Float8Linear) for m in model.modules())
    linear = sum(type(m) is nn.Linear for m in model.modules())
    experts = sum(
        isinstance(m, GroupedExperts) and "TrainingWeightWrapper" in type(m.w1.data).__name__
        for m in model.modules()
    )
    return {"float8_linear": float8, "high_precision_linear": linear, "float8_experts": experts}


def check_gpu_features(cfg: ModelConfig, pcfg, layout: Layout, device_type: str) -> None:
    """Refuse, before any process group, the switches this hardware or layout cannot run."""
    where = f"on {device_type}"
    if pcfg.fp8_moe_experts:
        need(
            any(cfg.is_moe_layer(i) for i in range(cfg.n_layers)),
            f"parallel.fp8_moe_experts=true: model '{cfg.name}' has no MoE layers",
        )
        need(
            device_type == "cuda",
            f"parallel.fp8_moe_experts=true needs CUDA (a Hopper GPU): torchao's float8 grouped "
            f"GEMM runs Triton kernels and torch._scaled_grouped_mm, which do not run {where}",
        )
        need(
            cfg.moe.grouped_mm == "auto",
            "parallel.fp8_moe_experts=true needs model.moe.grouped_mm=auto (the float8 experts "
            "are a grouped GEMM; the per-expert loop has none)",
        )
        need(
            layout.ep == 1 and layout.tp == 1,
            "parallel.fp8_moe_experts=true runs with FSDP and pipeline layouts only: expert and "
            "tensor parallel distribute the expert weights themselves; set parallel.ep=1 tp=1",
        )
    if pcfg.fp8_fsdp_all_gather:
        need(
            device_type == "cuda",
            f"parallel.fp8_fsdp_all_gather=true needs CUDA: gloo cannot all-gather float8 "
            f"tensors ({where}); drop the switch",
        )
        need(
            layout.dp_shard > 1,
            f"parallel.fp8_fsdp_all_gather=true needs FSDP sharding (parallel.dp_shard > 1, got "
            f"{layout.dp_shard}): with one shard there is no all-gather to shrink",
        )
    if layout.cp > 1 and layout.cp_style == "ring":
        need(device_type == "cuda", RING_NEEDS_CUDA)
    if layout.cp > 1 and layout.cp_style == "alltoall":
        context_parallel.check_deepspeed()
    if device_type != "cuda":
        need(
            cfg.attention_kernel != "flex",
            f"model.attention_kernel=flex cannot train {where}: torch 2.13's FlexAttention has "
            "no CPU backward; use model.attention_kernel=auto (dense-mask SDPA off CUDA)",
        )


# ------------------------------------------------------------------------------------------------
# Tensor + sequence parallel
# ------------------------------------------------------------------------------------------------
def _tp_styles(precision: str):
    """The TP styles for a precision. Float8Linear modules under the plain styles compute their
    scales on DTensors (tensorwise amax is reduced across shards), so the math is the recipe's.
    torchao also has Float8ColwiseParallel & co., which all-gather activations already cast to
    float8 to halve TP traffic; gloo cannot carry float8 tensors ("Invalid scalar type"), so
    using them would split the cpu and cuda code paths. Not used: a bandwidth optimisation only."""
    return ColwiseParallel, RowwiseParallel, PrepareModuleInput


def _replicated_norm_over_sharded_dim():
    """OLMo-2's QK-norm normalises over all heads, but q/k leave a column-parallel projection
    sharded over heads: gather the features, normalise with the replicated weight, and hand back
    this rank's heads. Costs one all-gather of q and of k per layer."""
    return PrepareModuleInputOutput(
        input_layouts=(Shard(-1),),
        desired_input_layouts=(Replicate(),),
        input_kwarg_layouts=None,
        desired_input_kwarg_layouts=None,
        output_layouts=(Replicate(),),
        desired_output_layouts=(Shard(-1),),
        use_local_input=False,
        use_local_output=True,
    )


def _norm_over_local_heads():
    """Per-head QK-norm (Qwen3) under head-parallel TP: each rank normalises the heads it holds
    with the replicated weight. The input enters as a DTensor sharded over the heads dim, so the
    weight's gradient (a sum over heads) is a partial sum on each rank that DTensor sums over tp,
    as for the sequence-parallel norms; the output leaves as the local tensor of those heads."""
    return PrepareModuleInputOutput(
        input_layouts=(Shard(2),),
        desired_input_layouts=(Shard(2),),
        input_kwarg_layouts=None,
        desired_input_kwarg_layouts=None,
        output_layouts=(Shard(2),),
        desired_output_layouts=(Shard(2),),
        use_local_input=False,
        use_local_output=True,
    )


def _qk_norm_over_all_heads(Colwise, split_kv: bool):
    """qk_norm=full (OLMo-2, OLMoE): q (and k when its heads are split) leave their projection as
    DTensors for the norm's all-gather; k's norm stays a plain module when KV heads are replicated
    (see _replicate_kv_heads: it normalises all of them before the selection)."""
    plan = {
        "attention.wq": Colwise(use_local_output=False),
        "attention.q_norm": _replicated_norm_over_sharded_dim(),
    }
    if not split_kv:
        return plan, ("q_norm",)
    plan["attention.wk"] = Colwise(use_local_output=False)
    plan["attention.k_norm"] = _replicated_norm_over_sharded_dim()
    return plan, ("q_norm", "k_norm")


def _qk_norm_per_head(Colwise, split_kv: bool):
    """qk_norm=head (Qwen3): heads (b, s, h, d) after the view, dim 2 split over tp."""
    plan = {
        "attention.q_norm": _norm_over_local_heads(),
        "attention.k_norm": _norm_over_local_heads(),
    }
    return plan, ("q_norm", "k_norm")


# The TP plan of QK-norm, by the value of the `qk_norm` switch: (Colwise style, whether KV heads
# are split) -> the block plan's entries for it, and the norms whose replicated weights become
# DTensors on the tp mesh (their gradients summed over tp). Keyed by the model config's switch,
# not by family: a family is a set of switches (model_zoo/families/, which cannot import parallel/),
# so a new family with per-head or all-heads QK-norm runs under TP with nothing added here; only a
# new qk_norm value needs a row. "none" has no norm modules.
QK_NORM_TP_PLANS = {"full": _qk_norm_over_all_heads, "head": _qk_norm_per_head}


def _replicated_compute(n_extra_inputs: int):
    """Run a sub-module on the full sequence on every tp rank with its weights replicated:
    gather the sequence-sharded input, and hand back this rank's part of the sequence.

    Used for MoE layers (see docs/parallel.md): every rank computes the same
    output from the same input, so the replicated weights receive identical gradients on every
    rank without any reduction; the backward all-gathers the output gradient over the sequence."""
    return PrepareModuleInputOutput(
        input_layouts=(Shard(1),) + (None,) * n_extra_inputs,
        desired_input_layouts=(Replicate(),) + (None,) * n_extra_inputs,
        output_layouts=(Replicate(),),
        desired_output_layouts=(Shard(1),),
        use_local_input=True,
        use_local_output=True,
    )


class _AllReduceTailGrad(torch.autograd.Function):
    """Identity forward; in backward, sum the gradient of the last `n` features over the tp group.

    MLA's `wkv_a` output is [kv latent | shared rope key]. Under head-parallel TP the latent feeds
    the column-parallel `wkv_b`, whose input gradient is already summed over tp ranks, while the
    rope key is used by this rank's heads only, so its gradient is a partial sum. Summing just that
    part makes the whole output gradient complete and identical on every rank, so the replicated
    `wkv_a` weight gets the single-device gradient with no further reduction."""

    @staticmethod
    def forward(ctx, x, n, group):
        ctx.n, ctx.group = n, group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone()
        tail = grad[..., -ctx.n :].contiguous()
        dist.all_reduce(tail, group=ctx.group)
        grad[..., -ctx.n :] = tail
        return grad, None, None


class _SelectHeadsOfRank(torch.autograd.Function):
    """Forward: this tp rank's slice [start, stop) of the last dimension. Backward: the slice's
    gradient put back into a zero tensor of the full width and summed over the tp group.

    Used for KV heads replicated over tp (tp > n_kv_heads): every rank computes all KV heads with
    replicated wk/wv and keeps the one its query heads attend with. After the sum, the gradient of
    the full projection is complete (ranks sharing a KV head add their parts) and the same on
    every rank, so the replicated weights get the single-process gradient with no further
    reduction, and the gradient to the attention input is the whole contribution of k and v."""

    @staticmethod
    def forward(ctx, x, start, stop, group):
        ctx.start, ctx.stop, ctx.group, ctx.width = start, stop, group, x.shape[-1]
        return x[..., start:stop].contiguous()

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        full = grad.new_zeros(*grad.shape[:-1], ctx.width)
        full[..., ctx.start : ctx.stop] = grad
        dist.all_reduce(full, group=ctx.group)
        return full, None, None, None


def _local_input(module, args):
    """Hand a replicated plain module the local tensor of its (replicated) DTensor input. The
    default grad placement (Replicate) is right: _SelectHeadsOfRank makes that gradient complete
    and identical on every tp rank."""
    from torch.distributed.tensor import DTensor

    x = args[0]
    return (x.to_local() if isinstance(x, DTensor) else x,) + tuple(args[1:])


def _replicate_kv_heads(attn, cfg: ModelConfig, tp_mesh) -> None:
    """tp > n_kv_heads (tp a multiple of it): wk and wv (and OLMo-2's k_norm over all KV heads)
    stay replicated plain modules, and each rank keeps the KV head of its query heads: rank r of
    tp holds query heads [r*H/tp, (r+1)*H/tp), all of which attend with KV head r // (tp/kv).
    Megatron calls this replicating KV heads; the extra cost is computing every KV head on every
    rank (small: kv_dim <= tp * head_dim here) and one all-reduce of the k and v gradients."""
    tp, rank = tp_mesh.size(), tp_mesh.get_local_rank()
    head = rank // (tp // cfg.kv_heads)
    start, stop = head * cfg.dim_per_head, (head + 1) * cfg.dim_per_head
    group = tp_mesh.get_group()
    select = lambda mod, inp, out: _SelectHeadsOfRank.apply(out, start, stop, group)  # noqa: E731
    attn.wk.register_forward_pre_hook(_local_input)
    attn.wv.register_forward_pre_hook(_local_input)
    # "full" QK-norm normalises over all KV heads: select after it, so it sees all of them
    attn.wv.register_forward_hook(select)
    (attn.k_norm if attn.qk_norm == "full" else attn.wk).register_forward_hook(select)


def _mla_plan(block, cfg: ModelConfig, tp_mesh, Colwise, Rowwise, PrepareInput) -> dict:
    """Head-parallel MLA: query and kv up-projections column-parallel (heads split), output
    row-parallel; the low-rank down-projections (wq_a, wkv_a) and their norms stay replicated
    (plain weights: they are small and their gradients come out complete, see above)."""
    attn = block.attention
    plan = {
        # local output: the replicated down-projections are plain modules
        "attention": PrepareInput(
            input_layouts=(Shard(1), None, None, None),
            desired_input_layouts=(Replicate(), None, None, None),
            use_local_output=True,
        ),
        "attention.wkv_b": Colwise(),
        "attention.wo": Rowwise(output_layouts=Shard(1)),
    }
    plan["attention.wq" if hasattr(attn, "wq") else "attention.wq_b"] = Colwise()
    rope = cfg.mla.qk_rope_head_dim
    group = tp_mesh.get_group()
    attn.wkv_a.register_forward_hook(
        lambda mod, inp, out: _AllReduceTailGrad.apply(out, rope, group)
    )
    return plan


def apply_tp(model: nn.Module, cfg: ModelConfig, tp_mesh, precision: str) -> None:
    """Megatron-style TP with sequence parallel: between blocks activations are sharded over
    the sequence (norms run on seq/tp tokens); attention heads and MLP hidden units are split."""
    Colwise, Rowwise, PrepareInput = _tp_styles(precision)
    root_plan = {}
    if model.tok_embeddings is not None:
        root_plan["tok_embeddings"] = RowwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(1)
        )
    if model.norm is not None:
        root_plan["norm"] = SequenceParallel()
    if model.output is not None:
        # Logits stay a DTensor sharded over the vocabulary: the loss runs under loss_parallel.
        root_plan["output"] = ColwiseParallel(
            input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False
        )
    if root_plan:
        parallelize_module(model, tp_mesh, root_plan)
    # KV heads split over tp when it divides them, else replicated (layout.py checked that tp is
    # a multiple of n_kv_heads then)
    split_kv = cfg.mla.enabled or cfg.kv_heads % tp_mesh.size() == 0
    for block in model.layers.values():
        plan = {
            # local outputs: under OLMo-2's post-norm the norm's output is added to the plain
            # residual stream; the modules after a pre-norm take local seq-sharded inputs too
            "attention_norm": SequenceParallel(use_local_output=True),
            "ffn_norm": SequenceParallel(use_local_output=True),
        }
        if cfg.mla.enabled:
            plan.update(_mla_plan(block, cfg, tp_mesh, Colwise, Rowwise, PrepareInput))
        else:
            plan.update(
                {
                    # (x, cos, sin, attn_mask): x seq-sharded -> full sequence; the rest untouched
                    "attention": PrepareInput(
                        input_layouts=(Shard(1), None, None, None),
                        desired_input_layouts=(Replicate(), None, None, None),
                    ),
                    "attention.wq": Colwise(),
                    "attention.wo": Rowwise(output_layouts=Shard(1)),
                }
            )
            if split_kv:
                plan["attention.wk"] = Colwise()
                plan["attention.wv"] = Colwise()
            else:
                _replicate_kv_heads(block.attention, cfg, tp_mesh)
        qk_norm = "none" if cfg.mla.enabled else getattr(block.attention, "qk_norm", "none")
        distributed_norms: tuple[str, ...] = ()
        if qk_norm in QK_NORM_TP_PLANS:
            qk_plan, distributed_norms = QK_NORM_TP_PLANS[qk_norm](Colwise, split_kv)
            plan.update(qk_plan)
        if hasattr(block, "moe"):
            plan["moe"] = _replicated_compute(0)
        else:
            ffn = block.feed_forward
            plan["feed_forward"] = PrepareInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
            )
            plan["feed_forward.w1"] = Colwise()
            plan["feed_forward.w2"] = Rowwise(output_layouts=Shard(1))
            if hasattr(ffn, "w3"):
                plan["feed_forward.w3"] = Colwise()
        parallelize_module(block, tp_mesh, plan)
        for name in distributed_norms:  # replicated norm weights must be DTensors on tp too
            distribute_module(getattr(block.attention, name), tp_mesh)


# ------------------------------------------------------------------------------------------------
# Activation checkpointing, compile, FSDP
# ------------------------------------------------------------------------------------------------
def apply_ac(model: nn.Module, mode: str, every_n: int) -> None:
    """full: recompute every block in backward; selective: every `every_n`-th block (by global
    layer index, so the choice does not depend on the pipeline split). The composable
    `checkpoint` adds no wrapper module, so parameter names stay the single-device ones."""
    if mode == "none":
        return
    from torch.distributed._composable import checkpoint

    for key, block in model.layers.items():
        if mode == "full" or int(key) % every_n == 0:
            checkpoint(block)


def apply_compile(model: nn.Module) -> None:
    """Compile each block separately (the blocks are identical, so one graph is reused);
    `Module.compile` compiles in place and keeps parameter names."""
    for block in model.layers.values():
        block.compile()


def _fsdp_mesh(mesh, layout: Layout):
    """HSDP when dp_replicate > 1 (replicate over the first dim, shard over the second). Under
    context parallel the cp ranks hold the same weights and see other tokens: one more sharding
    axis (torchtitan's dp_shard_cp), whose reduce-scatter also sums their gradients."""
    shard = "dp_shard_ep_cp" if layout.cp > 1 else "dp_shard_ep"
    if layout.dp_replicate > 1:
        return mesh["dp_replicate", shard]
    return mesh[shard]


def apply_fsdp(model: nn.Module, mesh, layout: Layout) -> None:
    """FSDP2 (ZeRO-3): shard each block, then the rest of the stage (embeddings, norm, output).

    bf16/fp8: parameters are kept in fp32 (the optimizer's master copy) and cast to bf16 for
    compute; gradients are reduced in fp32. Gradient reduction sums instead of averaging because
    the loss is already normalised by the global token count (see engine.py)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if layout.precision in FULL_PRECISIONS:
        dtype = param_dtype(layout.precision)
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)
    else:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    dp_mesh = _fsdp_mesh(mesh, layout)
    # With a pipeline, a stage runs several micro-batches forward before their backward; keeping
    # the unsharded weights avoids one all-gather per micro-batch (torchtitan does the same).
    reshard = layout.pp == 1
    if layout.ep > 1:
        # Experts are already split over ep; FSDP shards them over the remaining data-parallel
        # ranks only (dp_shard, replicated over dp_replicate), in their own FSDP group.
        # Not over cp (see parallel/layout.py): the engine sums their gradients over cp.
        expert_mesh = (
            mesh["dp_replicate", "dp_shard"] if layout.dp_replicate > 1 else mesh["dp_shard"]
        )
        for block in model.layers.values():
            if hasattr(block, "moe"):
                fully_shard(
                    block.moe.experts, mesh=expert_mesh, mp_policy=mp, reshard_after_forward=reshard
                )
                block.moe.experts.set_gradient_divide_factor(1.0)
                block.moe.experts.set_force_sum_reduction_for_comms(True)
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
    for m in [model, *model.layers.values()]:
        # plain SUM (no PREMUL_SUM/AVG, which gloo lacks): one code path for gloo and nccl
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)


def apply_tensor_parallel(model: nn.Module, cfg: ModelConfig, layout: Layout, mesh) -> None:
    """tp's row of the axis table: the dense plan, and each routed expert split the same way
    (ETP = TP) where ep does not split the experts (under ep, apply_expert_parallel does both)."""
    if layout.tp == 1:
        return
    apply_tp(model, cfg, mesh["tp"], layout.precision)
    if layout.ep == 1:
        from parallel.expert_parallel import apply_expert_tp

        apply_expert_tp(model, mesh["tp"])


def apply_data_parallel(model: nn.Module, cfg: ModelConfig, layout: Layout, mesh) -> None:
    """dp_shard's row: FSDP over dp_shard x ep x cp, HSDP over dp_replicate. Also when dp == 1
    in bf16/fp8, so a single process runs the same mixed precision (fp32 master weights, bf16
    compute) as the sharded runs it is compared with; and under cp, whose ranks' gradients FSDP's
    reduce-scatter sums."""
    if layout.dp > 1 or layout.cp > 1 or layout.precision not in FULL_PRECISIONS:
        apply_fsdp(model, mesh, layout)


def parallelize_part(model: nn.Module, cfg: ModelConfig, layout: Layout, mesh) -> None:
    """Every axis's `apply` hook (parallel/axes.py) in table order, then activation
    checkpointing and compile, then the hooks that wrap what those made (FSDP)."""
    for axis in AXES:
        if axis.apply and not axis.apply_last:
            axis.apply_function()(model, cfg, layout, mesh)
    apply_ac(model, layout.activation_checkpointing, layout.ac_every_n)
    if layout.compile:
        apply_compile(model)
    for axis in AXES:
        if axis.apply and axis.apply_last:
            axis.apply_function()(model, cfg, layout, mesh)
