"""Mixtral: Llama-like (GQA 8, SwiGLU, RMSNorm, pre-norm), every layer 8 experts with top-2 softmax
routing renormalised over the two (HF mistralai/Mixtral-8x7B-v0.1 config.json)."""

from __future__ import annotations

import copy
from dataclasses import replace

from model_zoo.config import MoEConfig, RopeScalingConfig
from model_zoo.families.llama import LLAMA3
from model_zoo.families.mixtral.hf import MixtralAdapter
from model_zoo.families.spec import TINY, FamilySpec, shape

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

# Totals/actives are checked in tests/model_zoo/test_zoo.py against Mistral AI's Mixtral
# announcement. Rows: d_model, n_layers, n_heads, ffn_hidden_size.
SIZES = {
    "mixtral-8x7b": shape(
        4096,
        32,
        32,
        14336,
        n_kv_heads=8,
        moe=MoEConfig(n_experts=8, top_k=2, expert_hidden_size=14336, norm_topk_prob=True),
    ),
    "mixtral-tiny": {
        **TINY,
        "n_kv_heads": 2,
        "ffn_hidden_size": 128,
        "bos_token_id": None,
        "eos_token_id": None,
        "moe": MoEConfig(n_experts=8, top_k=2, expert_hidden_size=128, norm_topk_prob=True),
    },
}

SPEC = FamilySpec(name="mixtral", base=MIXTRAL, sizes=SIZES, hf_adapter=MixtralAdapter())
