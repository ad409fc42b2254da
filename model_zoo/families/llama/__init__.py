"""Llama-3: pre-norm RMSNorm, GQA with 8 KV heads, SwiGLU, rope theta 500k with Llama-3.1 scaling,
torchtitan's init (0.02, depth-scaled output projections)."""

from __future__ import annotations

from model_zoo.config import InitConfig, ModelConfig, RopeScalingConfig
from model_zoo.families.llama.hf import LlamaAdapter
from model_zoo.families.spec import TINY, FamilySpec, shape

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

# Llama-3.2 uses rope scaling factor 32 and ties its embeddings.
LLAMA3_2 = {
    "tie_embeddings": True,
    "max_seq_len": 131072,
    "rope_scaling": RopeScalingConfig(type="llama3", factor=32.0),
}

# HF meta-llama/Llama-3.2-1B, -3B, Llama-3.1-8B, -70B config.json. Rows: d_model, n_layers,
# n_heads, ffn_hidden_size.
SIZES = {
    "llama3.2-1b": shape(2048, 16, 32, 8192, n_kv_heads=8, **LLAMA3_2),
    "llama3.2-3b": shape(3072, 28, 24, 8192, n_kv_heads=8, head_dim=128, **LLAMA3_2),
    "llama3.1-8b": shape(4096, 32, 32, 14336, n_kv_heads=8, max_seq_len=131072),
    "llama3.1-70b": shape(8192, 80, 64, 28672, n_kv_heads=8, max_seq_len=131072),
    # Llama-3.1 scaling kept on with an original context of 64 so tests exercise it at 256.
    "llama3-tiny": {
        **TINY,
        "n_kv_heads": 2,
        "ffn_hidden_size": 192,
        "rope_scaling": RopeScalingConfig(type="llama3", factor=8.0, original_max_position=64),
        "bos_token_id": None,
        "eos_token_id": None,
    },
}

SPEC = FamilySpec(name="llama", base=LLAMA3, sizes=SIZES, hf_adapter=LlamaAdapter())
