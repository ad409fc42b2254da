"""Multi-head latent attention (DeepSeek-V2/V3).

Keys and values are reconstructed from a low-rank latent (kv_lora_rank) shared by all heads, which
is what a KV cache stores; queries are optionally compressed too (q_lora_rank). Positional
information is carried by a separate, "decoupled" rope part of each head (qk_rope_head_dim): one
rope key shared by all heads comes straight from the input, next to the per-head no-rope part.
Names follow torchtitan's DeepSeek-V3 model (wq / wq_a, q_norm, wq_b, wkv_a, kv_norm, wkv_b, wo).
"""

from __future__ import annotations

import torch
from torch import nn

from model_zoo.config import ModelConfig
from model_zoo.layers import RMSNorm, apply_rope, apply_rope_interleaved, sdpa, yarn_mscale


class AttentionKernel(nn.Module):
    """The attention kernel of every attention module (`sdpa`: causal, with the forward's mask),
    as a module of its own so that parallel/ can wrap it (context parallel's all-to-all runs
    around it) without touching the projections. No parameters: names and checkpoints are those
    of the model without it. Defined here, not in model.py, because model.py imports this file.

    q, k, v: [batch, heads, seq, head_dim] -> [batch, heads, seq, v_head_dim]."""

    def forward(self, q, k, v, attn_mask=None, scale: float | None = None) -> torch.Tensor:
        return sdpa(q, k, v, attn_mask, scale=scale)


class MLAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        a = cfg.mla
        self.cfg = a
        self.apply_rope = apply_rope_interleaved if a.rope_interleave else apply_rope
        self.qk_head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim
        n_heads = cfg.n_heads
        if a.q_lora_rank == 0:
            self.wq = nn.Linear(cfg.d_model, n_heads * self.qk_head_dim, bias=False)
        else:
            self.wq_a = nn.Linear(cfg.d_model, a.q_lora_rank, bias=cfg.qkv_bias)
            self.q_norm = RMSNorm(a.q_lora_rank, a.latent_norm_eps)
            self.wq_b = nn.Linear(a.q_lora_rank, n_heads * self.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.d_model, a.kv_lora_rank + a.qk_rope_head_dim, bias=cfg.qkv_bias)
        self.kv_norm = RMSNorm(a.kv_lora_rank, a.latent_norm_eps)
        self.wkv_b = nn.Linear(
            a.kv_lora_rank, n_heads * (a.qk_nope_head_dim + a.v_head_dim), bias=False
        )
        self.wo = nn.Linear(n_heads * a.v_head_dim, cfg.d_model, bias=cfg.attn_out_bias)
        self.kernel = AttentionKernel()
        self.softmax_scale = self.qk_head_dim**-0.5
        rs = cfg.rope_scaling
        if rs.type == "yarn" and rs.mscale_all_dim:
            self.softmax_scale *= yarn_mscale(rs.factor, rs.mscale_all_dim) ** 2

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask=None
    ) -> torch.Tensor:
        a = self.cfg
        bsz, seq, _ = x.shape
        q = self.wq(x) if a.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(bsz, seq, -1, self.qk_head_dim)
        q_nope, q_rope = q.split([a.qk_nope_head_dim, a.qk_rope_head_dim], dim=-1)
        kv_latent, k_rope = self.wkv_a(x).split([a.kv_lora_rank, a.qk_rope_head_dim], dim=-1)
        k_rope = self.apply_rope(k_rope.unsqueeze(2), cos, sin)  # one rope key for all heads
        q_rope = self.apply_rope(q_rope, cos, sin)
        kv = self.wkv_b(self.kv_norm(kv_latent)).view(
            bsz, seq, -1, a.qk_nope_head_dim + a.v_head_dim
        )
        k_nope, v = kv.split([a.qk_nope_head_dim, a.v_head_dim], dim=-1)
        heads = q.shape[2]
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, -1, heads, -1)), dim=-1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = self.kernel(q, k, v, attn_mask, self.softmax_scale)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))
