"""State-dict and config adapters between our decoder and Hugging Face's per-family classes.

One adapter per Hugging Face architecture (GPTNeoXForCausalLM, Olmo2ForCausalLM, LlamaForCausalLM).
Each knows (1) which of our switches the architecture can express, (2) how to write and read its
config.json, and (3) how parameter names and layouts map. Only plain dicts and tensors cross this
boundary: `transformers` is not imported (tests import it to check the result).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from model_zoo.config import (
    ConfigError,
    InitConfig,
    MLAConfig,
    ModelConfig,
    MoEConfig,
    RopeScalingConfig,
)

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

    # ---- checks ---------------------------------------------------------------------------
    def check_exportable(self, cfg: ModelConfig) -> None:
        problems = [r.explain for r in self.requirements if not r.test(cfg)]
        if problems:
            raise ConfigError(
                f"model '{cfg.name}' cannot be exported as {self.architecture}: "
                + "; ".join(problems)
            )

    # ---- to be provided per family --------------------------------------------------------
    def to_hf_config(self, cfg: ModelConfig) -> dict[str, Any]:
        raise NotImplementedError

    def from_hf_config(self, hf: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    def to_hf_state_dict(self, cfg: ModelConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def from_hf_state_dict(self, cfg: ModelConfig, hf_sd: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError


def _common_hf_config(cfg: ModelConfig) -> dict[str, Any]:
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


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScalingConfig, float]:
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


def _rope_to_hf(cfg: ModelConfig) -> dict[str, Any] | None:
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


def _inverse(mapping: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


def _drop_tied_output(cfg: ModelConfig, sd: dict[str, Tensor], key: str) -> dict[str, Tensor]:
    if cfg.tie_embeddings:
        sd.pop(key, None)
    return sd


# ---------------------------------------------------------------------------------------------
# Llama and OLMo-2: separate q/k/v/o, SwiGLU gate/up/down; they differ in the norms.
# ---------------------------------------------------------------------------------------------
class _LlamaLikeAdapter(HFAdapter):
    """Llama and OLMo-2: separate q/k/v/o and SwiGLU gate/up/down; they differ in the norms."""

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
    NORMS: dict[str, str] = {}

    def to_hf_state_dict(self, cfg, sd):
        out = rename(sd, self.TOP, {**self.LAYER, **self.NORMS}, "layers.", "model.layers.")
        return _drop_tied_output(cfg, out, "lm_head.weight")

    def from_hf_state_dict(self, cfg, hf_sd):
        hf_sd = {k: v for k, v in hf_sd.items() if "rotary_emb" not in k}
        if cfg.tie_embeddings:
            hf_sd.pop("lm_head.weight", None)
        sd = rename(
            hf_sd,
            _inverse(self.TOP),
            _inverse({**self.LAYER, **self.NORMS}),
            "model.layers.",
            "layers.",
        )
        if cfg.tie_embeddings:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        return sd


_NO_PARALLEL = Requirement(
    "parallel_residual", lambda c: not c.parallel_residual, "parallel_residual must be false"
)
_RMSNORM = Requirement("norm", lambda c: c.norm == "rmsnorm", "norm must be rmsnorm")
_SWIGLU = Requirement("activation", lambda c: c.activation == "swiglu", "activation must be swiglu")
_FULL_ROTARY = Requirement(
    "rotary_fraction", lambda c: c.rotary_fraction == 1.0, "rotary_fraction must be 1.0"
)
_ATTN_BIAS_SAME = Requirement(
    "qkv_bias",
    lambda c: c.qkv_bias == c.attn_out_bias,
    "qkv_bias and attn_out_bias must be equal (one `attention_bias` switch)",
)


class LlamaAdapter(_LlamaLikeAdapter):
    architecture, model_type, family = "LlamaForCausalLM", "llama", "llama"
    NORMS = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    requirements = (
        _RMSNORM,
        _SWIGLU,
        _FULL_ROTARY,
        _NO_PARALLEL,
        _ATTN_BIAS_SAME,
        Requirement(
            "norm_position", lambda c: c.norm_position == "pre", "norm_position must be pre"
        ),
        Requirement("qk_norm", lambda c: c.qk_norm == "none", "qk_norm must be none"),
    )

    def to_hf_config(self, cfg):
        hf = _common_hf_config(cfg)
        hf.update(
            {
                "architectures": [self.architecture],
                "model_type": self.model_type,
                "num_key_value_heads": cfg.kv_heads,
                "head_dim": cfg.dim_per_head,
                "hidden_act": "silu",
                "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta,
                "rope_scaling": _rope_to_hf(cfg),
                "attention_bias": cfg.qkv_bias,
                "mlp_bias": cfg.mlp_bias,
                "attention_dropout": 0.0,
                "pretraining_tp": 1,
            }
        )
        return hf

    def from_hf_config(self, hf):
        theta, scaling, _ = _rope_from_hf(hf)
        n_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
        return ModelConfig(
            name=hf.get("_name_or_path") or "llama-imported",
            family="llama",
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
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
        )


class Olmo2Adapter(_LlamaLikeAdapter):
    architecture, model_type, family = "Olmo2ForCausalLM", "olmo2", "olmo2"
    NORMS = {
        "attention_norm": "post_attention_layernorm",
        "ffn_norm": "post_feedforward_layernorm",
        "attention.q_norm": "self_attn.q_norm",
        "attention.k_norm": "self_attn.k_norm",
    }
    requirements = (
        _RMSNORM,
        _SWIGLU,
        _FULL_ROTARY,
        _NO_PARALLEL,
        _ATTN_BIAS_SAME,
        Requirement(
            "norm_position",
            lambda c: c.norm_position == "post",
            "norm_position must be post (OLMo-2's reordered norm)",
        ),
        Requirement("qk_norm", lambda c: c.qk_norm == "full", "qk_norm must be full"),
        Requirement("mlp_bias", lambda c: not c.mlp_bias, "mlp_bias must be false"),
        Requirement(
            "head_dim",
            lambda c: c.head_dim in (None, c.d_model // c.n_heads),
            "head_dim must be d_model / n_heads",
        ),
        Requirement(
            "rope_scaling", lambda c: c.rope_scaling.type == "none", "rope_scaling must be none"
        ),
    )

    def to_hf_config(self, cfg):
        hf = _common_hf_config(cfg)
        hf.update(
            {
                "architectures": [self.architecture],
                "model_type": self.model_type,
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
        theta, _, _ = _rope_from_hf(hf)
        n_heads = hf["num_attention_heads"]
        return ModelConfig(
            name=hf.get("_name_or_path") or "olmo2-imported",
            family="olmo2",
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads", n_heads),
            ffn_hidden_size=hf["intermediate_size"],
            activation="swiglu",
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            norm_position="post",
            qk_norm="full",
            qkv_bias=hf.get("attention_bias", False),
            attn_out_bias=hf.get("attention_bias", False),
            rope_theta=theta,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init=InitConfig(std=hf.get("initializer_range", 0.02), output_scheme="same"),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
        )


# ---------------------------------------------------------------------------------------------
# GPT-NeoX (Pythia): fused query_key_value laid out head by head as [q_h, k_h, v_h].
# ---------------------------------------------------------------------------------------------
class GPTNeoXAdapter(HFAdapter):
    architecture, model_type, family = "GPTNeoXForCausalLM", "gpt_neox", "gpt_neox"
    requirements = (
        Requirement(
            "norm",
            lambda c: c.norm == "layernorm" and c.norm_bias,
            "norm must be layernorm with norm_bias=true",
        ),
        Requirement("activation", lambda c: c.activation == "gelu", "activation must be gelu"),
        Requirement(
            "norm_position", lambda c: c.norm_position == "pre", "norm_position must be pre"
        ),
        Requirement("qk_norm", lambda c: c.qk_norm == "none", "qk_norm must be none"),
        Requirement(
            "n_kv_heads",
            lambda c: c.kv_heads == c.n_heads,
            "GPT-NeoX has no grouped-query attention (n_kv_heads must equal n_heads)",
        ),
        Requirement(
            "head_dim",
            lambda c: c.head_dim in (None, c.d_model // c.n_heads),
            "head_dim must be d_model / n_heads",
        ),
        Requirement("mlp_bias", lambda c: c.mlp_bias, "mlp_bias must be true"),
        _ATTN_BIAS_SAME,
        Requirement(
            "rope_scaling", lambda c: c.rope_scaling.type == "none", "rope_scaling must be none"
        ),
    )

    def to_hf_config(self, cfg):
        hf = _common_hf_config(cfg)
        hf.update(
            {
                "architectures": [self.architecture],
                "model_type": self.model_type,
                "hidden_act": "gelu",
                "layer_norm_eps": cfg.norm_eps,
                "rotary_pct": cfg.rotary_fraction,
                "rotary_emb_base": cfg.rope_theta,
                "use_parallel_residual": cfg.parallel_residual,
                "attention_bias": cfg.qkv_bias,
                "attention_dropout": 0.0,
                "hidden_dropout": 0.0,
            }
        )
        return hf

    def from_hf_config(self, hf):
        theta, _, partial = _rope_from_hf(hf)
        return ModelConfig(
            name=hf.get("_name_or_path") or "gpt-neox-imported",
            family="gpt_neox",
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            ffn_hidden_size=hf["intermediate_size"],
            activation="gelu",
            norm="layernorm",
            norm_eps=hf.get("layer_norm_eps", 1e-5),
            norm_bias=True,
            parallel_residual=hf.get("use_parallel_residual", True),
            qkv_bias=hf.get("attention_bias", True),
            attn_out_bias=hf.get("attention_bias", True),
            mlp_bias=True,
            rope_theta=theta,
            rotary_fraction=partial if "rotary_pct" in hf or "rope_parameters" in hf else 0.25,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init=InitConfig(std=hf.get("initializer_range", 0.02)),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
        )

    LAYER = {
        "attention.wo": "attention.dense",
        "feed_forward.w1": "mlp.dense_h_to_4h",
        "feed_forward.w2": "mlp.dense_4h_to_h",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    TOP = {
        "tok_embeddings.weight": "gpt_neox.embed_in.weight",
        "norm.weight": "gpt_neox.final_layer_norm.weight",
        "norm.bias": "gpt_neox.final_layer_norm.bias",
        # transformers < 5 calls it embed_out; 5.x renames embed_out -> lm_head when loading, so
        # the classic name loads in both.
        "output.weight": "embed_out.weight",
    }
    _QKV = re.compile(r"^layers\.(\d+)\.attention\.w([qkv])\.(weight|bias)$")
    _FUSED = re.compile(r"^gpt_neox\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)$")

    def to_hf_state_dict(self, cfg, sd):
        heads, hd = cfg.n_heads, cfg.dim_per_head
        qkv = {k: v for k, v in sd.items() if self._QKV.match(k)}
        rest = {k: v for k, v in sd.items() if k not in qkv}
        out = rename(rest, self.TOP, self.LAYER, "layers.", "gpt_neox.layers.")
        for key in qkv:
            i, which, leaf = self._QKV.match(key).groups()
            if which != "q":
                continue
            parts = [qkv[f"layers.{i}.attention.w{x}.{leaf}"] for x in "qkv"]
            # (H*D, ...) each -> (H, 3, D, ...) -> (3*H*D, ...): head by head [q_h, k_h, v_h]
            stacked = torch.stack([t.reshape(heads, hd, *t.shape[1:]) for t in parts], dim=1)
            out[f"gpt_neox.layers.{i}.attention.query_key_value.{leaf}"] = stacked.reshape(
                3 * heads * hd, *parts[0].shape[1:]
            )
        return _drop_tied_output(cfg, out, "embed_out.weight")

    def from_hf_state_dict(self, cfg, hf_sd):
        heads, hd = cfg.n_heads, cfg.dim_per_head
        hf_sd = {
            ("embed_out." + k[len("lm_head.") :]) if k.startswith("lm_head.") else k: v
            for k, v in hf_sd.items()
            # derived buffers some transformers versions saved, not parameters
            if "rotary_emb" not in k
            and not k.endswith((".attention.bias", ".attention.masked_bias"))
        }
        if cfg.tie_embeddings:
            hf_sd.pop("embed_out.weight", None)
        fused = {k: v for k, v in hf_sd.items() if self._FUSED.match(k)}
        rest = {k: v for k, v in hf_sd.items() if k not in fused}
        sd = rename(rest, _inverse(self.TOP), _inverse(self.LAYER), "gpt_neox.layers.", "layers.")
        for key, value in fused.items():
            i, leaf = self._FUSED.match(key).groups()
            split = value.reshape(heads, 3, hd, *value.shape[1:])
            for j, x in enumerate("qkv"):
                sd[f"layers.{i}.attention.w{x}.{leaf}"] = split[:, j].reshape(
                    heads * hd, *value.shape[1:]
                )
        if cfg.tie_embeddings:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        return sd


def _first(token_id: Any) -> int | None:
    if isinstance(token_id, list):
        return token_id[0] if token_id else None
    return token_id


ADAPTERS: dict[str, HFAdapter] = {
    "gpt_neox": GPTNeoXAdapter(),
    "olmo2": Olmo2Adapter(),
    "llama": LlamaAdapter(),
}
BY_MODEL_TYPE = {a.model_type: a for a in ADAPTERS.values()}


def adapter_for_family(family: str) -> HFAdapter:
    try:
        return ADAPTERS[family]
    except KeyError:
        raise ConfigError(
            f"no Hugging Face adapter for family {family!r}; known: {', '.join(ADAPTERS)}"
        ) from None


def adapter_for_hf_config(hf: dict[str, Any]) -> HFAdapter:
    model_type = hf.get("model_type")
    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ConfigError(
            f"cannot import Hugging Face model_type {model_type!r}; supported: "
            f"{', '.join(BY_MODEL_TYPE)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Mixture of experts (Mixtral, OLMoE) and DeepSeek (MLA + shared/routed experts)
# ---------------------------------------------------------------------------------------------
_MOE_KEY = re.compile(r"^layers\.(\d+)\.moe\.(.+)$")


class _MoEAdapterMixin:
    """Expert tensors: ours are stacked (E, out, in); the Hub stores one Linear per expert.

    EXPERT_PREFIX is the per-layer module holding router and experts on the Hub; EXPERT_NAMES maps
    our w1/w2/w3 to the Hub's per-expert names. Saved in the Hub's per-expert layout, which
    transformers 4.x loads as is and 5.x converts to its fused layout on load.
    """

    EXPERT_PREFIX = "mlp"
    EXPERT_NAMES = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
    SHARED = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
    BIAS_NAME: str | None = None  # where the aux-loss-free selection bias lives on the Hub

    def _moe_to_hf(self, cfg: ModelConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, value in sd.items():
            i, rest = _MOE_KEY.match(key).groups()
            base = f"model.layers.{i}.{self.EXPERT_PREFIX}"
            if rest == "router.gate.weight":
                out[f"{base}.gate.weight"] = value
            elif rest == "router.expert_bias":
                if self.BIAS_NAME is not None:
                    out[f"{base}.gate.{self.BIAS_NAME}"] = value
                elif value.abs().max() > 0:
                    raise ConfigError(
                        f"layer {i} has a non-zero auxiliary-loss-free expert bias, which "
                        f"{self.architecture} cannot express; export as DeepseekV3ForCausalLM or "
                        "train with moe.bias_update_speed=0"
                    )
            elif rest.startswith("experts."):
                ours = rest.split(".")[1]
                for e in range(value.shape[0]):
                    out[f"{base}.experts.{e}.{self.EXPERT_NAMES[ours]}.weight"] = value[e]
            elif rest.startswith("shared_experts."):
                _, ours, leaf = rest.split(".")
                out[f"{base}.shared_experts.{self.SHARED[ours]}.{leaf}"] = value
            else:
                raise KeyError(f"no name mapping for parameter {key!r}")
        return out

    def _moe_from_hf(self, cfg: ModelConfig, hf_sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Pop the Hub's MoE tensors out of hf_sd and return them under our names."""
        sd: dict[str, Tensor] = {}
        inverse_experts = _inverse(self.EXPERT_NAMES)
        inverse_shared = _inverse(self.SHARED)
        pattern = re.compile(
            rf"^model\.layers\.(\d+)\.{self.EXPERT_PREFIX}\.(gate|experts|shared_experts)\.(.+)$"
        )
        experts: dict[tuple[str, str], dict[int, Tensor]] = {}
        for key in [k for k in hf_sd if pattern.match(k)]:
            i, part, rest = pattern.match(key).groups()
            value = hf_sd.pop(key)
            if part == "gate":
                name = "router.gate.weight" if rest == "weight" else "router.expert_bias"
                sd[f"layers.{i}.moe.{name}"] = value.float() if name.endswith("bias") else value
            elif part == "experts":
                e, hub_name, _ = rest.split(".")
                experts.setdefault((i, inverse_experts[hub_name]), {})[int(e)] = value
            else:
                hub_name, leaf = rest.split(".")
                sd[f"layers.{i}.moe.shared_experts.{inverse_shared[hub_name]}.{leaf}"] = value
        for (i, ours), per_expert in experts.items():
            sd[f"layers.{i}.moe.experts.{ours}"] = torch.stack(
                [per_expert[e] for e in sorted(per_expert)]
            )
        for key in [k for k in sd if k.endswith("router.gate.weight")]:
            bias_key = key.replace("gate.weight", "expert_bias")
            sd.setdefault(bias_key, torch.zeros(cfg.moe.n_experts))
        return sd

    def to_hf_state_dict(self, cfg, sd):
        moe = {k: v for k, v in sd.items() if _MOE_KEY.match(k)}
        dense = {k: v for k, v in sd.items() if k not in moe}
        out = super().to_hf_state_dict(cfg, dense)
        out.update(self._moe_to_hf(cfg, moe))
        return out

    def from_hf_state_dict(self, cfg, hf_sd):
        hf_sd = dict(hf_sd)
        moe = self._moe_from_hf(cfg, hf_sd)
        sd = super().from_hf_state_dict(cfg, hf_sd)
        sd.update(moe)
        return sd


def _moe_requirements(router: str, groups: bool, shared: bool) -> tuple[Requirement, ...]:
    reqs = [
        Requirement("moe.router", lambda c: c.moe.router == router, f"moe.router must be {router}"),
        Requirement("moe.n_experts", lambda c: c.moe.enabled, "moe.n_experts must be > 0"),
    ]
    if not groups:
        reqs.append(
            Requirement("moe.n_group", lambda c: c.moe.n_group == 1, "moe.n_group must be 1")
        )
    if not shared:
        reqs.append(
            Requirement(
                "moe.n_shared_experts",
                lambda c: c.moe.n_shared_experts == 0,
                "moe.n_shared_experts must be 0",
            )
        )
        reqs.append(
            Requirement(
                "moe.first_k_dense",
                lambda c: c.moe.first_k_dense == 0 and c.moe.moe_every == 1,
                "every layer must be MoE (first_k_dense=0, moe_every=1)",
            )
        )
    return tuple(reqs)


class MixtralAdapter(_MoEAdapterMixin, LlamaAdapter):
    architecture, model_type, family = "MixtralForCausalLM", "mixtral", "mixtral"
    EXPERT_PREFIX = "block_sparse_moe"
    EXPERT_NAMES = {"w1": "w1", "w2": "w2", "w3": "w3"}
    requirements = (
        LlamaAdapter.requirements
        + _moe_requirements("softmax", False, False)
        + (
            Requirement(
                "moe.norm_topk_prob",
                lambda c: c.moe.norm_topk_prob,
                "moe.norm_topk_prob must be true (Mixtral renormalises its top-k weights)",
            ),
            Requirement(
                "moe.routed_scaling_factor",
                lambda c: c.moe.routed_scaling_factor == 1.0,
                "moe.routed_scaling_factor must be 1",
            ),
            Requirement("biases", lambda c: not (c.qkv_bias or c.mlp_bias), "no biases"),
            Requirement(
                "head_dim",
                lambda c: c.head_dim in (None, c.d_model // c.n_heads),
                "head_dim must be d_model / n_heads",
            ),
        )
    )

    def to_hf_config(self, cfg):
        hf = super().to_hf_config(cfg)
        for key in ("attention_bias", "mlp_bias", "pretraining_tp"):
            hf.pop(key, None)
        hf.update(
            {
                "architectures": [self.architecture],
                "model_type": self.model_type,
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
        cfg.name, cfg.family = hf.get("_name_or_path") or "mixtral-imported", "mixtral"
        cfg.moe = MoEConfig(
            n_experts=hf["num_local_experts"],
            top_k=hf["num_experts_per_tok"],
            expert_hidden_size=hf["intermediate_size"],
            norm_topk_prob=True,
            aux_loss_coef=hf.get("router_aux_loss_coef", 0.0),
        )
        return cfg


class OlmoeAdapter(_MoEAdapterMixin, _LlamaLikeAdapter):
    architecture, model_type, family = "OlmoeForCausalLM", "olmoe", "olmoe"
    NORMS = {
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attention.q_norm": "self_attn.q_norm",
        "attention.k_norm": "self_attn.k_norm",
    }
    requirements = (
        _RMSNORM,
        _SWIGLU,
        _FULL_ROTARY,
        _NO_PARALLEL,
        _ATTN_BIAS_SAME,
        Requirement(
            "norm_position", lambda c: c.norm_position == "pre", "norm_position must be pre"
        ),
        Requirement("qk_norm", lambda c: c.qk_norm == "full", "qk_norm must be full"),
        Requirement(
            "head_dim",
            lambda c: c.head_dim in (None, c.d_model // c.n_heads),
            "head_dim must be d_model / n_heads",
        ),
        Requirement(
            "rope_scaling", lambda c: c.rope_scaling.type == "none", "rope_scaling must be none"
        ),
        Requirement(
            "moe.routed_scaling_factor",
            lambda c: c.moe.routed_scaling_factor == 1.0,
            "moe.routed_scaling_factor must be 1",
        ),
    ) + _moe_requirements("softmax", False, False)

    def to_hf_config(self, cfg):
        # OLMoE is OLMo-2's attention (QK-norm over all heads) with pre-norm and an MoE MLP.
        hf = Olmo2Adapter.to_hf_config(self, cfg)
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
        cfg = Olmo2Adapter.from_hf_config(self, hf)
        cfg.name = hf.get("_name_or_path") or "olmoe-imported"
        cfg.family, cfg.norm_position = "olmoe", "pre"
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


class _DeepseekAdapter(_MoEAdapterMixin, _LlamaLikeAdapter):
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
        _RMSNORM,
        _SWIGLU,
        _NO_PARALLEL,
        Requirement("mla", lambda c: c.mla.enabled, "mla.kv_lora_rank must be > 0"),
        Requirement(
            "norm_position", lambda c: c.norm_position == "pre", "norm_position must be pre"
        ),
        Requirement("mlp_bias", lambda c: not c.mlp_bias, "mlp_bias must be false"),
        Requirement(
            "qkv_bias",
            lambda c: c.qkv_bias == c.attn_out_bias,
            "qkv_bias and attn_out_bias must be equal",
        ),
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
        hf = _common_hf_config(cfg)
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
                "architectures": [self.architecture],
                "model_type": self.model_type,
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
        theta, _, _ = _rope_from_hf(_without_yarn(hf))
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
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
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
    requirements = _DeepseekAdapter.common_requirements + _moe_requirements("sigmoid", True, True)

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
        + _moe_requirements("softmax", True, True)
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


ADAPTERS.update(
    {
        "mixtral": MixtralAdapter(),
        "olmoe": OlmoeAdapter(),
        "deepseek_v2": DeepseekV2Adapter(),
        "deepseek_v3": DeepseekV3Adapter(),
    }
)
BY_MODEL_TYPE.update({a.model_type: a for a in ADAPTERS.values()})
