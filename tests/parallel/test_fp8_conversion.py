"""What the FP8 switches convert, counted module by module on CPU (meta-device models: nothing is
allocated, so a 1B model counts in a moment), and the switches refused where the hardware or
the layout cannot run them. The expected counts are derived here from the architecture numbers
and the published filter rules, not from the conversion code."""

import dataclasses

import pytest
from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

from configcore import ConfigError
from model_zoo import build_model, get_model_config
from parallel.config import ParallelConfig
from parallel.layout import resolve_layout
from parallel.parallelize import check_gpu_features, convert_fp8, fp8_counts


def converted(name, precision="fp8_tensorwise", **kw):
    model = build_model(get_model_config(name), device="meta")
    convert_fp8(model, precision, **kw)
    return model, fp8_counts(model)


def test_divisible_filter_dense_tiny():
    """llama3-tiny: 2 layers, d_model 64, 4 query / 2 KV heads of 16, SwiGLU hidden 192. Every
    projection (wq 64x64, wk/wv 32x64, wo 64x64, w1/w3 192x64, w2 64x192) has dims that are
    multiples of 16: 7 per layer are float8; the output layer stays high precision."""
    model, counts = converted("llama3-tiny")
    assert counts == {"float8_linear": 2 * 7, "high_precision_linear": 1, "float8_experts": 0}
    assert type(model.output).__name__ == "Linear"


def test_auto_filter_follows_torchtitans_thresholds():
    """torchtitan's auto-filter (torchao's thresholds, weight N x K = out x in):
    tensorwise skips K <= 4096 and N <= 1024; rowwise skips N <= 2048, K <= 1024, or
    (N <= 4096 and K <= 2048). OLMo2-1B: 16 layers, d 2048, 16 heads of 128 (wq/wk/wv/wo
    2048 x 2048), SwiGLU hidden 8192 (w1/w3 8192 x 2048, w2 2048 x 8192).
    tensorwise: every projection has N = 2048 > 1024 or K = 8192 > 4096 -> 7 x 16 = 112.
    rowwise: wq..wo and w2 have N = 2048 -> skipped; w1/w3 (N 8192, K 2048) kept -> 2 x 16.
    The tiny models fall below every threshold: nothing converted."""
    _, tensorwise = converted("olmo2-1b", "fp8_tensorwise", fp8_filter="auto")
    _, rowwise = converted("olmo2-1b", "fp8_rowwise", fp8_filter="auto")
    assert tensorwise["float8_linear"] == 112 and tensorwise["high_precision_linear"] == 1
    assert rowwise["float8_linear"] == 32 and rowwise["high_precision_linear"] == 16 * 5 + 1
    _, tiny = converted("llama3-tiny", fp8_filter="auto")
    assert tiny["float8_linear"] == 0 and tiny["high_precision_linear"] == 2 * 7 + 1


def test_moe_experts_and_router():
    """mixtral-tiny: 2 MoE layers of 8 experts (hidden 128), attention as llama3-tiny's.
    Attention projections: 4 per layer float8; the router gate (8 x 64) and the output stay
    high precision; with fp8_moe_experts both layers' grouped experts hold float8 training
    weights (w1, w2, w3 each)."""
    model, counts = converted("mixtral-tiny", moe_experts=True)
    assert counts == {"float8_linear": 2 * 4, "high_precision_linear": 2 + 1, "float8_experts": 2}
    experts = model.layers["0"].moe.experts
    names = {type(getattr(experts, w).data).__name__ for w in ("w1", "w2", "w3")}
    assert names == {"Float8TrainingWeightWrapperTensor"}
    _, plain = converted("mixtral-tiny")
    assert plain["float8_experts"] == 0
    # DeepSeek-V3-tiny: 3 layers, the first dense (first_k_dense 1): 2 layers of experts
    _, ds = converted("deepseek-v3-tiny", moe_experts=True)
    assert ds["float8_experts"] == 2


def test_fsdp_float8_all_gather_wraps_the_weights():
    model, _ = converted("llama3-tiny", fsdp_float8_all_gather=True)
    wq = model.layers["0"].attention.wq
    assert wq.config.enable_fsdp_float8_all_gather
    assert isinstance(wq.weight, WeightWithDynamicFloat8CastTensor)
    plain, _ = converted("llama3-tiny")
    assert not isinstance(plain.layers["0"].attention.wq.weight, WeightWithDynamicFloat8CastTensor)


def layout_of(cfg, world=2, **fields):
    return resolve_layout(ParallelConfig(**fields).validate(), world, cfg, 8, 2, 32)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"fp8_filter": "small"}, "parallel.fp8_filter='small' is not one of divisible, auto"),
        (
            {"precision": "fp8_rowwise", "fp8_fsdp_all_gather": True},
            "fp8_fsdp_all_gather=true needs parallel.precision=fp8_tensorwise",
        ),
        ({"precision": "bf16", "fp8_moe_experts": True}, "fp8_moe_experts=true needs parallel"),
    ],
)
def test_config_time_messages(fields, message):
    with pytest.raises(ConfigError, match=message):
        ParallelConfig(**fields).validate()


def test_hardware_and_layout_checks():
    moe, dense = get_model_config("mixtral-tiny"), get_model_config("llama3-tiny")
    experts = {"precision": "fp8_rowwise", "fp8_moe_experts": True}
    gather = {"precision": "fp8_tensorwise", "fp8_fsdp_all_gather": True}
    cases = [
        (moe, experts, "cpu", "fp8_moe_experts=true needs CUDA"),
        (dense, experts, "cuda", "model 'llama3-tiny' has no MoE layers"),
        (moe, {**experts, "tp": 2}, "cuda", "set parallel.ep=1 tp=1"),
        (dense, gather, "cpu", "gloo cannot all-gather float8"),
        (dense, {**gather, "tp": 2}, "cuda", r"needs FSDP sharding \(parallel.dp_shard > 1, got 1"),
    ]
    for cfg, fields, device, message in cases:
        pcfg = ParallelConfig(**fields).validate()
        with pytest.raises(ConfigError, match=message):
            check_gpu_features(cfg, pcfg, layout_of(cfg, **fields), device)
    no_grouped = dataclasses.replace(moe, moe=dataclasses.replace(moe.moe, grouped_mm="off"))
    with pytest.raises(ConfigError, match="needs model.moe.grouped_mm=auto"):
        check_gpu_features(no_grouped, ParallelConfig(**experts), layout_of(moe, **experts), "cuda")
    flex = dataclasses.replace(dense, attention_kernel="flex")
    with pytest.raises(ConfigError, match="attention_kernel=flex cannot train on cpu"):
        check_gpu_features(flex, ParallelConfig(), layout_of(dense), "cpu")
    # what CUDA can run passes: experts under FSDP, the all-gather with two shards
    check_gpu_features(moe, ParallelConfig(**experts), layout_of(moe, **experts), "cuda")
    check_gpu_features(dense, ParallelConfig(**gather), layout_of(dense, **gather), "cuda")
