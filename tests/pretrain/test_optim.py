"""AdamW groups, decoupled weight decay, LR schedules, and MoE expert-load metrics.

pytest.approx with its default (rel 1e-6) is used for closed-form values computed in float64
(schedules) or sums of a few float32 fractions (expert loads: <= 8 roundings of 6e-8): both are
rounding-bounded far below 1e-6, and any wrong formula moves them by more than 1e-3.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from configcore import ConfigError
from model_zoo import build_model, get_model_config
from pretrain.config import compose_config
from pretrain.lr_schedules import LR_SCHEDULES, LRSchedule, register_lr_schedule
from pretrain.optim import build_optimizers, decay_split, lr_at
from pretrain.parity.harness import FP64_TOL
from pretrain.train import train
from tests.pretrain.helpers import documents, read_metrics, run_cli, tiny_overrides, write_megatron


def test_no_decay_on_norms_biases_embeddings_by_module_type():
    model = build_model(get_model_config("pythia-tiny"))  # LayerNorm with bias, linear biases
    decay, nodecay, names = decay_split(model, ["norm", "bias", "embedding"])
    assert "tok_embeddings.weight" in names and "norm.weight" in names and "norm.bias" in names
    assert any(n.endswith("attention.wq.bias") for n in names)
    decayed = {id(p) for p in decay}
    for name, p in model.named_parameters():
        is_matrix = p.dim() == 2 and "tok_embeddings" not in name
        assert (id(p) in decayed) == is_matrix, name
    # rules are configurable: OLMo-2 decays embeddings
    _, _, names = decay_split(model, ["norm", "bias"])
    assert "tok_embeddings.weight" not in names


def test_weight_decay_is_decoupled():
    """A parameter with zero gradient shrinks by exactly lr * wd (AdamW), a no-decay one not at all."""
    model = build_model(get_model_config("llama3-tiny"))
    cfg = compose_config(["optim.lr=0.1", "optim.weight_decay=0.5"]).optim
    (opt,) = build_optimizers([model], cfg, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    w = dict(model.named_parameters())
    # one float32 multiply per element (w * (1 - lr * wd)): one rounding, inside assert_close's
    # float32 defaults (rtol 1.3e-6); the untouched groups must be unchanged
    torch.testing.assert_close(
        w["layers.0.attention.wq.weight"], before["layers.0.attention.wq.weight"] * (1 - 0.05)
    )
    torch.testing.assert_close(w["norm.weight"], before["norm.weight"])
    torch.testing.assert_close(w["tok_embeddings.weight"], before["tok_embeddings.weight"])


def sched(name, warmup=10, **kw):
    return SimpleNamespace(
        name=name,
        warmup_steps=warmup,
        min_lr_ratio=kw.get("min_lr_ratio", 0.1),
        decay_fraction=kw.get("decay_fraction", 0.2),
        decay_steps=kw.get("decay_steps", 0),
    )


def test_schedules():
    lr = 1.0
    assert lr_at(1, lr, sched("cosine"), 110) == pytest.approx(0.1)
    assert lr_at(10, lr, sched("cosine"), 110) == pytest.approx(1.0)
    assert lr_at(60, lr, sched("cosine"), 110) == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert lr_at(110, lr, sched("cosine"), 110) == pytest.approx(0.1)
    assert lr_at(60, lr, sched("linear"), 110) == pytest.approx(0.55)
    assert lr_at(500, lr, sched("constant"), 110) == 1.0
    # wsd: stable until the last 20% of 100 steps, then linear to the floor
    s = sched("wsd", warmup=5)
    assert [lr_at(k, lr, s, 100) for k in (5, 50, 80)] == [1.0, 1.0, 1.0]
    assert lr_at(90, lr, s, 100) == pytest.approx(0.55) and lr_at(100, lr, s, 100) == pytest.approx(
        0.1
    )
    assert lr_at(35, lr, sched("cosine", decay_steps=25), 1000) == pytest.approx(0.1)


def test_a_new_lr_schedule_is_one_registry_entry():
    """One register_lr_schedule call is all a schedule needs: the config accepts its name (the
    list of valid names is the registry's) and lr_at follows it after the common warmup."""
    register_lr_schedule(LRSchedule("half", lambda step, lr, lo, scfg, max_steps: lr / 2))
    try:
        run = compose_config(
            ["schedule.name=half", "schedule.warmup_steps=10", "trainer.max_steps=20"]
        )
        assert [lr_at(k, 1.0, run.schedule, 20) for k in (5, 10, 11, 20)] == [0.5, 1.0, 0.5, 0.5]
        with pytest.raises(ValueError, match="already registered"):
            register_lr_schedule(LRSchedule("half", lambda *args: 0.0))
    finally:
        del LR_SCHEDULES["half"]
    with pytest.raises(ConfigError, match="schedule.name='half' is not one of cosine, linear, "):
        compose_config(["schedule.name=half"])


def test_moe_model_trains_and_logs_expert_load(tmp_path):
    data = write_megatron(str(tmp_path / "d/man"), documents(20, max_bytes=1500))
    ov = tiny_overrides(tmp_path / "run", data, steps=3, **{"model": "olmoe-tiny"})
    out = train(compose_config(ov), log=lambda *_: None)
    assert all(math.isfinite(v) for v in out["losses"].values())
    rec = read_metrics(tmp_path / "run")[-1]
    layers = rec["expert_load"]
    assert len(layers) == 2
    for fracs in layers.values():
        assert len(fracs) == get_model_config("olmoe-tiny").moe.n_experts
        assert sum(fracs) == pytest.approx(1.0)
    assert rec["expert_load_max_over_mean"] >= 1.0


def test_expert_counts_summed_over_data_parallel_ranks(tmp_path):
    """DeepSeek-V3's aux-loss-free balancing under FSDP DP2 equals one process: the engine sums
    the tokens per expert over dp ranks before the load metric and the bias update, so every rank
    applies the whole batch's update to its router biases (with its own counts the logged load
    would be half the batch's and the ranks' biases would drift apart)."""
    data = write_megatron(str(tmp_path / "d/man"), documents(40, max_bytes=1500))
    runs = {}
    for nproc in (1, 2):
        ov = tiny_overrides(
            tmp_path / f"dp{nproc}",
            data,
            steps=6,
            **{
                "model": "deepseek-v3-tiny",
                "model.moe.bias_update_speed": 0.05,
                "parallel.precision": "fp64",  # the claim is the math: float64 rounding only
            },
        )
        res = run_cli(["train", *ov], nproc=nproc)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[nproc] = read_metrics(tmp_path / f"dp{nproc}")
    for one, two in zip(runs[1], runs[2]):
        assert abs(one["loss"] - two["loss"]) <= FP64_TOL * one["loss"], (
            one["step"],
            one["loss"],
            two["loss"],
        )
        # the same integer token counts over the same total: equal, not close
        assert two["expert_load"] == one["expert_load"], one["step"]
    # the biases moved: routing at the last step differs from an unbalanced start
    assert runs[1][-1]["expert_load"] != runs[1][0]["expert_load"]


def test_expert_load_of_every_pipeline_stage_is_logged(tmp_path):
    """Under pp=2 rank 0 holds only the first stage's layers; the logged load covers all MoE
    layers. DeepSeek-V3-tiny's first layer is dense, so rank 0's stage has no MoE layer at all
    (it must still join the gather) and both MoE layers live on rank 1."""
    data = write_megatron(str(tmp_path / "d/man"), documents(20, max_bytes=1500))
    ov = tiny_overrides(
        tmp_path / "pp",
        data,
        steps=3,
        **{"model": "deepseek-v3-tiny", "parallel.pp": 2, "parallel.pp_split": "[1,2]"},
    )
    res = run_cli(["train", *ov], nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = read_metrics(tmp_path / "pp")[-1]
    assert list(rec["expert_load"]) == ["layers.1.moe", "layers.2.moe"]
    for fracs in rec["expert_load"].values():
        assert sum(fracs) == pytest.approx(1.0)
