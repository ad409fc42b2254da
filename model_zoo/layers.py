"""The building blocks every decoder variant shares: norms, rotary position embedding, the
attention kernel call and the feed-forward MLP.

The standard decoder (model.py), multi-head latent attention (mla.py) and the mixture of experts
(moe.py) all build on this module and on nothing of each other's, so model_zoo has no import cycle:
layers <- mla, moe <- model.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from model_zoo.config import ModelConfig


def upcast(x: torch.Tensor) -> torch.Tensor:
    """`x` in the precision a reduction should run in: fp32 for bf16/fp32 (as Hugging Face casts
    with `.float()`), float64 left as it is, so a float64 model (parallel.precision=fp64, the
    layout-parity checks) never rounds through fp32 anywhere."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ---------------------------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (float64 for a float64 model) and cast back, as the Hugging Face
    Llama/OLMo-2 code does (torch's fused `F.rms_norm` on the upcast copy: same math, one kernel)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(upcast(x), (x.shape[-1],), upcast(self.weight), self.eps).to(x.dtype)


def build_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.norm_bias)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------------
def rope_inverse_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies of the rotated dims, with Llama-3 scaling when configured.

    Written to produce bit-identical values to transformers' `_compute_default_rope_parameters`
    and `_compute_llama3_parameters` so that exported models match to the last ulp.
    """
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.rope_scaling
    if rs.type == "llama3":
        low_freq_wavelen = rs.original_max_position / rs.low_freq_factor
        high_freq_wavelen = rs.original_max_position / rs.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq)
        smooth = (rs.original_max_position / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    elif rs.type == "yarn":
        inv_freq = _yarn_inverse_frequencies(cfg.rope_theta, dim, rs)
    return inv_freq


def _yarn_inverse_frequencies(base: float, dim: int, rs) -> torch.Tensor:
    """YaRN: blend interpolated (divided by factor) and original frequencies with a linear ramp
    between the dims that rotate beta_fast and beta_slow times over the original context; as
    transformers' `_compute_yarn_parameters` (with truncation of the ramp bounds)."""

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(rs.original_max_position / (rotations * 2 * math.pi))) / (
            2 * math.log(base)
        )

    low = max(math.floor(correction_dim(rs.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rs.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation_weight = 1 - ramp
    return (1.0 / (rs.factor * pos_freqs)) * (1 - extrapolation_weight) + (
        1.0 / pos_freqs
    ) * extrapolation_weight


def rope_attention_factor(cfg: ModelConfig) -> float:
    """YaRN scales cos/sin by mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
    rs = cfg.rope_scaling
    if rs.type != "yarn":
        return 1.0
    if rs.mscale and rs.mscale_all_dim:
        return yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim)
    return yarn_mscale(rs.factor, 1.0)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` dims of each head of x (batch, seq, heads, head_dim).

    Uses the half-split ("rotate_half") pairing of GPT-NeoX and Hugging Face Llama; dims past the
    rotary part pass through unchanged (partial rotary, as Pythia's 25%).
    """
    rot = cos.shape[-1]
    # cos/sin are (seq, rot) for default positions or (batch, seq, rot) for explicit position ids.
    cos = (cos[None] if cos.dim() == 2 else cos)[:, :, None, :].to(x.dtype)
    sin = (sin[None] if sin.dim() == 2 else sin)[:, :, None, :].to(x.dtype)
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


def yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0,x1),(x2,x3),... of x (batch, seq, heads, rot), DeepSeek's
    layout. The result is written de-interleaved ([evens..., odds...]), as transformers'
    DeepSeek-V3 code does; since q and k get the same permutation, attention scores are unchanged."""
    half = cos.shape[-1] // 2
    cos = (cos[None] if cos.dim() == 2 else cos)[:, :, None, :half].to(x.dtype)
    sin = (sin[None] if sin.dim() == 2 else sin)[:, :, None, :half].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# ---------------------------------------------------------------------------------------------
# Attention kernel and feed-forward
# ---------------------------------------------------------------------------------------------
def sdpa(q, k, v, attn_mask=None, scale: float | None = None) -> torch.Tensor:
    """Causal attention over (batch, heads, seq, head_dim), the kernel chosen by the mask that
    `attention_mask` built: None -> SDPA's plain causal path (flash / cuDNN on GPU); a boolean
    tensor (already causal, see `document_attention_mask`) -> SDPA with that dense mask; a
    FlexAttention BlockMask -> flex_attention, which skips the masked-out blocks."""
    if attn_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if isinstance(attn_mask, BlockMask):
        # Eager flex_attention is a reference implementation (it materialises the scores);
        # the fused kernel comes from torch.compile, which is what torchtitan does as well.
        run = _compiled_flex_attention() if q.is_cuda else flex_attention
        return run(q, k, v, block_mask=attn_mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


@functools.cache
def _compiled_flex_attention():
    """flex_attention through torch.compile, made on the first CUDA call (once per process):
    building it at import would load the compiler stack into every process that imports the
    zoo."""
    return torch.compile(flex_attention, dynamic=False)


def document_attention_mask(document_ids: torch.Tensor, sliding_window: int = 0) -> torch.Tensor:
    """(batch, seq) document ids of packed samples -> (batch, 1, seq, seq) boolean mask that is
    causal and keeps each token from attending across a document boundary; with
    `sliding_window` > 0 also to the last `sliding_window` tokens (itself included)."""
    seq = document_ids.shape[1]
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=document_ids.device).tril()
    if sliding_window > 0:
        causal = causal.triu(-(sliding_window - 1))
    return (same_doc & causal)[:, None]


def resolve_attention_kernel(kernel: str, device: torch.device) -> str:
    """model.attention_kernel -> the kernel that runs: `auto` is flex on CUDA and the dense-mask
    SDPA elsewhere (torch 2.13's FlexAttention has no backward on CPU: it raises
    "FlexAttention does not support backward on CPU", eager and compiled alike)."""
    if kernel == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return kernel


class AttentionMasks:
    """Builds the mask of a forward pass, and remembers the FlexAttention block masks it built.

    A block mask costs a pass over seq x seq positions (and, on CUDA, a compiled kernel launch),
    so the masks of the last few document-id tensors are kept: the same tensor object, unchanged
    since (its version counter), gets the same BlockMask object back. Holding the tensor keeps
    its memory from being reused by another batch while its entry lives."""

    def __init__(self, kernel: str, sliding_window: int, capacity: int = 8):
        self.kernel, self.sliding_window, self.capacity = kernel, sliding_window, capacity
        self._cache: list[tuple[torch.Tensor | None, int, int, BlockMask]] = []

    def __deepcopy__(self, memo):  # pipeline stages copy the model: each gets an empty cache
        return AttentionMasks(self.kernel, self.sliding_window, self.capacity)

    def build(self, document_ids: torch.Tensor | None, batch: int, seq: int, device):
        """None (plain causal: SDPA's fused causal path), a dense boolean mask or a BlockMask."""
        if document_ids is None and self.sliding_window == 0:
            return None
        if resolve_attention_kernel(self.kernel, torch.device(device)) == "sdpa":
            if document_ids is None:
                document_ids = torch.zeros(1, seq, dtype=torch.long, device=device)
            return document_attention_mask(document_ids, self.sliding_window)
        return self.block_mask(document_ids, batch, seq, device)

    def block_mask(self, document_ids: torch.Tensor | None, batch: int, seq: int, device):
        version = -1 if document_ids is None else document_ids._version
        for ids, ver, length, mask in self._cache:
            if ids is document_ids and ver == version and length == seq:
                return mask
        mask = flex_block_mask(document_ids, batch, seq, device, self.sliding_window)
        self._cache = [(document_ids, version, seq, mask)] + self._cache[: self.capacity - 1]
        return mask


def flex_block_mask(
    document_ids: torch.Tensor | None, batch: int, seq: int, device, sliding_window: int = 0
) -> BlockMask:
    """The FlexAttention BlockMask of `document_attention_mask` (same positions kept): causal,
    within the document when ids are given, within the window when `sliding_window` > 0. One
    mask per sequence of the batch, shared by every head (H=None), so a tensor-parallel rank
    holding a slice of the heads uses it as is."""
    window = sliding_window

    def mask_mod(b, h, q_idx, kv_idx):
        keep = q_idx >= kv_idx
        if window > 0:
            keep = keep & (q_idx - kv_idx < window)
        if document_ids is not None:
            keep = keep & (document_ids[b, q_idx] == document_ids[b, kv_idx])
        return keep

    rows = batch if document_ids is not None else None
    return create_block_mask(mask_mod, rows, None, seq, seq, device=device)


class FeedForward(nn.Module):
    """SwiGLU (w2(silu(w1 x) * w3 x)) or GeLU (w2(gelu(w1 x))) MLP. `hidden`/`bias` override the
    config for MoE shared experts."""

    def __init__(self, cfg: ModelConfig, hidden: int | None = None, bias: bool | None = None):
        super().__init__()
        hidden = cfg.ffn_hidden_size if hidden is None else hidden
        bias = cfg.mlp_bias if bias is None else bias
        self.swiglu = cfg.activation == "swiglu"
        self.w1 = nn.Linear(cfg.d_model, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, cfg.d_model, bias=bias)
        if self.swiglu:
            self.w3 = nn.Linear(cfg.d_model, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))
