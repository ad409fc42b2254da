"""LlamaForCausalLM (Llama-3.x): pre-norm RMSNorm, GQA, SwiGLU, optional Llama-3.1 RoPE scaling."""

from __future__ import annotations

from model_zoo.config import InitConfig, ModelConfig
from model_zoo.families import register_family
from model_zoo.hf.base import (
    ATTN_BIAS_SAME,
    FULL_ROTARY,
    NO_PARALLEL_RESIDUAL,
    PRE_NORM,
    RMSNORM,
    SWIGLU,
    DecoderLayoutAdapter,
    common_hf_config,
    first_token_id,
    qk_norm_is,
    rope_from_hf,
    rope_to_hf,
)


@register_family
class LlamaAdapter(DecoderLayoutAdapter):
    architecture, model_type, family = "LlamaForCausalLM", "llama", "llama"
    requirements = (
        RMSNORM,
        SWIGLU,
        FULL_ROTARY,
        NO_PARALLEL_RESIDUAL,
        ATTN_BIAS_SAME,
        PRE_NORM,
        qk_norm_is("none"),
    )

    def to_hf_config(self, cfg):
        hf = common_hf_config(cfg)
        hf.update(
            {
                "architectures": [self.architecture],
                "model_type": self.model_type,
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
        theta, scaling, _ = rope_from_hf(hf)
        n_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
        return ModelConfig(
            name=hf.get("_name_or_path") or f"{self.family}-imported",
            family=self.family,
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads", n_heads),
            head_dim=None if head_dim * n_heads == hf["hidden_size"] else head_dim,
            ffn_hidden_size=hf["intermediate_size"],
            activation="swiglu",
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            norm_position="pre",
            qkv_bias=hf.get("attention_bias", False),
            attn_out_bias=hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            rope_theta=theta,
            rope_scaling=scaling,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init=InitConfig(std=hf.get("initializer_range", 0.02)),
            bos_token_id=first_token_id(hf.get("bos_token_id")),
            eos_token_id=first_token_id(hf.get("eos_token_id")),
        )
