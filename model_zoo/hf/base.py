"""What every Hugging Face adapter shares: the adapter interface, the switch requirements written
once, the config keys every family writes, RoPE keys in both transformers generations, and the key
mapping of the standard Hugging Face decoder layout (`model.embed_tokens`, `self_attn.q_proj`, ...,
`mlp.gate_proj`, `lm_head`) that Llama, OLMo-2, Qwen3 and the MoE families use.

Each family's adapter (model_zoo/families/<family>/hf.py: gpt_neox, llama, olmo2, qwen3, mixtral,
olmoe, deepseek) subclasses `HFAdapter` (usually through `DecoderLayoutAdapter`) and is registered
in its family's spec (model_zoo/families/spec.py). An adapter knows (1) which of our switches the architecture
can express, (2) how to write and read its config.json, and (3) how parameter names and layouts
map. Only plain dicts and tensors cross this boundary: `transformers` is not imported (tests import
it to check the result).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from configcore import ConfigError
from model_zoo.config import InitConfig, ModelConfig, RopeScalingConfig

Tensor = torch.Tensor


@dataclass(frozen=True)
class Requirement:
    """A switch value the Hugging Face architecture hard-codes."""

    attr: str
    test: Callable[[ModelConfig], bool]
    explain: str


class HFAdapter:
    architecture: str = ""
    model_type: str = ""
    family: str = ""
    requirements: tuple[Requirement, ...] = ()

    def check_exportable(self, cfg: ModelConfig) -> None:
        problems = [r.explain for r in self.requirements if not r.test(cfg)]
        if problems:
            raise ConfigError(
                f"model '{cfg.name}' cannot be exported as {self.architecture}: "
                + "; ".join(problems)
            )

    def base_hf_config(self, cfg: ModelConfig) -> dict[str, Any]:
        """What every to_hf_config starts from: the keys all families write (common_hf_config),
        then this architecture's class name and model_type."""
        return {
            **common_hf_config(cfg),
            "architectures": [self.architecture],
            "model_type": self.model_type,
        }

    # ---- provided per family --------------------------------------------------------------
    def to_hf_config(self, cfg: ModelConfig) -> dict[str, Any]:
        raise NotImplementedError

    def from_hf_config(self, hf: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    def to_hf_state_dict(self, cfg: ModelConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def from_hf_state_dict(self, cfg: ModelConfig, hf_sd: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Requirements shared by several families (each written once)
# ---------------------------------------------------------------------------------------------
NO_PARALLEL_RESIDUAL = Requirement(
    "parallel_residual", lambda c: not c.parallel_residual, "parallel_residual must be false"
)
RMSNORM = Requirement("norm", lambda c: c.norm == "rmsnorm", "norm must be rmsnorm")
SWIGLU = Requirement("activation", lambda c: c.activation == "swiglu", "activation must be swiglu")
FULL_ROTARY = Requirement(
    "rotary_fraction", lambda c: c.rotary_fraction == 1.0, "rotary_fraction must be 1.0"
)
ATTN_BIAS_SAME = Requirement(
    "qkv_bias",
    lambda c: c.qkv_bias == c.attn_out_bias,
    "qkv_bias and attn_out_bias must be equal (one `attention_bias` switch)",
)
PRE_NORM = Requirement(
    "norm_position", lambda c: c.norm_position == "pre", "norm_position must be pre"
)
NO_MLP_BIAS = Requirement("mlp_bias", lambda c: not c.mlp_bias, "mlp_bias must be false")
# Architectures without a `head_dim` key derive it as hidden_size / num_attention_heads.
HEAD_DIM_FROM_D_MODEL = Requirement(
    "head_dim",
    lambda c: c.head_dim in (None, c.d_model // c.n_heads),
    "head_dim must be d_model / n_heads",
)
NO_ROPE_SCALING = Requirement(
    "rope_scaling", lambda c: c.rope_scaling.type == "none", "rope_scaling must be none"
)


def qk_norm_is(kind: str) -> Requirement:
    return Requirement("qk_norm", lambda c: c.qk_norm == kind, f"qk_norm must be {kind}")


# What every Llama-style decoder (Llama, OLMo-2, Qwen3, Mixtral, OLMoE) hard-codes: RMSNorm,
# SwiGLU, RoPE on whole heads, sequential residual, one attention-bias switch. Each adapter
# appends its norm placement, QK-norm and the rest, so an export names the first of them broken.
LLAMA_STYLE = (RMSNORM, SWIGLU, FULL_ROTARY, NO_PARALLEL_RESIDUAL, ATTN_BIAS_SAME)


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------
def common_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The keys every family's config.json has, with the same meaning."""
    return {
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "initializer_range": cfg.init.std,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def first_token_id(token_id: Any) -> int | None:
    """config.json may hold a list of ids (several EOS tokens): ours is the first."""
    if isinstance(token_id, list):
        return token_id[0] if token_id else None
    return token_id


def rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScalingConfig, float]:
    """(theta, scaling, partial_rotary_factor) from either the transformers-4 keys (`rope_theta`,
    `rope_scaling`, `rotary_pct`, `rotary_emb_base`) or transformers-5's `rope_parameters`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    partial = params.get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))
    )
    merged = {**params, **scaling}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind in (None, "default"):
        return float(theta), RopeScalingConfig(), float(partial)
    if kind != "llama3":
        raise ConfigError(
            f"rope scaling type {kind!r} is not supported for import; supported: default, llama3"
        )
    return (
        float(theta),
        RopeScalingConfig(
            type="llama3",
            factor=float(merged["factor"]),
            low_freq_factor=float(merged["low_freq_factor"]),
            high_freq_factor=float(merged["high_freq_factor"]),
            original_max_position=int(merged["original_max_position_embeddings"]),
        ),
        float(partial),
    )


def rope_to_hf(cfg: ModelConfig) -> dict[str, Any] | None:
    """Our Llama-3.1 scaling as the classic `rope_scaling` dict (None without scaling)."""
    if cfg.rope_scaling.type == "none":
        return None
    rs = cfg.rope_scaling
    return {
        "rope_type": "llama3",
        "factor": rs.factor,
        "low_freq_factor": rs.low_freq_factor,
        "high_freq_factor": rs.high_freq_factor,
        "original_max_position_embeddings": rs.original_max_position,
    }


# ---------------------------------------------------------------------------------------------
# Parameter names
# ---------------------------------------------------------------------------------------------
def rename(
    sd: dict[str, Tensor],
    top: dict[str, str],
    per_layer: dict[str, str],
    src_layers: str,
    dst_layers: str,
) -> dict[str, Tensor]:
    """Rename keys: whole keys by `top`, and `<src_layers><i>.<module>.<leaf>` to
    `<dst_layers><i>.<per_layer[module]>.<leaf>`. A key that matches neither is an error, so a
    weight can never be dropped silently."""
    pattern = re.compile(rf"^{re.escape(src_layers)}(\d+)\.(.+)\.(weight|bias)$")
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        m = pattern.match(key)
        if m is None or m.group(2) not in per_layer:
            raise KeyError(f"no name mapping for parameter {key!r}")
        out[f"{dst_layers}{m.group(1)}.{per_layer[m.group(2)]}.{m.group(3)}"] = value
    return out


def inverse(mapping: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


def drop_tied_output(cfg: ModelConfig, sd: dict[str, Tensor], key: str) -> dict[str, Tensor]:
    if cfg.tie_embeddings:
        sd.pop(key, None)
    return sd


# QK-norm modules of the standard layout's attention (OLMo-2, OLMoE, Qwen3), in Hugging Face's names
QK_NORM_NAMES = {"attention.q_norm": "self_attn.q_norm", "attention.k_norm": "self_attn.k_norm"}


class DecoderLayoutAdapter(HFAdapter):
    """The standard Hugging Face decoder layout: separate q/k/v/o projections and a SwiGLU
    gate/up/down MLP under `model.layers.<i>`. Families differ in where their norms sit (NORMS)
    and in extra per-layer modules (LAYER, e.g. MLA's projections)."""

    TOP = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    LAYER = {
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w3": "mlp.up_proj",
        "feed_forward.w2": "mlp.down_proj",
    }
    # Pre-norm placement (Llama, Qwen3, Mixtral, OLMoE, DeepSeek); OLMo-2 overrides it.
    NORMS: dict[str, str] = {
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }

    def decoder_config_from_hf(self, hf: dict[str, Any], **switches: Any) -> ModelConfig:
        """The fields every config.json of this layout spells the same way (shape, SwiGLU,
        RMSNorm, attention bias, RoPE theta, tying, init std, special tokens); `switches` are the
        family's own (norm placement, QK-norm, head_dim, ...) and win over the defaults here."""
        theta, _, _ = rope_from_hf(hf)
        n_heads = hf["num_attention_heads"]
        fields: dict[str, Any] = dict(
            name=hf.get("_name_or_path") or f"{self.family}-imported",
            family=self.family,
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads", n_heads),
            ffn_hidden_size=hf["intermediate_size"],
            activation="swiglu",
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            qkv_bias=hf.get("attention_bias", False),
            attn_out_bias=hf.get("attention_bias", False),
            rope_theta=theta,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init=InitConfig(std=hf.get("initializer_range", 0.02)),
            bos_token_id=first_token_id(hf.get("bos_token_id")),
            eos_token_id=first_token_id(hf.get("eos_token_id")),
        )
        return ModelConfig(**{**fields, **switches})

    def to_hf_state_dict(self, cfg, sd):
        out = rename(sd, self.TOP, {**self.LAYER, **self.NORMS}, "layers.", "model.layers.")
        return drop_tied_output(cfg, out, "lm_head.weight")

    def from_hf_state_dict(self, cfg, hf_sd):
        hf_sd = {k: v for k, v in hf_sd.items() if "rotary_emb" not in k}
        if cfg.tie_embeddings:
            hf_sd.pop("lm_head.weight", None)
        sd = rename(
            hf_sd,
            inverse(self.TOP),
            inverse({**self.LAYER, **self.NORMS}),
            "model.layers.",
            "layers.",
        )
        if cfg.tie_embeddings:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        return sd
