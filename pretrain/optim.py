"""AdamW with decoupled weight decay, parameter groups without decay, and the learning rate of
each step (warmup, then an LR schedule of pretrain/lr_schedules.py's registry).

One optimizer per model part (a pipeline rank can hold several stages), as torchtitan does; their
state dicts are flattened by parameter FQN when checkpointed, so a checkpoint does not depend on
how the model was split.
"""

from __future__ import annotations

import torch
from torch import nn

from model_zoo.model import RMSNorm
from pretrain.lr_schedules import LR_SCHEDULES


def decay_split(part: nn.Module, no_decay: list[str]) -> tuple[list, list, list[str]]:
    """(decayed params, non-decayed params, names of the non-decayed) of one model part.

    Decided by module type, not by name patterns, so a renamed attribute cannot silently move a
    norm weight into the decayed group."""
    rules = set(no_decay)
    skip: dict[int, str] = {}
    for mod_name, mod in part.named_modules():
        is_norm = isinstance(mod, (RMSNorm, nn.LayerNorm))
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if (
                ("norm" in rules and is_norm)
                or ("bias" in rules and p_name == "bias")
                or ("embedding" in rules and isinstance(mod, nn.Embedding))
            ):
                skip.setdefault(id(p), full)
    decay, nodecay, names, seen = [], [], [], set()
    for name, p in part.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in skip:
            nodecay.append(p)
            names.append(name)
        else:
            decay.append(p)
    return decay, nodecay, names


def foreach_compatible(params: list) -> list[list]:
    """Split parameters into lists that one multi-tensor (foreach/fused) kernel can update.

    Under TP a model part mixes DTensors with plain tensors (MLA's low-rank projections, KV heads
    replicated when tp > n_kv_heads) and DTensors on different meshes (experts on ep x tp); torch's
    foreach ops refuse such a mix ("got mixed torch.Tensor and DTensor"). AdamW's update is
    elementwise, so splitting a group changes no number."""
    kinds: dict[tuple, list] = {}
    for p in params:
        mesh = getattr(p, "device_mesh", None)
        kinds.setdefault((mesh is not None, id(mesh)), []).append(p)
    return list(kinds.values())


def build_optimizers(
    model_parts: list[nn.Module], ocfg, device: torch.device
) -> list[torch.optim.Optimizer]:
    fused = device.type == "cuda" if ocfg.fused == "auto" else ocfg.fused == "true"
    opts = []
    for part in model_parts:
        decay, nodecay, _ = decay_split(part, ocfg.no_decay)
        groups = [
            {"params": same_kind, "weight_decay": wd}
            for params, wd in ((decay, ocfg.weight_decay), (nodecay, 0.0))
            for same_kind in foreach_compatible(params)
        ]
        kwargs = dict(lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.eps)
        # fused=True is torch's single-kernel AdamW (CUDA); foreach is the fast path elsewhere.
        opts.append(
            torch.optim.AdamW(groups, **kwargs, fused=True)
            if fused
            else torch.optim.AdamW(groups, **kwargs, foreach=True)
        )
    return opts


def lr_at(step: int, lr: float, scfg, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warmup, then the LR schedule
    `scfg.name` of pretrain/lr_schedules.py's registry (`scfg` is the run's LRScheduleConfig)."""
    warm = scfg.warmup_steps
    if warm and step <= warm:
        return lr * step / warm
    schedule = LR_SCHEDULES[scfg.name]
    return schedule.after_warmup(step, lr, lr * scfg.min_lr_ratio, scfg, max_steps)


def set_lr(optimizers: list[torch.optim.Optimizer], value: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            # A tensor lr (fused / capturable) must be updated in place to keep its identity.
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value
