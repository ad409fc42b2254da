"""Typed model configuration: one dataclass describes every decoder in the zoo.

Family differences (Pythia/GPT-NeoX, OLMo-2, Llama-3) are switches on this one config, not separate
model classes. The dataclasses are plain Python so that `pretrain/` can register them with Hydra and
`model_zoo` stays free of anything but torch. `validate()` runs before any tensor is allocated and
explains, in words, what is wrong and how to fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

ACTIVATIONS = ("swiglu", "gelu")
NORMS = ("rmsnorm", "layernorm")
NORM_POSITIONS = ("pre", "post")
QK_NORMS = ("none", "full", "head")
ROPE_SCALINGS = ("none", "llama3")
INIT_SCHEMES = ("normal", "small_init")
OUTPUT_INIT_SCHEMES = ("same", "scaled_depth", "wang")
FAMILIES = ("gpt_neox", "olmo2", "llama")


class ConfigError(ValueError):
    """A configuration that cannot be built. The message names the problem and the fix."""


@dataclass
class RopeScalingConfig:
    """Frequency scaling of RoPE. `llama3` is Llama-3.1's piecewise scaling of long wavelengths."""

    type: str = "none"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass
class InitConfig:
    """Weight initialisation as the families use it.

    scheme:
      normal      N(0, std) for every matrix and embedding (Llama/torchtitan, OLMo-2).
      small_init  N(0, sqrt(2 / (5 d))) (GPT-NeoX `small_init`, Nguyen & Salazar 2019), used by Pythia.
    output_scheme (the attention output and MLP down projections, which write into the residual):
      same          same as `scheme`.
      scaled_depth  std / sqrt(2 * n_layers) (GPT-2 / Megatron `scaled_init_method_normal`).
      wang          2 / (n_layers * sqrt(d)) (GPT-NeoX `wang_init`), used by Pythia.
    truncation: if > 0, samples are truncated at +-truncation*std (OLMo-core uses 3).
    """

    scheme: str = "normal"
    std: float = 0.02
    output_scheme: str = "scaled_depth"
    truncation: float = 0.0


@dataclass
class ModelConfig:
    """Shape and switches of the decoder. See docs/models.md for what each switch does."""

    name: str = "custom"
    # Which Hugging Face architecture this config exports to (gpt_neox, olmo2, llama).
    family: str = "llama"
    vocab_size: int = 32000
    # The embedding and output matrices are padded to a multiple of this (Megatron's
    # make-vocab-size-divisible-by), so that they split evenly under tensor parallelism.
    pad_vocab_multiple: int = 1
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    # None means n_heads (multi-head attention); fewer means grouped-query attention.
    n_kv_heads: Optional[int] = None
    # None means d_model // n_heads.
    head_dim: Optional[int] = None
    ffn_hidden_size: int = 2048
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True  # LayerNorm only: learnable bias (RMSNorm never has one)
    # pre: x + f(norm(x)). post: x + norm(f(x)) -- OLMo-2's "reordered norm".
    norm_position: str = "pre"
    # GPT-NeoX: x + attn(norm1(x)) + mlp(norm2(x)); attention and MLP read the same input.
    parallel_residual: bool = False
    # none; full: RMSNorm over all heads of q and of k (OLMo-2); head: per-head RMSNorm (Qwen3-style).
    qk_norm: str = "none"
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float = 10000.0
    # Fraction of each head's dimensions that are rotated (Pythia: 0.25).
    rotary_fraction: float = 1.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    init: InitConfig = field(default_factory=InitConfig)
    # Token ids written into exported Hugging Face configs (None: unset).
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.rotary_fraction)

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return int(math.ceil(self.vocab_size / m) * m)

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> "ModelConfig":
        """Raise ConfigError naming the first impossible setting; return self when buildable."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"model '{self.name}': {msg}")

        def one_of(key: str, value: str, allowed: tuple) -> None:
            need(value in allowed, f"{key}={value!r} is not one of {', '.join(allowed)}")

        one_of("family", self.family, FAMILIES)
        one_of("activation", self.activation, ACTIVATIONS)
        one_of("norm", self.norm, NORMS)
        one_of("norm_position", self.norm_position, NORM_POSITIONS)
        one_of("qk_norm", self.qk_norm, QK_NORMS)
        one_of("rope_scaling.type", self.rope_scaling.type, ROPE_SCALINGS)
        one_of("init.scheme", self.init.scheme, INIT_SCHEMES)
        one_of("init.output_scheme", self.init.output_scheme, OUTPUT_INIT_SCHEMES)
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden_size", "max_seq_len"):
            need(getattr(self, key) > 0, f"{key}={getattr(self, key)} must be positive")
        need(self.pad_vocab_multiple >= 1, f"pad_vocab_multiple={self.pad_vocab_multiple} must be >= 1")
        if self.n_kv_heads is not None:
            need(self.n_kv_heads > 0, f"n_kv_heads={self.n_kv_heads} must be positive")
            need(
                self.n_heads % self.n_kv_heads == 0,
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                f"choose n_kv_heads among {_divisors(self.n_heads)}",
            )
        if self.head_dim is None:
            need(
                self.d_model % self.n_heads == 0,
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "change one of them or set head_dim explicitly",
            )
        else:
            need(self.head_dim > 0, f"head_dim={self.head_dim} must be positive")
        need(
            0.0 < self.rotary_fraction <= 1.0,
            f"rotary_fraction={self.rotary_fraction} must be in (0, 1] (Pythia uses 0.25)",
        )
        need(
            self.rotary_dim >= 2 and self.rotary_dim % 2 == 0,
            f"rotary_fraction={self.rotary_fraction} of head_dim={self.dim_per_head} gives "
            f"{self.rotary_dim} rotated dims; RoPE needs an even number >= 2",
        )
        need(self.rope_theta > 0, f"rope_theta={self.rope_theta} must be positive")
        need(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be positive")
        need(
            not (self.parallel_residual and self.norm_position == "post"),
            "parallel_residual=true needs norm_position=pre (GPT-NeoX applies both norms to the "
            "block input; a post-sublayer norm has no meaning there)",
        )
        if self.rope_scaling.type == "llama3":
            rs = self.rope_scaling
            need(rs.factor >= 1.0, f"rope_scaling.factor={rs.factor} must be >= 1")
            need(
                rs.high_freq_factor > rs.low_freq_factor,
                f"rope_scaling.high_freq_factor={rs.high_freq_factor} must exceed "
                f"low_freq_factor={rs.low_freq_factor}",
            )
        need(self.init.std > 0, f"init.std={self.init.std} must be positive")
        return self


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
