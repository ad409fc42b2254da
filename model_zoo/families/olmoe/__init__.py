"""OLMoE: OLMo-style QK-norm over all heads but pre-norm, 64 experts with top-8 softmax routing,
weights not renormalised (HF allenai/OLMoE-1B-7B-0924 config.json)."""

from __future__ import annotations

import copy
from dataclasses import replace

from model_zoo.config import InitConfig, MoEConfig
from model_zoo.families.olmo2 import OLMO2
from model_zoo.families.olmoe.hf import OlmoeAdapter
from model_zoo.families.spec import TINY, FamilySpec, shape

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

# Totals/actives are checked in tests/model_zoo/test_zoo.py against the OLMoE paper. Rows: d_model,
# n_layers, n_heads, ffn_hidden_size.
SIZES = {
    "olmoe-1b-7b": shape(
        2048,
        16,
        16,
        1024,
        moe=MoEConfig(
            n_experts=64, top_k=8, expert_hidden_size=1024, aux_loss_coef=0.01, z_loss_coef=0.001
        ),
    ),
    "olmoe-tiny": {
        **TINY,
        "ffn_hidden_size": 64,
        "eos_token_id": None,
        "moe": MoEConfig(
            n_experts=8, top_k=2, expert_hidden_size=64, aux_loss_coef=0.01, z_loss_coef=0.001
        ),
    },
}

SPEC = FamilySpec(name="olmoe", base=OLMOE, sizes=SIZES, hf_adapter=OlmoeAdapter())
