"""MixtralForCausalLM: Llama's attention, every layer a top-2 softmax mixture of experts."""

from __future__ import annotations

from model_zoo.config import MoEConfig
from model_zoo.families.llama.hf import LlamaAdapter
from model_zoo.hf.base import HEAD_DIM_FROM_D_MODEL, Requirement
from model_zoo.hf.moe_layout import NO_ROUTED_SCALING, MoELayoutMixin, moe_requirements


class MixtralAdapter(MoELayoutMixin, LlamaAdapter):
    architecture, model_type, family = "MixtralForCausalLM", "mixtral", "mixtral"
    EXPERT_PREFIX = "block_sparse_moe"
    EXPERT_NAMES = {"w1": "w1", "w2": "w2", "w3": "w3"}
    requirements = (
        LlamaAdapter.requirements
        + moe_requirements("softmax", False, False)
        + (
            Requirement(
                "moe.norm_topk_prob",
                lambda c: c.moe.norm_topk_prob,
                "moe.norm_topk_prob must be true (Mixtral renormalises its top-k weights)",
            ),
            NO_ROUTED_SCALING,
            Requirement("biases", lambda c: not (c.qkv_bias or c.mlp_bias), "no biases"),
            HEAD_DIM_FROM_D_MODEL,
        )
    )

    def to_hf_config(self, cfg):
        hf = super().to_hf_config(cfg)
        for key in ("attention_bias", "mlp_bias", "pretraining_tp"):
            hf.pop(key, None)
        hf.update(
            {
                "num_local_experts": cfg.moe.n_experts,
                "num_experts_per_tok": cfg.moe.top_k,
                "intermediate_size": cfg.moe.expert_hidden_size,
                "router_aux_loss_coef": cfg.moe.aux_loss_coef,
                "router_jitter_noise": 0.0,
                "output_router_logits": False,
                "sliding_window": None,
            }
        )
        return hf

    def from_hf_config(self, hf):
        cfg = super().from_hf_config(hf)
        cfg.moe = MoEConfig(
            n_experts=hf["num_local_experts"],
            top_k=hf["num_experts_per_tok"],
            expert_hidden_size=hf["intermediate_size"],
            norm_topk_prob=True,
            aux_loss_coef=hf.get("router_aux_loss_coef", 0.0),
        )
        return cfg
