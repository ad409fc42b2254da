"""Dropless mixture-of-experts feed-forward: router, grouped experts, shared experts, balancing.

The forward pass is four separate steps so that the parallel engine can replace the middle ones
with expert-parallel versions (all-to-all over an `ep` mesh axis) without touching this file:

    route    -> per token: top-k expert ids and weights              (TopKRouter)
    dispatch -> tokens sorted by expert, counts per expert             (MoE.dispatch)
    experts  -> one SwiGLU per expert over its contiguous slice        (GroupedExperts.forward)
    combine  -> weighted scatter-add back to token order              (MoE.combine)

This is the split torchtitan uses: expert parallelism wraps `GroupedExperts` so that its input
(tokens sorted by expert, with their counts) is exchanged across ranks before the matmuls and
returned after.

Balancing: the switch-transformer auxiliary loss and the router z-loss enter the backward pass
through `AuxLossInjector` (as Megatron's MoEAuxLossAutoScaler), so the training loop and pipeline
schedules need no plumbing for them; DeepSeek-V3's auxiliary-loss-free balancing keeps a per-expert
bias added to the scores used for *selection* only, nudged toward balance after each optimizer
step by `update_expert_biases`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.config import ModelConfig, MoEConfig
from model_zoo.layers import FeedForward, upcast


class AuxLossInjector(torch.autograd.Function):
    """Identity on `output`; in backward, also sends gradient 1 into `aux_loss`.

    The auxiliary loss is thereby optimised as if added to the training loss, without being
    returned through every layer and pipeline stage.
    """

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux_loss: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(aux_loss)
        ctx.scale = scale
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (aux_loss,) = ctx.saved_tensors
        return grad_output, torch.full_like(aux_loss, ctx.scale), None


class TopKRouter(nn.Module):
    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(d_model, cfg.n_experts, bias=False)
        # Selection bias for auxiliary-loss-free balancing; a persistent buffer (saved in
        # checkpoints, exported as DeepSeek-V3's e_score_correction_bias), never trained by SGD.
        self.register_buffer("expert_bias", torch.zeros(cfg.n_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (tokens, d) -> (weights (tokens, k), expert ids (tokens, k), router logits fp32)."""
        cfg = self.cfg
        logits = F.linear(upcast(x), upcast(self.gate.weight))
        scores = logits.sigmoid() if cfg.router == "sigmoid" else logits.softmax(dim=-1)
        choice = scores + self.expert_bias  # the bias steers selection, never the weights
        if cfg.n_group > 1:
            choice = self._limit_to_groups(choice)
        # Sorting ties by index (sorted=True in topk) keeps selection deterministic across runs.
        ids = torch.topk(choice, k=cfg.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * cfg.routed_scaling_factor, ids, logits

    def _limit_to_groups(self, choice: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        grouped = choice.view(-1, cfg.n_group, cfg.n_experts // cfg.n_group)
        if cfg.router == "sigmoid":  # DeepSeek-V3: a group's score is the sum of its top two
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        else:  # DeepSeek-V2: a group's score is its best expert
            group_scores = grouped.max(dim=-1).values
        keep = torch.zeros_like(group_scores)
        keep.scatter_(1, torch.topk(group_scores, k=cfg.topk_group, dim=-1).indices, 1.0)
        mask = keep.bool().unsqueeze(-1).expand_as(grouped).reshape(choice.shape)
        # DeepSeek-V2 zeroes excluded softmax scores; V3 sets them to -inf. For top-k selection
        # over non-negative (softmax) scores both exclude the same experts except in exact ties.
        return choice.masked_fill(~mask, float("-inf") if cfg.router == "sigmoid" else 0.0)


class GroupedExperts(nn.Module):
    """n_experts SwiGLU MLPs stored as 3-D weights: w1, w3 (E, hidden, d) and w2 (E, d, hidden)."""

    def __init__(self, d_model: int, hidden: int, n_experts: int, use_grouped_mm: str = "auto"):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.w3 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.use_grouped_mm = use_grouped_mm

    def forward(self, x: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """x (tokens sorted by expert, d), counts (E,) -> (tokens, d), same order."""
        if self._grouped_mm_ok(x):
            offsets = torch.cumsum(num_tokens_per_expert, dim=0, dtype=torch.int32)
            h = F.silu(torch._grouped_mm(x, self.w1.transpose(-2, -1), offs=offsets))
            h = h * torch._grouped_mm(x, self.w3.transpose(-2, -1), offs=offsets)
            return torch._grouped_mm(h, self.w2.transpose(-2, -1), offs=offsets)
        # Fallback: one matmul per expert over its contiguous slice. An expert with no tokens
        # contributes nothing, so its gradient is exactly zero.
        outputs = []
        for e, chunk in enumerate(torch.split(x, num_tokens_per_expert.tolist(), dim=0)):
            h = F.silu(chunk @ self.w1[e].t()) * (chunk @ self.w3[e].t())
            outputs.append(h @ self.w2[e].t())
        return torch.cat(outputs, dim=0)

    def _grouped_mm_ok(self, x: torch.Tensor) -> bool:
        # torch._grouped_mm needs 16-byte aligned rows; it runs on CPU (fp32, bf16) and on
        # Hopper GPUs. Shapes that do not align take the loop.
        if self.use_grouped_mm == "off":
            return False
        if not hasattr(torch, "_grouped_mm") or x.dtype not in (torch.float32, torch.bfloat16):
            return False
        align = 16 // x.element_size()
        hidden, d = self.w1.shape[1], self.w1.shape[2]
        return hidden % align == 0 and d % align == 0 and x.dtype == self.w1.dtype


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.cfg = m
        self.router = TopKRouter(cfg.d_model, m)
        self.experts = GroupedExperts(cfg.d_model, m.expert_hidden_size, m.n_experts, m.grouped_mm)
        self.shared_experts: nn.Module | None = None
        if m.n_shared_experts > 0:
            self.shared_experts = FeedForward(
                cfg, hidden=m.n_shared_experts * m.expert_hidden_size, bias=False
            )
        # Weight of this forward's balancing losses in the step's gradient. The training engine
        # sets it to (tokens of this micro-batch) / (tokens of the global batch), so the losses
        # are a token-weighted mean over micro-batches and data-parallel ranks whatever the
        # layout (Megatron's MoEAuxLossAutoScaler.set_loss_scale plays the same role).
        self.aux_loss_scale = 1.0
        # Tokens routed to each expert since the last `reset_load` (for the bias update and the
        # per-layer expert-load metric). Not saved: it is a running statistic of the current step.
        self.register_buffer("tokens_per_expert", torch.zeros(m.n_experts), persistent=False)
        # counts -> counts summed over every rank that holds other tokens of the same sequences
        # (context parallel sets it: parallel/context_parallel.py). The switch loss multiplies
        # the routed fraction by the mean router probability, so it is the one-process loss only
        # when the fraction is the whole sequences' (Megatron reduces tokens_per_expert over its
        # sequence-partition group for the same reason); None: the tokens here are the sequences.
        self.reduce_routed_counts: Callable[[torch.Tensor], torch.Tensor] | None = None

    # -- the four steps ---------------------------------------------------------------------
    def dispatch(self, x: torch.Tensor, expert_ids: torch.Tensor):
        """Sort the (token, slot) pairs by expert. Returns (sorted tokens, counts, order)."""
        flat_ids = expert_ids.reshape(-1)
        order = torch.argsort(flat_ids, stable=True)  # stable: deterministic within an expert
        counts = torch.bincount(flat_ids, minlength=self.cfg.n_experts)
        token_index = order // self.cfg.top_k
        return x[token_index], counts, order

    def combine(
        self, expert_out: torch.Tensor, order: torch.Tensor, weights: torch.Tensor, n_tokens: int
    ) -> torch.Tensor:
        """Weight each expert output and add it back at its token's position."""
        w = weights.reshape(-1)[order].unsqueeze(-1)
        contribution = upcast(expert_out * w)
        out = torch.zeros(
            n_tokens, expert_out.shape[-1], dtype=contribution.dtype, device=expert_out.device
        )
        out.index_add_(0, order // self.cfg.top_k, contribution)
        return out.to(expert_out.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, ids, logits = self.router(x)
        routed, counts, order = self.dispatch(x, ids)
        self.tokens_per_expert += counts  # counts carry no gradient (bincount of indices)
        out = self.combine(self.experts(routed, counts), order, weights.to(x.dtype), x.shape[0])
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        if self.training and torch.is_grad_enabled():
            aux = self.balancing_loss(logits, counts)
            if aux is not None:
                out = AuxLossInjector.apply(out, aux, self.aux_loss_scale)
        return out.view(shape)

    def balancing_loss(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor | None:
        """Switch-transformer load-balancing loss + router z-loss, already weighted.
        `counts`: routed (token, slot) pairs per expert, as `dispatch` returns them."""
        m = self.cfg
        loss = None
        if m.aux_loss_coef > 0:
            probs = logits.sigmoid() if m.router == "sigmoid" else logits.softmax(dim=-1)
            if m.router == "sigmoid":  # DeepSeek-V3 normalises sigmoid scores per token
                probs = probs / probs.sum(dim=-1, keepdim=True)
            # fraction of routed slots per expert (no gradient) x mean router probability
            if self.reduce_routed_counts is not None:
                counts = self.reduce_routed_counts(counts)
            load = counts.float() / counts.sum()
            loss = m.aux_loss_coef * m.n_experts * (load * probs.mean(dim=0)).sum()
        if m.z_loss_coef > 0:
            z = m.z_loss_coef * torch.logsumexp(logits, dim=-1).pow(2).mean()
            loss = z if loss is None else loss + z
        return loss


# ---------------------------------------------------------------------------------------------
# Helpers the training loop calls between steps
# ---------------------------------------------------------------------------------------------
def moe_layers(model: nn.Module) -> list[tuple[str, MoE]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]


def set_aux_loss_scale(model: nn.Module, scale: float) -> None:
    """Weight of each forward's balancing losses in the gradient (see MoE.aux_loss_scale)."""
    for _, m in moe_layers(model):
        m.aux_loss_scale = scale


@torch.no_grad()
def expert_load(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per MoE layer, the fraction of routed tokens each expert received since the last reset."""
    return {
        name: m.tokens_per_expert / m.tokens_per_expert.sum().clamp(min=1)
        for name, m in moe_layers(model)
    }


@torch.no_grad()
def reset_load(model: nn.Module) -> None:
    for _, m in moe_layers(model):
        m.tokens_per_expert.zero_()


@torch.no_grad()
def update_expert_biases(model: nn.Module, loads: dict[str, torch.Tensor] | None = None) -> None:
    """DeepSeek-V3 auxiliary-loss-free balancing: bias += speed * sign(mean load - load).

    `loads` (tokens per expert per layer) lets the parallel engine pass counts summed over all
    data-parallel ranks; by default the layer's own counts are used. Resets the counts.
    """
    for name, m in moe_layers(model):
        if m.cfg.bias_update_speed <= 0:
            continue
        counts = (loads or {}).get(name, m.tokens_per_expert).float()
        m.router.expert_bias += m.cfg.bias_update_speed * torch.sign(counts.mean() - counts)
    reset_load(model)
