"""The zoo: named model configs of the published families, plus a `tiny` of each for tests.

Shapes are those of the released Hugging Face configs (config.json of EleutherAI/pythia-*,
allenai/OLMo-2-*, meta-llama/Llama-3.*, Qwen/Qwen3-*); tests/model_zoo/test_zoo.py and
test_qwen3.py check the parameter counts against the published numbers and name where each number
comes from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

from model_zoo.config import (
    ConfigError,
    InitConfig,
    MLAConfig,
    ModelConfig,
    MoEConfig,
    RopeScalingConfig,
)

# ---------------------------------------------------------------------------------------------
# Family templates: everything but the shape.
# ---------------------------------------------------------------------------------------------
# Pythia / GPT-NeoX: LayerNorm with bias, parallel residual, 25% rotary, GeLU MLP of 4d, biases
# everywhere, untied embeddings, GPT-NeoX init (small_init + wang_init). The GPT-NeoX-20B tokenizer
# has 50,277 entries; the embedding is padded to a multiple of 128 x the TP degree used in training.
PYTHIA = ModelConfig(
    family="gpt_neox",
    vocab_size=50277,
    pad_vocab_multiple=128,
    activation="gelu",
    norm="layernorm",
    norm_eps=1e-5,
    norm_bias=True,
    norm_position="pre",
    parallel_residual=True,
    qkv_bias=True,
    attn_out_bias=True,
    mlp_bias=True,
    rope_theta=10000.0,
    rotary_fraction=0.25,
    max_seq_len=2048,
    tie_embeddings=False,
    init=InitConfig(scheme="small_init", output_scheme="wang"),
    bos_token_id=0,
    eos_token_id=0,
)

# OLMo-2: RMSNorm after each sublayer ("reordered norm"), QK-norm over all heads, SwiGLU, no biases,
# rope theta 500k, untied embeddings, N(0, 0.02) truncated at 3 std (OLMo-core's init).
OLMO2 = ModelConfig(
    family="olmo2",
    vocab_size=100352,
    activation="swiglu",
    norm="rmsnorm",
    norm_eps=1e-6,
    norm_position="post",
    qk_norm="full",
    rope_theta=500000.0,
    max_seq_len=4096,
    tie_embeddings=False,
    init=InitConfig(scheme="normal", std=0.02, output_scheme="same", truncation=3.0),
    eos_token_id=100257,
)

# Llama-3: pre-norm RMSNorm, GQA with 8 KV heads, SwiGLU, rope theta 500k with Llama-3.1 scaling,
# torchtitan's init (0.02, depth-scaled output projections).
LLAMA3 = ModelConfig(
    family="llama",
    vocab_size=128256,
    activation="swiglu",
    norm="rmsnorm",
    norm_eps=1e-5,
    norm_position="pre",
    rope_theta=500000.0,
    rope_scaling=RopeScalingConfig(
        type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position=8192,
    ),
    max_seq_len=8192,
    init=InitConfig(scheme="normal", std=0.02, output_scheme="scaled_depth"),
    bos_token_id=128000,
    eos_token_id=128001,
)


# Qwen3 (dense): Llama-like pre-norm RMSNorm, GQA with 8 KV heads, SwiGLU, no biases, plus an
# RMSNorm over each head of q and k before RoPE (qk_norm=head), head_dim 128 in every size, rope
# theta 1e6, embeddings tied up to 4B. Values of the Hub's Qwen/Qwen3-{0.6B,1.7B,4B,8B}-Base
# config.json (the base, i.e. pretrained, models: context 32,768 and <|endoftext|> = 151643 as
# BOS and EOS; the post-trained Qwen/Qwen3-* share the shapes).
QWEN3 = ModelConfig(
    family="qwen3",
    vocab_size=151936,
    n_kv_heads=8,
    head_dim=128,
    activation="swiglu",
    norm="rmsnorm",
    norm_eps=1e-6,
    norm_position="pre",
    qk_norm="head",
    rope_theta=1000000.0,
    max_seq_len=32768,
    init=InitConfig(scheme="normal", std=0.02, output_scheme="scaled_depth"),
    bos_token_id=151643,
    eos_token_id=151643,
)


# Mixtral: Llama-like (GQA 8, SwiGLU, RMSNorm, pre-norm), every layer 8 experts with top-2 softmax
# routing renormalised over the two (HF mistralai/Mixtral-8x7B-v0.1 config.json).
MIXTRAL = replace(
    copy.deepcopy(LLAMA3),
    family="mixtral",
    vocab_size=32000,
    rope_theta=1e6,
    rope_scaling=RopeScalingConfig(),
    max_seq_len=32768,
    bos_token_id=1,
    eos_token_id=2,
)

# OLMoE: OLMo-style QK-norm over all heads but pre-norm, 64 experts with top-8 softmax routing,
# weights not renormalised (HF allenai/OLMoE-1B-7B-0924 config.json).
OLMOE = replace(
    copy.deepcopy(OLMO2),
    family="olmoe",
    vocab_size=50304,
    norm_eps=1e-5,
    norm_position="pre",
    rope_theta=10000.0,
    eos_token_id=50279,
    init=InitConfig(scheme="normal", std=0.02, output_scheme="same"),
)

# DeepSeek: MLA attention, shared + routed experts, first layers dense, YaRN rope scaling.
DEEPSEEK = ModelConfig(
    family="deepseek_v3",
    activation="swiglu",
    norm="rmsnorm",
    norm_eps=1e-6,
    norm_position="pre",
    rope_theta=10000.0,
    max_seq_len=163840,
    init=InitConfig(scheme="normal", std=0.006, output_scheme="same"),
)


def _shape(template: ModelConfig, name: str, **shape) -> ModelConfig:
    return replace(copy.deepcopy(template), name=name, **shape)


def _pythia(name: str, d: int, layers: int, heads: int, pad: int = 128) -> ModelConfig:
    return _shape(
        PYTHIA,
        name,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        ffn_hidden_size=4 * d,
        pad_vocab_multiple=pad,
    )


_ZOO: dict[str, Callable[[], ModelConfig]] = {
    # Pythia (Biderman et al. 2023, table 1; HF EleutherAI/pythia-* config.json)
    "pythia-14m": lambda: _pythia("pythia-14m", 128, 6, 4),
    "pythia-70m": lambda: _pythia("pythia-70m", 512, 6, 8),
    "pythia-160m": lambda: _pythia("pythia-160m", 768, 12, 12),
    "pythia-410m": lambda: _pythia("pythia-410m", 1024, 24, 16),
    "pythia-1b": lambda: _pythia("pythia-1b", 2048, 16, 8),
    "pythia-1.4b": lambda: _pythia("pythia-1.4b", 2048, 24, 16),
    "pythia-2.8b": lambda: _pythia("pythia-2.8b", 2560, 32, 32),
    # 6.9B was trained with TP=2 and 12B with TP=4: their vocab is padded to 256 and 512.
    "pythia-6.9b": lambda: _pythia("pythia-6.9b", 4096, 32, 32, pad=256),
    "pythia-12b": lambda: _pythia("pythia-12b", 5120, 36, 40, pad=512),
    "pythia-tiny": lambda: _shape(
        PYTHIA,
        "pythia-tiny",
        vocab_size=1024,
        pad_vocab_multiple=64,
        d_model=64,
        n_layers=2,
        n_heads=4,
        ffn_hidden_size=256,
        max_seq_len=256,
    ),
    # OLMo-2 (HF allenai/OLMo-2-0425-1B, OLMo-2-1124-7B, OLMo-2-1124-13B config.json)
    "olmo2-1b": lambda: _shape(
        OLMO2, "olmo2-1b", d_model=2048, n_layers=16, n_heads=16, ffn_hidden_size=8192
    ),
    "olmo2-7b": lambda: _shape(
        OLMO2, "olmo2-7b", d_model=4096, n_layers=32, n_heads=32, ffn_hidden_size=11008
    ),
    "olmo2-13b": lambda: _shape(
        OLMO2, "olmo2-13b", d_model=5120, n_layers=40, n_heads=40, ffn_hidden_size=13824
    ),
    "olmo2-tiny": lambda: _shape(
        OLMO2,
        "olmo2-tiny",
        vocab_size=1024,
        d_model=64,
        n_layers=2,
        n_heads=4,
        ffn_hidden_size=192,
        max_seq_len=256,
        eos_token_id=None,
    ),
    # Llama-3 (HF meta-llama/Llama-3.2-1B, -3B, Llama-3.1-8B, -70B config.json). 3.2 uses rope
    # scaling factor 32 and ties its embeddings.
    "llama3.2-1b": lambda: _shape(
        LLAMA3,
        "llama3.2-1b",
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        ffn_hidden_size=8192,
        tie_embeddings=True,
        max_seq_len=131072,
        rope_scaling=RopeScalingConfig(type="llama3", factor=32.0),
    ),
    "llama3.2-3b": lambda: _shape(
        LLAMA3,
        "llama3.2-3b",
        d_model=3072,
        n_layers=28,
        n_heads=24,
        n_kv_heads=8,
        head_dim=128,
        ffn_hidden_size=8192,
        tie_embeddings=True,
        max_seq_len=131072,
        rope_scaling=RopeScalingConfig(type="llama3", factor=32.0),
    ),
    "llama3.1-8b": lambda: _shape(
        LLAMA3,
        "llama3.1-8b",
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_hidden_size=14336,
        max_seq_len=131072,
    ),
    "llama3.1-70b": lambda: _shape(
        LLAMA3,
        "llama3.1-70b",
        d_model=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        ffn_hidden_size=28672,
        max_seq_len=131072,
    ),
    # Llama-3.1 scaling kept on with an original context of 64 so tests exercise it at 256.
    "llama3-tiny": lambda: _shape(
        LLAMA3,
        "llama3-tiny",
        vocab_size=1024,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden_size=192,
        max_seq_len=256,
        rope_scaling=RopeScalingConfig(type="llama3", factor=8.0, original_max_position=64),
        bos_token_id=None,
        eos_token_id=None,
    ),
    # Qwen3 (HF Qwen/Qwen3-*-Base config.json; counts checked in tests/model_zoo/test_qwen3.py)
    "qwen3-0.6b": lambda: _shape(
        QWEN3,
        "qwen3-0.6b",
        d_model=1024,
        n_layers=28,
        n_heads=16,
        ffn_hidden_size=3072,
        tie_embeddings=True,
    ),
    "qwen3-1.7b": lambda: _shape(
        QWEN3,
        "qwen3-1.7b",
        d_model=2048,
        n_layers=28,
        n_heads=16,
        ffn_hidden_size=6144,
        tie_embeddings=True,
    ),
    "qwen3-4b": lambda: _shape(
        QWEN3,
        "qwen3-4b",
        d_model=2560,
        n_layers=36,
        n_heads=32,
        ffn_hidden_size=9728,
        tie_embeddings=True,
    ),
    "qwen3-8b": lambda: _shape(
        QWEN3,
        "qwen3-8b",
        d_model=4096,
        n_layers=36,
        n_heads=32,
        ffn_hidden_size=12288,
    ),
    # head_dim 32 with d_model 64 and 4 heads: q is wider than the residual, as in Qwen3-0.6B
    # (16 x 128 = 2048 > 1024), so the explicit head_dim is exercised; tied as the small sizes.
    "qwen3-tiny": lambda: _shape(
        QWEN3,
        "qwen3-tiny",
        vocab_size=1024,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        ffn_hidden_size=192,
        max_seq_len=256,
        tie_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    ),
    # Mixture of experts. Totals/actives are checked in tests/model_zoo/test_zoo.py against the publishers'
    # numbers (Mistral AI's Mixtral announcement, the OLMoE and DeepSeek-V2/V3 papers).
    "mixtral-8x7b": lambda: _shape(
        MIXTRAL,
        "mixtral-8x7b",
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_hidden_size=14336,
        moe=MoEConfig(n_experts=8, top_k=2, expert_hidden_size=14336, norm_topk_prob=True),
    ),
    "mixtral-tiny": lambda: _shape(
        MIXTRAL,
        "mixtral-tiny",
        vocab_size=1024,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden_size=128,
        max_seq_len=256,
        bos_token_id=None,
        eos_token_id=None,
        moe=MoEConfig(n_experts=8, top_k=2, expert_hidden_size=128, norm_topk_prob=True),
    ),
    "olmoe-1b-7b": lambda: _shape(
        OLMOE,
        "olmoe-1b-7b",
        d_model=2048,
        n_layers=16,
        n_heads=16,
        ffn_hidden_size=1024,
        moe=MoEConfig(
            n_experts=64, top_k=8, expert_hidden_size=1024, aux_loss_coef=0.01, z_loss_coef=0.001
        ),
    ),
    "olmoe-tiny": lambda: _shape(
        OLMOE,
        "olmoe-tiny",
        vocab_size=1024,
        d_model=64,
        n_layers=2,
        n_heads=4,
        ffn_hidden_size=64,
        max_seq_len=256,
        eos_token_id=None,
        moe=MoEConfig(
            n_experts=8, top_k=2, expert_hidden_size=64, aux_loss_coef=0.01, z_loss_coef=0.001
        ),
    ),
    "deepseek-v2-lite": lambda: _shape(
        DEEPSEEK,
        "deepseek-v2-lite",
        family="deepseek_v2",
        vocab_size=102400,
        d_model=2048,
        n_layers=27,
        n_heads=16,
        ffn_hidden_size=10944,
        bos_token_id=100000,
        eos_token_id=100001,
        moe=MoEConfig(
            n_experts=64,
            top_k=6,
            expert_hidden_size=1408,
            n_shared_experts=2,
            first_k_dense=1,
            router="softmax",
            aux_loss_coef=0.001,
        ),
        mla=MLAConfig(
            q_lora_rank=0,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
        ),
        rope_scaling=RopeScalingConfig(
            type="yarn", factor=40.0, original_max_position=4096, mscale=0.707, mscale_all_dim=0.707
        ),
    ),
    "deepseek-v2-lite-tiny": lambda: _shape(
        DEEPSEEK,
        "deepseek-v2-lite-tiny",
        family="deepseek_v2",
        vocab_size=1024,
        d_model=64,
        n_layers=3,
        n_heads=4,
        ffn_hidden_size=192,
        max_seq_len=256,
        moe=MoEConfig(
            n_experts=8,
            top_k=2,
            expert_hidden_size=32,
            n_shared_experts=2,
            first_k_dense=1,
            router="softmax",
            n_group=4,
            topk_group=2,
        ),
        mla=MLAConfig(
            q_lora_rank=0, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16
        ),
    ),
    "deepseek-v3": lambda: _shape(
        DEEPSEEK,
        "deepseek-v3",
        vocab_size=129280,
        d_model=7168,
        n_layers=61,
        n_heads=128,
        ffn_hidden_size=18432,
        bos_token_id=0,
        eos_token_id=1,
        moe=MoEConfig(
            n_experts=256,
            top_k=8,
            expert_hidden_size=2048,
            n_shared_experts=1,
            first_k_dense=3,
            router="sigmoid",
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            n_group=8,
            topk_group=4,
            bias_update_speed=0.001,
        ),
        mla=MLAConfig(
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
        ),
        rope_scaling=RopeScalingConfig(
            type="yarn", factor=40.0, original_max_position=4096, mscale=1.0, mscale_all_dim=1.0
        ),
    ),
    "deepseek-v3-tiny": lambda: _shape(
        DEEPSEEK,
        "deepseek-v3-tiny",
        vocab_size=1024,
        d_model=64,
        n_layers=3,
        n_heads=4,
        ffn_hidden_size=192,
        max_seq_len=256,
        moe=MoEConfig(
            n_experts=16,
            top_k=4,
            expert_hidden_size=32,
            n_shared_experts=1,
            first_k_dense=1,
            router="sigmoid",
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            n_group=4,
            topk_group=2,
            bias_update_speed=0.001,
        ),
        mla=MLAConfig(
            q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16
        ),
        rope_scaling=RopeScalingConfig(
            type="yarn", factor=4.0, original_max_position=64, mscale=1.0, mscale_all_dim=1.0
        ),
    ),
}


def zoo_names() -> list[str]:
    return list(_ZOO)


def get_model_config(name: str) -> ModelConfig:
    """A fresh copy of the named config. Unknown names list the known ones."""
    try:
        factory = _ZOO[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(zoo_names())}"
        ) from None
    return factory().validate()
