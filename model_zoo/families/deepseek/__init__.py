"""DeepSeek-V2 and -V3, two families (two Hugging Face architectures) of one template: MLA
attention, shared + routed experts, first layers dense, YaRN rope scaling. Totals/actives are
checked in tests/model_zoo/test_zoo.py against the DeepSeek-V2/V3 papers."""

from __future__ import annotations

import copy
from dataclasses import replace

from model_zoo.config import InitConfig, MLAConfig, ModelConfig, MoEConfig, RopeScalingConfig
from model_zoo.families.deepseek.hf import DeepseekV2Adapter, DeepseekV3Adapter
from model_zoo.families.spec import TINY, FamilySpec, shape

DEEPSEEK_V3 = ModelConfig(
    family="deepseek_v3",
    activation="swiglu",
    norm="rmsnorm",
    norm_eps=1e-6,
    norm_position="pre",
    rope_theta=10000.0,
    max_seq_len=163840,
    init=InitConfig(scheme="normal", std=0.006, output_scheme="same"),
)
DEEPSEEK_V2 = replace(copy.deepcopy(DEEPSEEK_V3), family="deepseek_v2")


def experts(n_experts: int, top_k: int, hidden: int, shared: int, first_k_dense: int, **other):
    """A size's MoEConfig as a row: routed experts, how many a token picks, their hidden size, the
    shared experts every token uses, the dense layers before the first MoE layer; then the rest."""
    return MoEConfig(
        n_experts=n_experts,
        top_k=top_k,
        expert_hidden_size=hidden,
        n_shared_experts=shared,
        first_k_dense=first_k_dense,
        **other,
    )


# V3's routing: sigmoid scores, the top k renormalised then scaled by 2.5, and the auxiliary-loss-free
# selection bias that balances the experts. V2 routes by softmax.
V3_ROUTING = {
    "router": "sigmoid",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "bias_update_speed": 0.001,
}
# Multi-head latent attention of both releases (V3 also compresses its queries: q_lora_rank) and of
# their tinies: the kv latent, then each head's unrotated, rotated and value dims.
MLA_RELEASED = {
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
}
MLA_TINY = {"kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16}


def yarn(factor: float, original_max_position: int, mscale: float) -> RopeScalingConfig:
    return RopeScalingConfig(
        type="yarn",
        factor=factor,
        original_max_position=original_max_position,
        mscale=mscale,
        mscale_all_dim=mscale,
    )


# HF deepseek-ai/DeepSeek-V2-Lite and DeepSeek-V3 config.json. Rows: d_model, n_layers, n_heads,
# ffn_hidden_size (the dense layers' MLP).
V2_SIZES = {
    "deepseek-v2-lite": shape(
        2048,
        27,
        16,
        10944,
        vocab_size=102400,
        bos_token_id=100000,
        eos_token_id=100001,
        moe=experts(64, 6, 1408, 2, 1, router="softmax", aux_loss_coef=0.001),
        mla=MLAConfig(q_lora_rank=0, **MLA_RELEASED),
        rope_scaling=yarn(40.0, 4096, 0.707),
    ),
    "deepseek-v2-lite-tiny": {
        **TINY,
        "n_layers": 3,
        "ffn_hidden_size": 192,
        "moe": experts(8, 2, 32, 2, 1, router="softmax", n_group=4, topk_group=2),
        "mla": MLAConfig(q_lora_rank=0, **MLA_TINY),
    },
}

V3_SIZES = {
    "deepseek-v3": shape(
        7168,
        61,
        128,
        18432,
        vocab_size=129280,
        bos_token_id=0,
        eos_token_id=1,
        moe=experts(256, 8, 2048, 1, 3, n_group=8, topk_group=4, **V3_ROUTING),
        mla=MLAConfig(q_lora_rank=1536, **MLA_RELEASED),
        rope_scaling=yarn(40.0, 4096, 1.0),
    ),
    "deepseek-v3-tiny": {
        **TINY,
        "n_layers": 3,
        "ffn_hidden_size": 192,
        "moe": experts(16, 4, 32, 1, 1, n_group=4, topk_group=2, **V3_ROUTING),
        "mla": MLAConfig(q_lora_rank=48, **MLA_TINY),
        "rope_scaling": yarn(4.0, 64, 1.0),
    },
}

V2_SPEC = FamilySpec(
    name="deepseek_v2", base=DEEPSEEK_V2, sizes=V2_SIZES, hf_adapter=DeepseekV2Adapter()
)
V3_SPEC = FamilySpec(
    name="deepseek_v3", base=DEEPSEEK_V3, sizes=V3_SIZES, hf_adapter=DeepseekV3Adapter()
)
