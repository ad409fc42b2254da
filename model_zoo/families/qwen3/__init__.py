"""Qwen3 (dense): Llama-like pre-norm RMSNorm, GQA with 8 KV heads, SwiGLU, no biases, plus an
RMSNorm over each head of q and k before RoPE (qk_norm=head), head_dim 128 in every size, rope
theta 1e6, embeddings tied up to 4B. Values of the Hub's Qwen/Qwen3-{0.6B,1.7B,4B,8B}-Base
config.json (the base, i.e. pretrained, models: context 32,768 and <|endoftext|> = 151643 as
BOS and EOS; the post-trained Qwen/Qwen3-* share the shapes)."""

from __future__ import annotations

from model_zoo.config import InitConfig, ModelConfig
from model_zoo.families.qwen3.hf import Qwen3Adapter
from model_zoo.families.spec import TINY, FamilySpec, shape

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

# HF Qwen/Qwen3-*-Base config.json; counts checked in tests/model_zoo/test_qwen3.py. Rows: d_model,
# n_layers, n_heads, ffn_hidden_size.
SIZES = {
    "qwen3-0.6b": shape(1024, 28, 16, 3072, tie_embeddings=True),
    "qwen3-1.7b": shape(2048, 28, 16, 6144, tie_embeddings=True),
    "qwen3-4b": shape(2560, 36, 32, 9728, tie_embeddings=True),
    "qwen3-8b": shape(4096, 36, 32, 12288),
    # head_dim 32 with d_model 64 and 4 heads: q is wider than the residual, as in Qwen3-0.6B
    # (16 x 128 = 2048 > 1024), so the explicit head_dim is exercised; tied as the small sizes.
    "qwen3-tiny": {
        **TINY,
        "n_kv_heads": 2,
        "head_dim": 32,
        "ffn_hidden_size": 192,
        "tie_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": None,
    },
}

SPEC = FamilySpec(name="qwen3", base=QWEN3, sizes=SIZES, hf_adapter=Qwen3Adapter())
