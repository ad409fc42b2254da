"""Typed model configuration: one dataclass describes every decoder in the zoo.

Family differences (Pythia/GPT-NeoX, OLMo-2, Llama-3) are switches on this one config, not separate
model classes. The dataclasses are plain Python so that `pretrain/` can register them with Hydra and
`model_zoo` stays free of anything but torch. `validate()` runs before any tensor is allocated and
explains, in words, what is wrong and how to fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from configcore import ConfigError, need

ACTIVATIONS = ("swiglu", "gelu")
NORMS = ("rmsnorm", "layernorm")
NORM_POSITIONS = ("pre", "post")
QK_NORMS = ("none", "full", "head")
ROPE_SCALINGS = ("none", "llama3", "yarn")
ROUTERS = ("softmax", "sigmoid")
INIT_SCHEMES = ("normal", "small_init")
OUTPUT_INIT_SCHEMES = ("same", "scaled_depth", "wang")
ATTENTION_KERNELS = ("auto", "sdpa", "flex")
# The families `validate` accepts, filled by the registry (model_zoo/families/__init__.py) as
# model_zoo is imported. The registry is not imported here: each family's spec holds a
# ModelConfig, so the registry imports this module, and the arrow may point only that way.
FAMILY_NAMES: list[str] = []


@dataclass
class RopeScalingConfig:
    """Frequency scaling of RoPE.

    llama3: Llama-3.1's piecewise scaling of long wavelengths (factor, low/high_freq_factor).
    yarn:   YaRN (Peng et al. 2023) as DeepSeek-V2/V3 use it: interpolation ramp between beta_fast
            and beta_slow rotations, cos/sin scaled by mscale(factor, mscale) /
            mscale(factor, mscale_all_dim), and the softmax scale multiplied by
            mscale(factor, mscale_all_dim)^2.
    """

    type: str = "none"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


@dataclass
class MoEConfig:
    """Mixture-of-experts feed-forward (dropless). n_experts=0 means a dense model.

    router: softmax (Mixtral, OLMoE, DeepSeek-V2) or sigmoid (DeepSeek-V3) scores. With
    n_group > 1, routing is group-limited: experts are split into n_group groups, each token keeps
    its topk_group best groups (group score: max for softmax as DeepSeek-V2, sum of the top two for
    sigmoid as DeepSeek-V3) and picks top_k experts inside them.
    """

    n_experts: int = 0
    top_k: int = 2
    expert_hidden_size: int = 0
    n_shared_experts: int = (
        0  # shared experts form one MLP of n_shared_experts x expert_hidden_size
    )
    router: str = "softmax"
    norm_topk_prob: bool = False  # renormalise the top-k weights to sum to one
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    first_k_dense: int = 0  # the first k layers keep a dense MLP (DeepSeek-V3: 3)
    moe_every: int = 1  # after those, every N-th layer is MoE
    aux_loss_coef: float = 0.0  # switch-transformer load-balancing loss
    z_loss_coef: float = 0.0  # router z-loss (ST-MoE)
    # DeepSeek-V3 auxiliary-loss-free balancing: after each optimizer step, each expert's
    # selection bias moves by this much toward balance (0 disables).
    bias_update_speed: float = 0.0
    # Experts as one torch._grouped_mm (auto: wherever dtype and 16-byte row alignment allow;
    # it runs on CPU and Hopper, and measured 0.86 of transformers' MoE time on CPU against 0.93
    # for the loop, benchmarks/moe_experts.py) or as a loop over experts (off).
    grouped_mm: str = "auto"

    @property
    def enabled(self) -> bool:
        return self.n_experts > 0


@dataclass
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3). kv_lora_rank=0 means standard attention."""

    q_lora_rank: int = 0  # 0: queries projected directly (DeepSeek-V2-Lite)
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # DeepSeek rotates interleaved pairs (x0,x1),(x2,x3)... of the rope part; False: half split.
    rope_interleave: bool = True
    latent_norm_eps: float = 1e-6  # RMSNorm on the compressed latents (HF hard-codes 1e-6)

    @property
    def enabled(self) -> bool:
        return self.kv_lora_rank > 0


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
    # Which Hugging Face architecture this config exports to: a family of model_zoo/families/
    # (gpt_neox, olmo2, llama, qwen3, mixtral, olmoe, deepseek_v2, deepseek_v3).
    family: str = "llama"
    vocab_size: int = 32000
    # The embedding and output matrices are padded to a multiple of this (Megatron's
    # make-vocab-size-divisible-by), so that they split evenly under tensor parallelism.
    pad_vocab_multiple: int = 1
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    # None means n_heads (multi-head attention); fewer means grouped-query attention.
    n_kv_heads: int | None = None
    # None means d_model // n_heads.
    head_dim: int | None = None
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
    # Kernel of masked attention (packed documents with data.intra_doc_mask, or a sliding
    # window); plain causal attention always takes SDPA's fused causal path (flash/cuDNN on GPU).
    # auto: FlexAttention with a block mask on CUDA, SDPA with a dense boolean mask elsewhere
    # (torch 2.13's FlexAttention cannot run backward on CPU); sdpa: always the dense mask (the
    # reference); flex: always FlexAttention (on CPU for forward-only use, e.g. parity checks).
    attention_kernel: str = "auto"
    # Each token attends to at most this many tokens, itself included (0: the whole causal past).
    sliding_window: int = 0
    tie_embeddings: bool = False
    init: InitConfig = field(default_factory=InitConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    mla: MLAConfig = field(default_factory=MLAConfig)
    # Token ids written into exported Hugging Face configs (None: unset).
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        if self.mla.enabled:
            return self.mla.qk_rope_head_dim
        return int(self.dim_per_head * self.rotary_fraction)

    def is_moe_layer(self, layer: int) -> bool:
        m = self.moe
        return (
            m.enabled and layer >= m.first_k_dense and (layer - m.first_k_dense) % m.moe_every == 0
        )

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return int(math.ceil(self.vocab_size / m) * m)

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> ModelConfig:
        """Raise ConfigError naming the model and its first impossible setting; return self when
        buildable."""
        try:
            self._check_fields()
        except ConfigError as err:
            raise ConfigError(f"model '{self.name}': {err}") from None
        return self

    def _check_fields(self) -> None:
        def one_of(key: str, value: str, allowed: tuple) -> None:
            need(value in allowed, f"{key}={value!r} is not one of {', '.join(allowed)}")

        one_of("family", self.family, tuple(FAMILY_NAMES))
        one_of("activation", self.activation, ACTIVATIONS)
        one_of("norm", self.norm, NORMS)
        one_of("norm_position", self.norm_position, NORM_POSITIONS)
        one_of("qk_norm", self.qk_norm, QK_NORMS)
        one_of("rope_scaling.type", self.rope_scaling.type, ROPE_SCALINGS)
        one_of("init.scheme", self.init.scheme, INIT_SCHEMES)
        one_of("init.output_scheme", self.init.output_scheme, OUTPUT_INIT_SCHEMES)
        one_of("attention_kernel", self.attention_kernel, ATTENTION_KERNELS)
        need(
            self.sliding_window >= 0,
            f"sliding_window={self.sliding_window} must be >= 0 (0 attends to the whole past)",
        )
        for key in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "ffn_hidden_size",
            "max_seq_len",
        ):
            need(getattr(self, key) > 0, f"{key}={getattr(self, key)} must be positive")
        need(
            self.pad_vocab_multiple >= 1,
            f"pad_vocab_multiple={self.pad_vocab_multiple} must be >= 1",
        )
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
        if self.rope_scaling.type == "yarn":
            need(
                self.rope_scaling.factor >= 1.0,
                f"rope_scaling.factor={self.rope_scaling.factor} must be >= 1",
            )
        self._validate_moe()
        self._validate_mla()

    def _validate_moe(self) -> None:
        m = self.moe
        if not m.enabled:
            need(m.n_experts == 0, f"moe.n_experts={m.n_experts} must be >= 0")
            return
        need(m.router in ROUTERS, f"moe.router={m.router!r} is not one of {', '.join(ROUTERS)}")
        need(
            1 <= m.top_k <= m.n_experts,
            f"moe.top_k={m.top_k} must be between 1 and moe.n_experts={m.n_experts}",
        )
        need(
            m.expert_hidden_size > 0,
            f"moe.expert_hidden_size={m.expert_hidden_size} must be positive",
        )
        need(m.n_shared_experts >= 0, f"moe.n_shared_experts={m.n_shared_experts} must be >= 0")
        need(m.moe_every >= 1, f"moe.moe_every={m.moe_every} must be >= 1")
        need(
            0 <= m.first_k_dense < self.n_layers,
            f"moe.first_k_dense={m.first_k_dense} leaves no MoE layer among n_layers={self.n_layers}",
        )
        need(
            m.n_group >= 1 and m.n_experts % m.n_group == 0,
            f"moe.n_experts={m.n_experts} is not divisible by moe.n_group={m.n_group}; "
            f"choose n_group among {_divisors(m.n_experts)}",
        )
        need(
            1 <= m.topk_group <= m.n_group,
            f"moe.topk_group={m.topk_group} must be between 1 and moe.n_group={m.n_group}",
        )
        if m.n_group > 1:
            per_group = m.n_experts // m.n_group
            need(
                m.top_k <= m.topk_group * per_group,
                f"moe.top_k={m.top_k} exceeds the {m.topk_group} x {per_group} experts that "
                "group-limited routing leaves; raise topk_group or lower top_k",
            )
            need(
                m.router == "softmax" or per_group >= 2,
                "sigmoid group routing scores each group by its top two experts: "
                f"moe.n_experts / moe.n_group = {per_group} must be >= 2",
            )
        need(
            m.grouped_mm in ("auto", "off"),
            f"moe.grouped_mm={m.grouped_mm!r} is not one of auto, off",
        )
        for key in ("aux_loss_coef", "z_loss_coef", "bias_update_speed"):
            need(getattr(m, key) >= 0, f"moe.{key}={getattr(m, key)} must be >= 0")

    def _validate_mla(self) -> None:
        a = self.mla
        if not a.enabled:
            need(a.kv_lora_rank == 0, f"mla.kv_lora_rank={a.kv_lora_rank} must be >= 0")
            return
        need(
            a.kv_lora_rank < self.d_model,
            f"mla.kv_lora_rank={a.kv_lora_rank} is not smaller than d_model={self.d_model}: the "
            "latent must compress the hidden state; choose kv_lora_rank < d_model",
        )
        need(
            0 <= a.q_lora_rank < self.d_model,
            f"mla.q_lora_rank={a.q_lora_rank} must be 0 (no query compression) or < d_model="
            f"{self.d_model}",
        )
        for key in ("qk_nope_head_dim", "v_head_dim"):
            need(getattr(a, key) > 0, f"mla.{key}={getattr(a, key)} must be positive")
        need(
            a.qk_rope_head_dim > 0 and a.qk_rope_head_dim % 2 == 0,
            f"mla.qk_rope_head_dim={a.qk_rope_head_dim} must be a positive even number",
        )
        need(
            self.qk_norm == "none",
            "qk_norm applies to standard attention; set qk_norm=none with MLA",
        )
        need(
            self.n_kv_heads in (None, self.n_heads),
            "MLA has no KV head groups (every head reads the shared latent); set n_kv_heads=null",
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
