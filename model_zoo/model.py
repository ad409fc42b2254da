"""One configurable decoder-only transformer for every family in the zoo.

Pythia (GPT-NeoX), OLMo-2 and Llama-3 are the same network with different switches
(`model_zoo.config.ModelConfig`): norm type and position, parallel residual, QK-norm, rotary
fraction and scaling, activation, biases, tied embeddings. The code is single-device; parallelism is
applied from the outside by `parallel/`, which is why:

* layers live in a ModuleDict keyed by their index, so a pipeline stage can delete layers and keep
  the fully qualified parameter names of the full model (checkpoints stay layout-independent);
* `tok_embeddings`, `norm` and `output` may be set to None on stages that do not own them;
* attention reshapes with `-1` heads, so a tensor-parallel shard that holds fewer heads works as is.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from model_zoo.config import ModelConfig
from model_zoo.layers import (
    AttentionMasks,
    FeedForward,
    RMSNorm,
    apply_rope,
    build_norm,
    rope_attention_factor,
    rope_inverse_frequencies,
)
from model_zoo.mla import AttentionKernel, MLAttention
from model_zoo.moe import GroupedExperts, MoE, TopKRouter


# ---------------------------------------------------------------------------------------------
# Attention and the transformer block
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Causal self-attention with MHA/GQA, optional QK-norm, (partial) RoPE and SDPA."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.dim_per_head
        q_dim, kv_dim = cfg.n_heads * self.head_dim, cfg.kv_heads * self.head_dim
        self.wq = nn.Linear(cfg.d_model, q_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.d_model, kv_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.d_model, kv_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(q_dim, cfg.d_model, bias=cfg.attn_out_bias)
        self.kernel = AttentionKernel()
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm == "full":  # OLMo-2: one RMSNorm over all heads of q, one over all of k
            self.q_norm, self.k_norm = build_norm(cfg, q_dim), build_norm(cfg, kv_dim)
        elif cfg.qk_norm == "head":  # per-head norm shared across heads
            self.q_norm, self.k_norm = (
                build_norm(cfg, self.head_dim),
                build_norm(cfg, self.head_dim),
            )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        bsz, seq, _ = x.shape
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(bsz, seq, -1, self.head_dim)
        k = k.view(bsz, seq, -1, self.head_dim)
        v = v.view(bsz, seq, -1, self.head_dim)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        # Query heads per KV head, from the shapes: n_heads // n_kv_heads here, also when a
        # tensor-parallel rank holds a slice of the heads (or one replicated KV head).
        n_rep = q.shape[1] // k.shape[1]
        if n_rep > 1:  # explicit repeat: works for every SDPA backend and under DTensor
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        out = self.kernel(q, k, v, attn_mask)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))


class TransformerBlock(nn.Module):
    """Attention + MLP with pre-norm, OLMo-2 post-sublayer norm, or GPT-NeoX parallel residual.

    The attention is MLA when `mla.kv_lora_rank > 0`; the MLP is a mixture of experts (`moe`,
    torchtitan's name) on the layers `cfg.is_moe_layer` selects, else a dense `feed_forward`.
    """

    def __init__(self, cfg: ModelConfig, layer_id: int = 0):
        super().__init__()
        self.norm_position = cfg.norm_position
        self.parallel_residual = cfg.parallel_residual
        self.attention = MLAttention(cfg) if cfg.mla.enabled else Attention(cfg)
        if cfg.is_moe_layer(layer_id):
            self.moe = MoE(cfg)
        else:
            self.feed_forward = FeedForward(cfg)
        self.attention_norm = build_norm(cfg, cfg.d_model)
        self.ffn_norm = build_norm(cfg, cfg.d_model)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x) if hasattr(self, "moe") else self.feed_forward(x)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.parallel_residual:
            return (
                x
                + self.attention(self.attention_norm(x), cos, sin, attn_mask)
                + self.mlp(self.ffn_norm(x))
            )
        if self.norm_position == "post":
            x = x + self.attention_norm(self.attention(x, cos, sin, attn_mask))
            return x + self.ffn_norm(self.mlp(x))
        x = x + self.attention(self.attention_norm(x), cos, sin, attn_mask)
        return x + self.mlp(self.ffn_norm(x))


# ---------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------
class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        vocab = cfg.padded_vocab_size
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(vocab, cfg.d_model)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg, i) for i in range(cfg.n_layers)})
        self.norm: nn.Module | None = build_norm(cfg, cfg.d_model)
        self.output: nn.Linear | None = nn.Linear(cfg.d_model, vocab, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # RoPE tables are derived data, never saved: recomputed on every build and device move.
        cos, sin = self._rope_tables(cfg.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # Builds each forward's attention mask (dense or FlexAttention block mask, cached)
        self.attention_masks = AttentionMasks(cfg.attention_kernel, cfg.sliding_window)

    def _rope_tables(self, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = rope_inverse_frequencies(self.cfg).to(device)
        positions = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        factor = rope_attention_factor(self.cfg)
        return emb.cos() * factor, emb.sin() * factor

    def reset_rope_tables(self) -> None:
        """Recompute the RoPE buffers (after building on the meta device and `to_empty`)."""
        cos, sin = self._rope_tables(self.cfg.max_seq_len, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def _init_rule(self, name: str) -> tuple[str, float]:
        """How parameter `name` starts: ("normal", std), ("ones", 0) or ("zeros", 0).

        Decided by the module that owns it, so it also works on a pipeline stage or a parallelized
        copy (same names; Float8Linear is an nn.Linear, the parallel experts a GroupedExperts)."""
        init = self.cfg.init
        d, n_layers = self.cfg.d_model, self.cfg.n_layers
        std = math.sqrt(2.0 / (5.0 * d)) if init.scheme == "small_init" else init.std
        out_std = {
            "same": std,
            "scaled_depth": std / math.sqrt(2.0 * n_layers),
            "wang": 2.0 / (n_layers * math.sqrt(d)),
        }[init.output_scheme]
        module_name, attr = name.rsplit(".", 1) if "." in name else ("", name)
        module = self.get_submodule(module_name)
        if isinstance(module, (RMSNorm, nn.LayerNorm)):
            return ("ones", 0.0) if attr == "weight" else ("zeros", 0.0)
        if isinstance(module, GroupedExperts):
            return ("normal", out_std if attr == "w2" else std)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if attr == "bias":
                return ("zeros", 0.0)
            # Attention output and MLP down projections (incl. shared experts) write into the
            # residual stream: they take the output std. (The router gate is a plain Linear.)
            return ("normal", out_std if module_name.endswith((".wo", ".w2")) else std)
        raise ValueError(f"no initialisation rule for parameter {name} of {type(module).__name__}")

    @torch.no_grad()
    def initial_value(self, name: str, seed: int = 0) -> torch.Tensor:
        """The initial value of parameter `name`: a full fp32 tensor on the CPU.

        Every parameter draws from its own generator, seeded by (seed, name): its value depends
        neither on the device nor on which other parameters a process holds, so a pipeline stage
        or a tensor-parallel rank generates only its own parameters, one at a time, and gets what
        one process would (parallel/engine.py), without a full copy of the model in memory."""
        kind, std = self._init_rule(name)
        shape = self.get_parameter(name).shape  # the global shape, also for a DTensor
        if kind == "ones":
            return torch.ones(shape)
        if kind == "zeros":
            return torch.zeros(shape)
        digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
        gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        value = torch.empty(shape, dtype=torch.float32)
        cut = self.cfg.init.truncation
        if cut > 0:
            nn.init.trunc_normal_(value, 0.0, std, -cut * std, cut * std, generator=gen)
        else:
            value.normal_(0.0, std, generator=gen)
        return value

    @torch.no_grad()
    def init_buffers(self) -> None:
        """RoPE tables, and zeros for the MoE routing state (bias, token counts): what a fresh
        model holds after `to_empty` left garbage in the buffers."""
        for module in self.modules():
            if isinstance(module, MoE):
                module.tokens_per_expert.zero_()
            elif isinstance(module, TopKRouter):
                module.expert_bias.zero_()
        if self.rope_cos.device.type != "meta":
            self.reset_rope_tables()

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Initialise every parameter from `seed` (see `initial_value`) and every buffer."""
        for name, param in self.named_parameters():  # a tied output weight is listed once
            param.copy_(self.initial_value(name, seed).to(param.dtype))
        self.init_buffers()

    def forward(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens (batch, seq) -> logits (batch, seq, padded_vocab).

        `document_ids` (batch, seq), for packed samples, restricts attention to the token's own
        document (the intra-document mask); pair it with position ids that restart per document.

        On a pipeline stage without embeddings, `tokens` is the hidden state from the previous
        stage; on one without the output layer, the hidden state is returned.
        """
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        seq = h.shape[1]
        if position_ids is None:
            cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        else:
            cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
        # The full sequence length: under sequence parallel h holds only this rank's seq/tp
        # positions, while attention runs on the whole (gathered) sequence.
        ids = document_ids if document_ids is not None else position_ids
        attn_seq = ids.shape[-1] if ids is not None else seq
        attn_mask = self.attention_masks.build(document_ids, h.shape[0], attn_seq, h.device)
        for layer in self.layers.values():
            h = layer(h, cos, sin, attn_mask)
        if self.norm is not None:
            h = self.norm(h)
        if self.output is not None:
            h = self.output(h)
        return h


def build_model(cfg: ModelConfig, seed: int = 0, device: str | torch.device = "cpu") -> Transformer:
    """Build and initialise a model. On device='meta' nothing is allocated (for counting and for
    the parallel engine, which materialises shards itself)."""
    with torch.device(device):
        model = Transformer(cfg)
    if torch.device(device).type != "meta":
        model.init_weights(seed)
    return model
