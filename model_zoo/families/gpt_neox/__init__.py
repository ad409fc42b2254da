"""Pythia / GPT-NeoX: LayerNorm with bias, parallel residual, 25% rotary, GeLU MLP of 4d, biases
everywhere, untied embeddings, GPT-NeoX init (small_init + wang_init). The GPT-NeoX-20B tokenizer
has 50,277 entries; the embedding is padded to a multiple of 128 x the TP degree used in training.
"""

from __future__ import annotations

from model_zoo.config import InitConfig, ModelConfig
from model_zoo.families.gpt_neox.hf import GPTNeoXAdapter
from model_zoo.families.spec import TINY, FamilySpec, shape

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

# Biderman et al. 2023, table 1; HF EleutherAI/pythia-* config.json. Rows: d_model, n_layers,
# n_heads, ffn_hidden_size (always 4 d_model).
SIZES = {
    "pythia-14m": shape(128, 6, 4, 4 * 128),
    "pythia-70m": shape(512, 6, 8, 4 * 512),
    "pythia-160m": shape(768, 12, 12, 4 * 768),
    "pythia-410m": shape(1024, 24, 16, 4 * 1024),
    "pythia-1b": shape(2048, 16, 8, 4 * 2048),
    "pythia-1.4b": shape(2048, 24, 16, 4 * 2048),
    "pythia-2.8b": shape(2560, 32, 32, 4 * 2560),
    # 6.9B was trained with TP=2 and 12B with TP=4: their vocab is padded to 256 and 512.
    "pythia-6.9b": shape(4096, 32, 32, 4 * 4096, pad_vocab_multiple=256),
    "pythia-12b": shape(5120, 36, 40, 4 * 5120, pad_vocab_multiple=512),
    "pythia-tiny": {**TINY, "pad_vocab_multiple": 64, "ffn_hidden_size": 256},
}

SPEC = FamilySpec(name="gpt_neox", base=PYTHIA, sizes=SIZES, hf_adapter=GPTNeoXAdapter())
