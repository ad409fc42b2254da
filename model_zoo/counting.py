"""Parameter and FLOP counting.

Counts come from the model itself, built on the meta device (no memory, so 70B and larger count in
milliseconds): the count can never drift from the code that trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_zoo.config import ModelConfig
from model_zoo.model import build_model
from model_zoo.moe import GroupedExperts


@dataclass(frozen=True)
class ParameterCount:
    total: int
    embedding: int  # input embedding matrix
    output: int  # output layer (0 when tied to the embedding)
    non_embedding: int  # total - embedding - output (Pythia's / Kaplan's convention)
    active: int  # parameters used per token (== total for dense models)

    @property
    def active_non_embedding(self) -> int:
        return self.active - self.embedding - self.output


def count_parameters(cfg: ModelConfig) -> ParameterCount:
    model = build_model(cfg, device="meta")
    total = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights
    # A token passes through top_k of the n_experts routed experts of each MoE layer; shared
    # experts, router and everything else are always active.
    inactive = sum(
        sum(p.numel() for p in m.parameters())
        * (cfg.moe.n_experts - cfg.moe.top_k)
        // cfg.moe.n_experts
        for m in model.modules()
        if isinstance(m, GroupedExperts)
    )
    embedding = model.tok_embeddings.weight.numel()
    output = 0 if cfg.tie_embeddings else model.output.weight.numel()
    return ParameterCount(
        total=total,
        embedding=embedding,
        output=output,
        non_embedding=total - embedding - output,
        active=total - inactive,
    )


def training_flops_per_token(
    cfg: ModelConfig, seq_len: int | None = None, count: ParameterCount | None = None
) -> int:
    """Model FLOPs to train on one token (forward + backward), the numerator of MFU. For MoE,
    only active parameters count.

    6 x (active non-embedding parameters + output layer, counted even when tied, since the
    projection to the vocabulary is a matmul either way) + attention score/value matmuls counted in
    full, not halved for causality: 12 x layers x (heads x head_dim) x seq_len (PaLM, Megatron).
    """
    seq_len = seq_len or cfg.max_seq_len
    count = count or count_parameters(cfg)  # callers that already counted pass it in
    output_matmul = cfg.padded_vocab_size * cfg.d_model
    if cfg.mla.enabled:  # scores use the q/k head dim, the weighted sum the v head dim
        a = cfg.mla
        per_head = (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) / 2
    else:
        per_head = cfg.dim_per_head
    attention = int(12 * cfg.n_layers * cfg.n_heads * per_head * seq_len)
    return 6 * (count.active_non_embedding + output_matmul) + attention


def format_count(n: int, giga: str = "B") -> str:
    """1234567 -> '1.23M'. `giga` is 'B' for parameters (billions) or 'G' for FLOPs."""
    for unit, scale in (("T", 1e12), (giga, 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
