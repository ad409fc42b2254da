"""Olmo2ForCausalLM: RMSNorm after each sublayer ("reordered norm") and QK-norm over all heads."""

from __future__ import annotations

from model_zoo.config import InitConfig
from model_zoo.hf.base import (
    HEAD_DIM_FROM_D_MODEL,
    LLAMA_STYLE,
    NO_MLP_BIAS,
    NO_ROPE_SCALING,
    QK_NORM_NAMES,
    DecoderLayoutAdapter,
    Requirement,
    qk_norm_is,
)


class Olmo2Adapter(DecoderLayoutAdapter):
    architecture, model_type, family = "Olmo2ForCausalLM", "olmo2", "olmo2"
    NORMS = {
        "attention_norm": "post_attention_layernorm",
        "ffn_norm": "post_feedforward_layernorm",
        **QK_NORM_NAMES,
    }
    requirements = LLAMA_STYLE + (
        Requirement(
            "norm_position",
            lambda c: c.norm_position == "post",
            "norm_position must be post (OLMo-2's reordered norm)",
        ),
        qk_norm_is("full"),
        NO_MLP_BIAS,
        HEAD_DIM_FROM_D_MODEL,
        NO_ROPE_SCALING,
    )

    def to_hf_config(self, cfg):
        hf = self.base_hf_config(cfg)
        hf.update(
            {
                "num_key_value_heads": cfg.kv_heads,
                "hidden_act": "silu",
                "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta,
                "attention_bias": cfg.qkv_bias,
                "attention_dropout": 0.0,
                "pad_token_id": None,
            }
        )
        return hf

    def from_hf_config(self, hf):
        return self.decoder_config_from_hf(
            hf,
            norm_position="post",
            qk_norm="full",
            init=InitConfig(std=hf.get("initializer_range", 0.02), output_scheme="same"),
        )
