"""OLMo-2: RMSNorm after each sublayer ("reordered norm"), QK-norm over all heads, SwiGLU, no biases,
rope theta 500k, untied embeddings, N(0, 0.02) truncated at 3 std (OLMo-core's init)."""

from __future__ import annotations

from model_zoo.config import InitConfig, ModelConfig
from model_zoo.families.olmo2.hf import Olmo2Adapter
from model_zoo.families.spec import TINY, FamilySpec, shape

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

# HF allenai/OLMo-2-0425-1B, OLMo-2-1124-7B, OLMo-2-1124-13B config.json. Rows: d_model, n_layers,
# n_heads, ffn_hidden_size.
SIZES = {
    "olmo2-1b": shape(2048, 16, 16, 8192),
    "olmo2-7b": shape(4096, 32, 32, 11008),
    "olmo2-13b": shape(5120, 40, 40, 13824),
    "olmo2-tiny": {**TINY, "ffn_hidden_size": 192, "eos_token_id": None},
}

SPEC = FamilySpec(name="olmo2", base=OLMO2, sizes=SIZES, hf_adapter=Olmo2Adapter())
