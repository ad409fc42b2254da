"""The mixture-of-experts parameter layout shared by Mixtral, OLMoE and DeepSeek: our experts are
stacked 3-D tensors, the Hub stores one Linear per expert (plus router and shared experts)."""

from __future__ import annotations

import re

import torch

from configcore import ConfigError
from model_zoo.config import ModelConfig
from model_zoo.hf.base import Requirement, Tensor, inverse

_MOE_KEY = re.compile(r"^layers\.(\d+)\.moe\.(.+)$")


class MoELayoutMixin:
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
        inverse_experts = inverse(self.EXPERT_NAMES)
        inverse_shared = inverse(self.SHARED)
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


NO_ROUTED_SCALING = Requirement(
    "moe.routed_scaling_factor",
    lambda c: c.moe.routed_scaling_factor == 1.0,
    "moe.routed_scaling_factor must be 1",
)


def moe_requirements(router: str, groups: bool, shared: bool) -> tuple[Requirement, ...]:
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
