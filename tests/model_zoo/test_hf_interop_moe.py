"""MoE and MLA families against `transformers`: Mixtral, OLMoE, DeepSeek-V3, DeepSeek-V2.

Routing ties. Which experts a token picks is a discontinuous function of the router scores. The
comparison itself is in float64 (hf_helpers.assert_close), where no choice flips, but its floor
is each model's float32 run against its float64 run: a float32 near-tie would flip a choice there
and make the floor O(1), a comparison that means nothing. So every test first *measures* the
smallest gap, over all tokens and MoE layers, between the last expert (and the last group) chosen
and the first one rejected, and asserts it is well above float32's rounding of the router scores
(MIN_ROUTING_MARGIN 1e-5: scores of O(1) round at 6e-8, and these routers sum at most a few
hundred terms, <= 2e-5 worst case, ~1e-6 measured). Inputs are fixed by seeds, so the test is
deterministic; a near-tie fails with a message saying so instead of silently weakening the test.
"""

from dataclasses import replace

import pytest
import torch
import transformers

from model_zoo import build_model, get_model_config
from model_zoo.config import RopeScalingConfig
from model_zoo.hf import export_hf, import_hf
from model_zoo.moe import TopKRouter
from tests.model_zoo.hf_helpers import assert_close, randomise, tokens

MIN_ROUTING_MARGIN = 1e-5


def routing_margin(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """Smallest gap between chosen and rejected candidates in every router, for this batch."""
    margins: list[float] = []

    def hook(router: TopKRouter, inputs, _output):
        cfg = router.cfg
        logits = torch.nn.functional.linear(inputs[0].float(), router.gate.weight.float())
        scores = logits.sigmoid() if cfg.router == "sigmoid" else logits.softmax(dim=-1)
        choice = scores + router.expert_bias
        if cfg.n_group > 1:
            grouped = choice.view(-1, cfg.n_group, cfg.n_experts // cfg.n_group)
            gs = (
                grouped.topk(2, dim=-1).values.sum(-1)
                if cfg.router == "sigmoid"
                else grouped.max(-1).values
            )
            top = gs.topk(min(cfg.topk_group + 1, cfg.n_group), dim=-1).values
            if cfg.topk_group < cfg.n_group:
                margins.append((top[:, cfg.topk_group - 1] - top[:, cfg.topk_group]).min().item())
            choice = router._limit_to_groups(choice)
        top = choice.topk(cfg.top_k + 1, dim=-1).values
        valid = torch.isfinite(top[:, cfg.top_k]) & (top[:, cfg.top_k] > 0)
        gap = top[:, cfg.top_k - 1] - top[:, cfg.top_k]
        if valid.any():
            margins.append(gap[valid].min().item())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, TopKRouter)]
    with torch.no_grad():
        model(batch)
    for h in handles:
        h.remove()
    return min(margins)


def check_same_logits(ours: torch.nn.Module, theirs: torch.nn.Module, batch: torch.Tensor) -> None:
    margin = routing_margin(ours, batch)
    assert margin > MIN_ROUTING_MARGIN, (
        f"routing near-tie (margin {margin:.2e}): float32 rounding could flip an expert choice, so "
        "the float32 floor of the comparison would mean nothing"
    )
    with torch.no_grad():
        assert_close(ours, theirs, batch)


EXPORT_CASES = {
    "mixtral-gqa": ("mixtral-tiny", {}),
    "mixtral-4experts-mha": ("mixtral-tiny", dict(n_kv_heads=None)),
    "olmoe": ("olmoe-tiny", {}),
    "olmoe-renormalised-gqa": ("olmoe-tiny", dict(n_kv_heads=2)),
    "deepseek-v2-grouped-softmax": ("deepseek-v2-lite-tiny", {}),
    "deepseek-v2-greedy-qlora-yarn": (
        "deepseek-v2-lite-tiny",
        dict(
            rope_scaling=RopeScalingConfig(
                type="yarn",
                factor=4.0,
                original_max_position=64,
                mscale=0.707,
                mscale_all_dim=0.707,
            )
        ),
    ),
    "deepseek-v3-sigmoid-groups-yarn": ("deepseek-v3-tiny", {}),
    "deepseek-v3-no-qlora-half-split-rope": ("deepseek-v3-tiny", {}),
}


def _case_config(case: str):
    base, changes = EXPORT_CASES[case]
    cfg = replace(get_model_config(base), **changes)
    if case == "mixtral-4experts-mha":
        cfg.moe = replace(cfg.moe, n_experts=4)
    if case == "olmoe-renormalised-gqa":
        cfg.moe = replace(cfg.moe, norm_topk_prob=True)
    if case == "deepseek-v2-greedy-qlora-yarn":
        cfg.moe = replace(cfg.moe, n_group=1, topk_group=1)
        cfg.mla = replace(cfg.mla, q_lora_rank=40)
    if case == "deepseek-v3-no-qlora-half-split-rope":
        cfg.mla = replace(cfg.mla, q_lora_rank=0, rope_interleave=False)
        cfg.rope_scaling = RopeScalingConfig()
    return cfg.validate()


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_loads_in_transformers_with_same_logits(case, tmp_path):
    cfg = _case_config(case)
    ours = build_model(cfg, seed=0).eval()
    randomise(ours, seed=11)
    if cfg.moe.router == "sigmoid":  # a trained aux-loss-free bias must survive the export
        for m in ours.modules():
            if isinstance(m, TopKRouter):
                m.expert_bias.copy_(
                    0.05
                    * torch.randn(m.expert_bias.shape, generator=torch.Generator().manual_seed(3))
                )
    export_hf(cfg, ours.state_dict(), tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    expected = {
        "mixtral": "MixtralForCausalLM",
        "olmoe": "OlmoeForCausalLM",
        "deepseek_v2": "DeepseekV2ForCausalLM",
        "deepseek_v3": "DeepseekV3ForCausalLM",
    }
    assert type(theirs).__name__ == expected[cfg.family]
    check_same_logits(ours, theirs, tokens(cfg.vocab_size, seed=5))


def _hf_model(kind: str) -> transformers.PreTrainedModel:
    common = dict(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    if kind == "mixtral":
        config = transformers.MixtralConfig(
            intermediate_size=96,
            num_key_value_heads=2,
            num_local_experts=6,
            num_experts_per_tok=2,
            **common,
        )
        cls = transformers.MixtralForCausalLM
    elif kind == "olmoe":
        config = transformers.OlmoeConfig(
            intermediate_size=48,
            num_experts=8,
            num_experts_per_tok=3,
            norm_topk_prob=False,
            **common,
        )
        cls = transformers.OlmoeForCausalLM
    elif kind == "deepseek_v2":
        config = transformers.DeepseekV2Config(
            intermediate_size=160,
            moe_intermediate_size=32,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            q_lora_rank=None,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            **common,
        )
        cls = transformers.DeepseekV2ForCausalLM
    else:
        config = transformers.DeepseekV3Config(
            intermediate_size=160,
            moe_intermediate_size=32,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            q_lora_rank=48,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            routed_scaling_factor=2.5,
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
            },
            **common,
        )
        cls = transformers.DeepseekV3ForCausalLM
    torch.manual_seed(0)
    model = cls(config).eval()
    randomise(model, seed=12)
    return model


@pytest.mark.parametrize("kind", ["mixtral", "olmoe", "deepseek_v2", "deepseek_v3"])
def test_import_of_transformers_model_gives_same_logits(kind, tmp_path):
    theirs = _hf_model(kind)
    if kind == "deepseek_v3":  # a non-zero correction bias must be imported as ours
        for name, buf in theirs.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn(buf.shape, generator=torch.Generator().manual_seed(4)))
    theirs.save_pretrained(tmp_path / "hf")
    cfg, state = import_hf(tmp_path / "hf")
    ours = build_model(cfg).eval()
    ours.load_state_dict(state)
    check_same_logits(ours, theirs, tokens(cfg.vocab_size, seed=6))


def test_nonzero_expert_bias_cannot_be_exported_to_mixtral(tmp_path):
    from configcore import ConfigError

    cfg = get_model_config("mixtral-tiny")
    model = build_model(cfg)
    model.layers["0"].moe.router.expert_bias.fill_(0.1)
    with pytest.raises(ConfigError, match="non-zero auxiliary-loss-free expert bias"):
        export_hf(cfg, model.state_dict(), tmp_path / "hf")
