"""LlamaForCausalLM (Llama-3.x): pre-norm RMSNorm, GQA, SwiGLU, optional Llama-3.1 RoPE scaling."""

from __future__ import annotations

from model_zoo.hf.base import (
    LLAMA_STYLE,
    PRE_NORM,
    DecoderLayoutAdapter,
    qk_norm_is,
    rope_from_hf,
    rope_to_hf,
)


class LlamaAdapter(DecoderLayoutAdapter):
    architecture, model_type, family = "LlamaForCausalLM", "llama", "llama"
    requirements = LLAMA_STYLE + (
        PRE_NORM,
        qk_norm_is("none"),
    )

    def to_hf_config(self, cfg):
        hf = self.base_hf_config(cfg)
        hf.update(
            {
                "num_key_value_heads": cfg.kv_heads,
                "head_dim": cfg.dim_per_head,
                "hidden_act": "silu",
                "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta,
                "rope_scaling": rope_to_hf(cfg),
                "attention_bias": cfg.qkv_bias,
                "mlp_bias": cfg.mlp_bias,
                "attention_dropout": 0.0,
                "pretraining_tp": 1,
            }
        )
        return hf

    def from_hf_config(self, hf):
        _, scaling, _ = rope_from_hf(hf)
        n_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
        return self.decoder_config_from_hf(
            hf,
            head_dim=None if head_dim * n_heads == hf["hidden_size"] else head_dim,
            norm_position="pre",
            mlp_bias=hf.get("mlp_bias", False),
            rope_scaling=scaling,
        )
