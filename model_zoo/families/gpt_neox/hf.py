"""GPTNeoXForCausalLM (Pythia): LayerNorm with bias, parallel residual, partial rotary, GeLU MLP,
and a fused query_key_value laid out head by head as [q_h, k_h, v_h]."""

from __future__ import annotations

import re

import torch

from model_zoo.config import InitConfig, ModelConfig
from model_zoo.hf.base import (
    ATTN_BIAS_SAME,
    HEAD_DIM_FROM_D_MODEL,
    NO_ROPE_SCALING,
    PRE_NORM,
    HFAdapter,
    Requirement,
    drop_tied_output,
    first_token_id,
    inverse,
    qk_norm_is,
    rename,
    rope_from_hf,
)


class GPTNeoXAdapter(HFAdapter):
    architecture, model_type, family = "GPTNeoXForCausalLM", "gpt_neox", "gpt_neox"
    requirements = (
        Requirement(
            "norm",
            lambda c: c.norm == "layernorm" and c.norm_bias,
            "norm must be layernorm with norm_bias=true",
        ),
        Requirement("activation", lambda c: c.activation == "gelu", "activation must be gelu"),
        PRE_NORM,
        qk_norm_is("none"),
        Requirement(
            "n_kv_heads",
            lambda c: c.kv_heads == c.n_heads,
            "GPT-NeoX has no grouped-query attention (n_kv_heads must equal n_heads)",
        ),
        HEAD_DIM_FROM_D_MODEL,
        Requirement("mlp_bias", lambda c: c.mlp_bias, "mlp_bias must be true"),
        ATTN_BIAS_SAME,
        NO_ROPE_SCALING,
    )

    def to_hf_config(self, cfg):
        hf = self.base_hf_config(cfg)
        hf.update(
            {
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
        theta, _, partial = rope_from_hf(hf)
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
            bos_token_id=first_token_id(hf.get("bos_token_id")),
            eos_token_id=first_token_id(hf.get("eos_token_id")),
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
        return drop_tied_output(cfg, out, "embed_out.weight")

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
        sd = rename(rest, inverse(self.TOP), inverse(self.LAYER), "gpt_neox.layers.", "layers.")
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
