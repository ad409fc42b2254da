"""MoE behaviour beyond HF parity: gradients, grouped matmul, load balancing, config checks."""

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from configcore import ConfigError
from model_zoo import build_model, get_model_config
from model_zoo.moe import MoE, TopKRouter, expert_load, moe_layers, update_expert_biases
from pretrain.parity.harness import FP64_TOL

SAMPLE = Path(__file__).resolve().parents[2] / "data_pipeline" / "samples" / "manpages_en.jsonl.gz"


def real_text_bytes(n_tokens: int) -> torch.Tensor:
    """Real text (Debian man pages) as byte tokens: vocab 256, no tokenizer needed."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        text = "".join(json.loads(line)["text"] for _, line in zip(range(40), fh))
    data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
    return data[:n_tokens]


def _moe_model(name="mixtral-tiny", **moe_changes):
    cfg = get_model_config(name)
    cfg = replace(cfg, vocab_size=256, moe=replace(cfg.moe, **moe_changes)).validate()
    return build_model(cfg, seed=0)


@pytest.mark.parametrize("grouped_mm", ["auto", "off"])
def test_gradients_reach_used_experts_and_router_zero_for_unused(grouped_mm):
    model = _moe_model(grouped_mm=grouped_mm)
    moe = model.layers["0"].moe
    moe.router.expert_bias[0] = -1e3  # expert 0 can never be selected in layer 0
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    used = moe.tokens_per_expert > 0
    assert not used[0] and used[1:].any()
    for w in (moe.experts.w1, moe.experts.w2, moe.experts.w3):
        assert torch.isfinite(w.grad).all()
        assert torch.equal(w.grad[0], torch.zeros_like(w.grad[0]))  # zero, not NaN
        for e in torch.nonzero(used).flatten():
            assert w.grad[e].abs().sum() > 0
    assert moe.router.gate.weight.grad.abs().sum() > 0


def test_grouped_matmul_equals_per_expert_loop():
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (2, 32))
    results = []
    for grouped in ("auto", "off", "off float64"):
        model = _moe_model(grouped_mm=grouped.split()[0])
        if grouped.endswith("float64"):
            model = model.double()
        assert model.layers["0"].moe.experts._grouped_mm_ok(torch.zeros(1, 64)) == (
            grouped == "auto"
        )
        loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        results.append((loss.detach(), model.layers["1"].moe.experts.w2.grad.clone()))
    # torch's grouped matmul exists for float32/bf16 only, so the comparison is in float32,
    # against a floor measured here: how far float32 rounding moves the per-expert loop from its
    # float64 run. If the grouped kernel is as accurate as the loop (within the floor of the
    # exact result), the triangle inequality puts the two within 2 x floor of each other.
    (grouped, loop, exact) = results
    for i, what in enumerate(("loss", "w2 gradient")):
        floor = (loop[i].double() - exact[i]).abs().max().item()
        diff = (grouped[i].double() - loop[i].double()).abs().max().item()
        print(f"grouped vs loop {what}: {diff:.1e} (float32 floor {floor:.1e})")
        assert 0 < floor and diff <= 2 * floor, (what, diff, floor)


def test_aux_loss_and_z_loss_reach_the_router_only_through_backward():
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    grads = {}
    for coef in (0.0, 0.1):
        model = _moe_model("olmoe-tiny", aux_loss_coef=coef, z_loss_coef=coef / 10).train()
        logits = model(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        grads[coef] = (logits.detach(), model.layers["0"].moe.router.gate.weight.grad.clone())
    # Same forward output, different router gradient: the balancing losses act in backward only.
    assert torch.equal(grads[0.0][0], grads[0.1][0])
    # the losses' gradient part is O(coef) = 0.1 of the router gradient, far above rounding
    assert not torch.allclose(grads[0.0][1], grads[0.1][1])


def test_balancing_loss_matches_switch_transformer_formula():
    model = _moe_model("olmoe-tiny", aux_loss_coef=1.0, z_loss_coef=0.0)
    moe: MoE = model.layers["0"].moe
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(2))
    _, ids, logits = moe.router(x)
    probs = logits.softmax(-1)
    fraction = torch.stack([(ids == e).sum() for e in range(8)]).float() / ids.numel()
    expected = 8 * (fraction * probs.mean(0)).sum()
    counts = torch.bincount(ids.reshape(-1), minlength=8)
    # the same eight float32 products summed in another order: <= 8 roundings (5e-7 relative),
    # inside allclose's default rtol of 1e-5
    assert torch.allclose(moe.balancing_loss(logits, counts), expected)


def _skew_routers(model, batch) -> None:
    """Skew every router toward experts 0-2: add to their gate rows the direction all tokens
    share (the mean router input), so those experts score higher for every token; also widen
    the gate so routing depends on the token."""
    routers = [m for m in model.modules() if isinstance(m, TopKRouter)]
    means = {}
    hooks = [
        r.register_forward_hook(lambda mod, inp, out: means.__setitem__(id(mod), inp[0].mean(0)))
        for r in routers
    ]
    with torch.no_grad():
        model(batch)
        for h in hooks:
            h.remove()
        for r in routers:
            m = means[id(r)]
            r.gate.weight.mul_(5)
            r.gate.weight[:3] += 1.5 * m / m.norm() ** 2


def test_aux_loss_free_bias_update_balances_a_skewed_router_on_real_text():
    """DeepSeek-V3 balancing: train a tiny MoE whose routers start skewed, on real text. The
    max/min ratio of tokens per expert (worst layer) falls from the first step to the last ten
    steps (counts summed over those steps, as balance is judged over batches) with the bias
    update, while without it the skew persists or grows. Measured: first step ~4, last ten
    steps ~1.4 with the update and ~90 without."""
    data = real_text_bytes(30 * 33 * 8)
    batches = data[: (len(data) // 33) * 33].view(-1, 33)

    def ratio(counts: list[torch.Tensor]) -> float:
        c = torch.stack(counts).sum(0)  # (layers, experts)
        return (c.max(-1).values / c.min(-1).values.clamp(min=1)).max().item()

    result = {}
    for speed in (0.0, 0.01):
        model = _moe_model(
            "deepseek-v3-tiny",
            bias_update_speed=speed,
            n_group=1,
            topk_group=1,
            top_k=2,
            n_experts=8,
        )
        _skew_routers(model, batches[:8, :-1])
        # A small learning rate keeps the router's own drift slower than the bias update, the
        # regime DeepSeek-V3 trains in (lr ~2e-4 at d_model 7168, update speed 1e-3).
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
        counts = []
        for step in range(30):
            batch = batches[step * 8 : (step + 1) * 8]
            loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            counts.append(torch.stack([m.tokens_per_expert.clone() for _, m in moe_layers(model)]))
            update_expert_biases(model)  # also resets the counts
        result[speed] = (ratio(counts[:1]), ratio(counts[-10:]))
    first, last = result[0.01]
    assert first > 3, f"the router was not skewed to begin with (max/min {first:.1f})"
    assert last < first / 2, f"load ratio did not fall: {first:.1f} -> {last:.1f}"
    assert last < result[0.0][1] / 2, f"with bias update {last:.1f}, without {result[0.0][1]:.1f}"


def test_expert_load_metric_sums_to_one_per_layer():
    model = _moe_model()
    model(torch.randint(0, 256, (2, 16)))
    loads = expert_load(model)
    assert set(loads) == {"layers.0.moe", "layers.1.moe"}
    for load in loads.values():
        # eight float32 fractions of the same count: <= 8 roundings of 6e-8 from 1
        assert abs(load.sum().item() - 1.0) < 1e-6


def test_first_k_dense_and_moe_every_choose_layers():
    cfg = replace(get_model_config("deepseek-v3-tiny"), n_layers=6)
    cfg.moe = replace(cfg.moe, first_k_dense=2, moe_every=2)
    model = build_model(cfg.validate(), device="meta")
    kinds = ["moe" if hasattr(layer, "moe") else "dense" for layer in model.layers.values()]
    assert kinds == ["dense", "dense", "moe", "dense", "moe", "dense"]


@pytest.mark.parametrize(
    "name, change, message",
    [
        (
            "mixtral-tiny",
            dict(moe=dict(top_k=9)),
            "moe.top_k=9 must be between 1 and moe.n_experts=8",
        ),
        (
            "deepseek-v3-tiny",
            dict(mla=dict(kv_lora_rank=64)),
            "mla.kv_lora_rank=64 is not smaller than d_model=64",
        ),
        (
            "deepseek-v3-tiny",
            dict(moe=dict(n_group=3)),
            "moe.n_experts=16 is not divisible by moe.n_group=3",
        ),
        ("deepseek-v3-tiny", dict(moe=dict(topk_group=1, top_k=5)), "exceeds the 1 x 4 experts"),
        ("olmoe-tiny", dict(moe=dict(router="relu")), "moe.router='relu' is not one of"),
    ],
)
def test_bad_moe_and_mla_configs_are_rejected(name, change, message):
    cfg = get_model_config(name)
    for section, values in change.items():
        setattr(cfg, section, replace(getattr(cfg, section), **values))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg.validate()


def test_experts_not_divisible_by_expert_parallel_size_rejected_at_config_time():
    from pretrain.config import compose_config

    with pytest.raises(ConfigError, match="moe.n_experts=8 is not divisible by parallel.ep=3"):
        compose_config(["model=mixtral-tiny", "parallel.ep=3"])


def test_aux_loss_scale_weights_the_balancing_gradient_linearly():
    """The engine sets each micro-batch's share of the global batch as the balancing losses'
    weight: the router gradient's aux part must scale linearly with it (0 removes it)."""
    from model_zoo.moe import set_aux_loss_scale

    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))

    def router_grad(coef: float, scale: float) -> torch.Tensor:
        # float64: linearity is the math (the expert loop runs; grouped mm is float32-only)
        model = _moe_model("olmoe-tiny", aux_loss_coef=coef, z_loss_coef=0.0).double().train()
        set_aux_loss_scale(model, scale)
        F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        return model.layers["0"].moe.router.gate.weight.grad.clone()

    no_aux = router_grad(0.0, 1.0)
    full, half = router_grad(0.1, 1.0) - no_aux, router_grad(0.1, 0.5) - no_aux
    assert full.abs().sum() > 0
    assert ((half - 0.5 * full).norm() / full.norm()).item() < FP64_TOL
    assert ((router_grad(0.1, 0.0) - no_aux).norm() / no_aux.norm()).item() < FP64_TOL
