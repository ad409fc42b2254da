"""DeepseekV2ForCausalLM and DeepseekV3ForCausalLM: multi-head latent attention, a dense MLP on
the first k layers, then shared + routed experts (softmax routing for V2, sigmoid with the
auxiliary-loss-free selection bias for V3), YaRN RoPE scaling."""

from __future__ import annotations

from typing import Any

from configcore import ConfigError
from model_zoo.config import InitConfig, MLAConfig, ModelConfig, MoEConfig, RopeScalingConfig
from model_zoo.hf.base import (
    ATTN_BIAS_SAME,
    NO_MLP_BIAS,
    NO_PARALLEL_RESIDUAL,
    PRE_NORM,
    RMSNORM,
    SWIGLU,
    DecoderLayoutAdapter,
    Requirement,
    first_token_id,
    rope_from_hf,
)
from model_zoo.hf.moe_layout import MoELayoutMixin, moe_requirements


class _DeepseekAdapter(MoELayoutMixin, DecoderLayoutAdapter):
    """DeepSeek-V2 and -V3: MLA attention; dense MLP on the first k layers, then shared + routed."""

    NORMS = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    MLA = {
        "attention.wq": "self_attn.q_proj",
        "attention.wq_a": "self_attn.q_a_proj",
        "attention.q_norm": "self_attn.q_a_layernorm",
        "attention.wq_b": "self_attn.q_b_proj",
        "attention.wkv_a": "self_attn.kv_a_proj_with_mqa",
        "attention.kv_norm": "self_attn.kv_a_layernorm",
        "attention.wkv_b": "self_attn.kv_b_proj",
        "attention.wo": "self_attn.o_proj",
    }
    LAYER = {
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w3": "mlp.up_proj",
        "feed_forward.w2": "mlp.down_proj",
        **MLA,
    }
    common_requirements = (
        RMSNORM,
        SWIGLU,
        NO_PARALLEL_RESIDUAL,
        Requirement("mla", lambda c: c.mla.enabled, "mla.kv_lora_rank must be > 0"),
        PRE_NORM,
        NO_MLP_BIAS,
        ATTN_BIAS_SAME,
        Requirement("moe.moe_every", lambda c: c.moe.moe_every == 1, "moe.moe_every must be 1"),
        Requirement(
            "rope_scaling",
            lambda c: c.rope_scaling.type in ("none", "yarn"),
            "rope_scaling must be none or yarn",
        ),
        Requirement(
            "mla.latent_norm_eps",
            lambda c: c.mla.latent_norm_eps == 1e-6,
            "mla.latent_norm_eps must be 1e-6 (hard-coded by transformers)",
        ),
    )

    def to_hf_config(self, cfg):
        hf = self.base_hf_config(cfg)
        m, a = cfg.moe, cfg.mla
        rope = None
        if cfg.rope_scaling.type == "yarn":
            rs = cfg.rope_scaling
            rope = {
                "type": "yarn",
                "rope_type": "yarn",
                "factor": rs.factor,
                "original_max_position_embeddings": rs.original_max_position,
                "beta_fast": rs.beta_fast,
                "beta_slow": rs.beta_slow,
                "mscale": rs.mscale,
                "mscale_all_dim": rs.mscale_all_dim,
            }
        hf.update(
            {
                "num_key_value_heads": cfg.n_heads,
                "hidden_act": "silu",
                "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta,
                "rope_scaling": rope,
                "attention_bias": cfg.qkv_bias,
                "attention_dropout": 0.0,
                "mlp_bias": False,
                "q_lora_rank": a.q_lora_rank or None,
                "kv_lora_rank": a.kv_lora_rank,
                "qk_nope_head_dim": a.qk_nope_head_dim,
                "qk_rope_head_dim": a.qk_rope_head_dim,
                "v_head_dim": a.v_head_dim,
                "head_dim": a.qk_rope_head_dim,
                "n_routed_experts": m.n_experts,
                "num_experts_per_tok": m.top_k,
                "moe_intermediate_size": m.expert_hidden_size,
                "n_shared_experts": m.n_shared_experts,
                "first_k_dense_replace": m.first_k_dense,
                "moe_layer_freq": 1,
                "norm_topk_prob": m.norm_topk_prob,
                "routed_scaling_factor": m.routed_scaling_factor,
                "n_group": m.n_group,
                "topk_group": m.topk_group,
                "aux_loss_alpha": m.aux_loss_coef,
            }
        )
        return hf

    def _from_hf_common(self, hf, family: str, router: str) -> ModelConfig:
        theta, _, _ = rope_from_hf(_without_yarn(hf))
        rope = _yarn_from_hf(hf)
        return ModelConfig(
            name=hf.get("_name_or_path") or f"{family}-imported",
            family=family,
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            ffn_hidden_size=hf["intermediate_size"],
            activation="swiglu",
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            norm_position="pre",
            qkv_bias=hf.get("attention_bias", False),
            attn_out_bias=hf.get("attention_bias", False),
            rope_theta=theta,
            rope_scaling=rope,
            max_seq_len=hf.get("max_position_embeddings", 4096),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init=InitConfig(std=hf.get("initializer_range", 0.02), output_scheme="same"),
            bos_token_id=first_token_id(hf.get("bos_token_id")),
            eos_token_id=first_token_id(hf.get("eos_token_id")),
            moe=MoEConfig(
                n_experts=hf["n_routed_experts"],
                top_k=hf["num_experts_per_tok"],
                expert_hidden_size=hf["moe_intermediate_size"],
                n_shared_experts=hf.get("n_shared_experts") or 0,
                first_k_dense=hf.get("first_k_dense_replace", 0),
                router=router,
                norm_topk_prob=hf.get("norm_topk_prob", False),
                routed_scaling_factor=hf.get("routed_scaling_factor", 1.0),
                n_group=hf.get("n_group") or 1,
                topk_group=hf.get("topk_group") or 1,
                aux_loss_coef=hf.get("aux_loss_alpha", 0.0),
            ),
            mla=MLAConfig(
                q_lora_rank=hf.get("q_lora_rank") or 0,
                kv_lora_rank=hf["kv_lora_rank"],
                qk_nope_head_dim=hf["qk_nope_head_dim"],
                qk_rope_head_dim=hf["qk_rope_head_dim"],
                v_head_dim=hf["v_head_dim"],
                rope_interleave=hf.get("rope_interleave", True),
            ),
        )


def _without_yarn(hf: dict[str, Any]) -> dict[str, Any]:
    hf = dict(hf)
    hf.pop("rope_scaling", None)
    params = dict(hf.get("rope_parameters") or {})
    hf["rope_parameters"] = {"rope_theta": params["rope_theta"]} if "rope_theta" in params else None
    return hf


def _yarn_from_hf(hf: dict[str, Any]) -> RopeScalingConfig:
    merged = {**(hf.get("rope_parameters") or {}), **(hf.get("rope_scaling") or {})}
    if merged.get("rope_type", merged.get("type", "default")) in (None, "default"):
        return RopeScalingConfig()
    if merged.get("rope_type", merged.get("type")) != "yarn":
        raise ConfigError(f"DeepSeek rope scaling {merged!r} is not supported; supported: yarn")
    return RopeScalingConfig(
        type="yarn",
        factor=float(merged["factor"]),
        original_max_position=int(merged["original_max_position_embeddings"]),
        beta_fast=float(merged.get("beta_fast") or 32),
        beta_slow=float(merged.get("beta_slow") or 1),
        mscale=float(merged.get("mscale") or 0.0),
        mscale_all_dim=float(merged.get("mscale_all_dim") or 0.0),
    )


class DeepseekV3Adapter(_DeepseekAdapter):
    architecture, model_type, family = "DeepseekV3ForCausalLM", "deepseek_v3", "deepseek_v3"
    BIAS_NAME = "e_score_correction_bias"
    requirements = _DeepseekAdapter.common_requirements + moe_requirements("sigmoid", True, True)

    def to_hf_config(self, cfg):
        hf = super().to_hf_config(cfg)
        hf.update(
            {
                "rope_interleave": cfg.mla.rope_interleave,
                "scoring_func": "sigmoid",
                "topk_method": "noaux_tc",
            }
        )
        return hf

    def from_hf_config(self, hf):
        return self._from_hf_common(hf, "deepseek_v3", "sigmoid")


class DeepseekV2Adapter(_DeepseekAdapter):
    architecture, model_type, family = "DeepseekV2ForCausalLM", "deepseek_v2", "deepseek_v2"
    requirements = (
        _DeepseekAdapter.common_requirements
        + moe_requirements("softmax", True, True)
        + (
            Requirement(
                "mla.rope_interleave",
                lambda c: c.mla.rope_interleave,
                "mla.rope_interleave must be true (DeepSeek-V2 rotates interleaved pairs)",
            ),
            Requirement(
                "moe.norm_topk_prob",
                lambda c: not c.moe.norm_topk_prob,
                "moe.norm_topk_prob must be false (transformers' DeepSeek-V2 never renormalises)",
            ),
        )
    )

    def to_hf_config(self, cfg):
        hf = super().to_hf_config(cfg)
        grouped = cfg.moe.n_group > 1
        hf.update(
            {
                "topk_method": "group_limited_greedy" if grouped else "greedy",
                "n_group": cfg.moe.n_group if grouped else None,
                "topk_group": cfg.moe.topk_group if grouped else None,
                "scoring_func": "softmax",
            }
        )
        return hf

    def from_hf_config(self, hf):
        return self._from_hf_common(hf, "deepseek_v2", "softmax")
