"""Qwen3ForCausalLM (dense Qwen3): Llama's layout (pre-norm RMSNorm, GQA, SwiGLU, no biases) plus
an RMSNorm over each head of q and of k (shared across heads, before RoPE: our qk_norm=head), an
explicit head_dim (128 in every released size, not d_model / n_heads), and tied embeddings in the
small sizes. transformers' class also supports sliding-window attention on some layers; no released
Qwen3 uses it, and neither do we, so imports with it are refused."""

from __future__ import annotations

from configcore import ConfigError
from model_zoo.families.llama.hf import LlamaAdapter
from model_zoo.hf.base import (
    LLAMA_STYLE,
    NO_MLP_BIAS,
    NO_ROPE_SCALING,
    PRE_NORM,
    QK_NORM_NAMES,
    qk_norm_is,
)


class Qwen3Adapter(LlamaAdapter):
    architecture, model_type, family = "Qwen3ForCausalLM", "qwen3", "qwen3"
    NORMS = {**LlamaAdapter.NORMS, **QK_NORM_NAMES}
    requirements = LLAMA_STYLE + (
        PRE_NORM,
        qk_norm_is("head"),
        NO_MLP_BIAS,
        NO_ROPE_SCALING,
    )

    def to_hf_config(self, cfg):
        hf = super().to_hf_config(cfg)
        for key in ("mlp_bias", "pretraining_tp"):  # Llama's keys that Qwen3Config has not
            hf.pop(key)
        hf.update(
            {
                "use_sliding_window": False,
                "sliding_window": None,
                "max_window_layers": cfg.n_layers,
                "layer_types": ["full_attention"] * cfg.n_layers,
            }
        )
        return hf

    def from_hf_config(self, hf):
        if hf.get("use_sliding_window"):
            raise ConfigError(
                "this Qwen3 config uses sliding-window attention (use_sliding_window=true), "
                "which our decoder does not implement; set use_sliding_window=false"
            )
        cfg = super().from_hf_config(hf)
        cfg.qk_norm = "head"
        return cfg
