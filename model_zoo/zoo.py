"""The zoo: named model configs of the published families, plus a `tiny` of each for tests.

Shapes are those of the released Hugging Face configs (config.json of EleutherAI/pythia-*,
allenai/OLMo-2-*, meta-llama/Llama-3.*); tests/test_zoo.py checks the parameter counts against the
published numbers and names where each number comes from.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Callable

from model_zoo.config import ConfigError, InitConfig, ModelConfig, RopeScalingConfig

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
    rope_scaling=RopeScalingConfig(type="llama3", factor=8.0, low_freq_factor=1.0,
                                   high_freq_factor=4.0, original_max_position=8192),
    max_seq_len=8192,
    init=InitConfig(scheme="normal", std=0.02, output_scheme="scaled_depth"),
    bos_token_id=128000,
    eos_token_id=128001,
)


def _shape(template: ModelConfig, name: str, **shape) -> ModelConfig:
    return replace(copy.deepcopy(template), name=name, **shape)


def _pythia(name: str, d: int, layers: int, heads: int, pad: int = 128) -> ModelConfig:
    return _shape(PYTHIA, name, d_model=d, n_layers=layers, n_heads=heads,
                  ffn_hidden_size=4 * d, pad_vocab_multiple=pad)


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
    "pythia-tiny": lambda: _shape(PYTHIA, "pythia-tiny", vocab_size=1024, pad_vocab_multiple=64,
                                  d_model=64, n_layers=2, n_heads=4, ffn_hidden_size=256,
                                  max_seq_len=256),
    # OLMo-2 (HF allenai/OLMo-2-0425-1B, OLMo-2-1124-7B, OLMo-2-1124-13B config.json)
    "olmo2-1b": lambda: _shape(OLMO2, "olmo2-1b", d_model=2048, n_layers=16, n_heads=16,
                               ffn_hidden_size=8192),
    "olmo2-7b": lambda: _shape(OLMO2, "olmo2-7b", d_model=4096, n_layers=32, n_heads=32,
                               ffn_hidden_size=11008),
    "olmo2-13b": lambda: _shape(OLMO2, "olmo2-13b", d_model=5120, n_layers=40, n_heads=40,
                                ffn_hidden_size=13824),
    "olmo2-tiny": lambda: _shape(OLMO2, "olmo2-tiny", vocab_size=1024, d_model=64, n_layers=2,
                                 n_heads=4, ffn_hidden_size=192, max_seq_len=256,
                                 eos_token_id=None),
    # Llama-3 (HF meta-llama/Llama-3.2-1B, -3B, Llama-3.1-8B, -70B config.json). 3.2 uses rope
    # scaling factor 32 and ties its embeddings.
    "llama3.2-1b": lambda: _shape(LLAMA3, "llama3.2-1b", d_model=2048, n_layers=16, n_heads=32,
                                  n_kv_heads=8, ffn_hidden_size=8192, tie_embeddings=True,
                                  max_seq_len=131072,
                                  rope_scaling=RopeScalingConfig(type="llama3", factor=32.0)),
    "llama3.2-3b": lambda: _shape(LLAMA3, "llama3.2-3b", d_model=3072, n_layers=28, n_heads=24,
                                  n_kv_heads=8, head_dim=128, ffn_hidden_size=8192,
                                  tie_embeddings=True, max_seq_len=131072,
                                  rope_scaling=RopeScalingConfig(type="llama3", factor=32.0)),
    "llama3.1-8b": lambda: _shape(LLAMA3, "llama3.1-8b", d_model=4096, n_layers=32, n_heads=32,
                                  n_kv_heads=8, ffn_hidden_size=14336, max_seq_len=131072),
    "llama3.1-70b": lambda: _shape(LLAMA3, "llama3.1-70b", d_model=8192, n_layers=80,
                                   n_heads=64, n_kv_heads=8, ffn_hidden_size=28672,
                                   max_seq_len=131072),
    # Llama-3.1 scaling kept on with an original context of 64 so tests exercise it at 256.
    "llama3-tiny": lambda: _shape(LLAMA3, "llama3-tiny", vocab_size=1024, d_model=64, n_layers=2,
                                  n_heads=4, n_kv_heads=2, ffn_hidden_size=192, max_seq_len=256,
                                  rope_scaling=RopeScalingConfig(type="llama3", factor=8.0,
                                                                 original_max_position=64),
                                  bos_token_id=None, eos_token_id=None),
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
