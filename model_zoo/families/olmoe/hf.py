"""OlmoeForCausalLM: OLMo-2's attention (QK-norm over all heads) with pre-norm, and a top-k
softmax mixture of experts in every layer. An Olmo2Adapter with another norm placement and MoE."""

from __future__ import annotations

from model_zoo.config import MoEConfig
from model_zoo.families.olmo2.hf import Olmo2Adapter
from model_zoo.hf.base import (
    HEAD_DIM_FROM_D_MODEL,
    LLAMA_STYLE,
    NO_ROPE_SCALING,
    PRE_NORM,
    QK_NORM_NAMES,
    qk_norm_is,
)
from model_zoo.hf.moe_layout import NO_ROUTED_SCALING, MoELayoutMixin, moe_requirements


class OlmoeAdapter(MoELayoutMixin, Olmo2Adapter):
    architecture, model_type, family = "OlmoeForCausalLM", "olmoe", "olmoe"
    NORMS = {
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        **QK_NORM_NAMES,
    }
    requirements = (
        LLAMA_STYLE
        + (
            PRE_NORM,
            qk_norm_is("full"),
            HEAD_DIM_FROM_D_MODEL,
            NO_ROPE_SCALING,
            NO_ROUTED_SCALING,
        )
        + moe_requirements("softmax", False, False)
    )

    def to_hf_config(self, cfg):
        hf = super().to_hf_config(cfg)
        hf.update(
            {
                "clip_qkv": None,
                "num_experts": cfg.moe.n_experts,
                "num_experts_per_tok": cfg.moe.top_k,
                "intermediate_size": cfg.moe.expert_hidden_size,
                "norm_topk_prob": cfg.moe.norm_topk_prob,
                "router_aux_loss_coef": cfg.moe.aux_loss_coef,
                "output_router_logits": False,
            }
        )
        return hf

    def from_hf_config(self, hf):
        cfg = super().from_hf_config(hf)
        cfg.norm_position = "pre"
        cfg.norm_eps = hf.get("rms_norm_eps", 1e-5)
        cfg.max_seq_len = hf.get("max_position_embeddings", 4096)
        cfg.moe = MoEConfig(
            n_experts=hf["num_experts"],
            top_k=hf["num_experts_per_tok"],
            expert_hidden_size=hf["intermediate_size"],
            norm_topk_prob=hf.get("norm_topk_prob", False),
            aux_loss_coef=hf.get("router_aux_loss_coef", 0.0),
        )
        return cfg
