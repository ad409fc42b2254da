"""Context parallel (alltoall: DeepSpeed-Ulysses over gloo) against one process, alone and
composed with TP, PP, FSDP and EP (float64; tests/parallel/parity_cases.py). The ring style
cannot run on CPU; its parity case is in benchmarks/gpu_acceptance.sh."""

import dataclasses

import pytest

from model_zoo.zoo import get_model_config
from pretrain.parity.harness import launch, reference_run, rel
from tests.parallel.parity_cases import (
    GBS,
    SEED,
    SEQ,
    STEPS,
    TOL,
    check_parity,
    check_precision,
    dense_cfg,
    single_process,
    spec,
)


def test_context_parallel_cp2_dense_moe_packed_and_dcp(
    tmp_path, dense_ref, deepseek_ref, packed_ref
):
    """CP2 (each rank holds chunks r and 3-r of the sequence) for the dense GQA model, for the
    MoE + MLA model, and for packed documents under the intra-document mask (document ids whole,
    positions of the shard); its forward-only loss (Engine.eval_loss); the CP2 checkpoint loads
    under TP2 with equal weights. One launch of 2 ranks.

    OLMoE-tiny with its switch balancing loss and router z-loss: each cp rank's switch loss takes
    the routed fraction summed over the cp group (sum_routed_counts_over_cp), so it matches one
    process whose batch is accumulated in the same micro-batches (the switch loss of a
    micro-batch is not a sum over its tokens: a different micro-batch size is another loss)."""
    deepseek = {"model": "deepseek-v2-lite-tiny", "model_overrides": {}, "seed": SEED}
    olmoe = {"model": "olmoe-tiny", "model_overrides": {}, "seed": SEED}
    runs = [
        {"name": "CP2", "parallel": {"cp": 2}, "dcp_save": True, "eval": True},
        {"name": "CP2 packed", "parallel": {"cp": 2}, "packed": True, "seed": SEED},
        {"name": "MoE+MLA CP2", "parallel": {"cp": 2}, **deepseek},
        {"name": "TP2 <- DCP(CP2)", "parallel": {"tp": 2}, "steps": 0, "seed": 7, "dcp_load": 0},
        {"name": "CP2 AC full", "parallel": {"cp": 2, "activation_checkpointing": "full"}},
        {
            "name": "CP2 sliding window",
            "parallel": {"cp": 2},
            "steps": 3,
            "seed": SEED,
            "model_overrides": {"n_layers": 4, "sliding_window": 8},
        },
        {"name": "OLMoE CP2 balancing losses", "parallel": {"cp": 2}, **olmoe},
    ]
    results = launch(2, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path)
    olmoe_cfg = get_model_config("olmoe-tiny")
    assert olmoe_cfg.moe.aux_loss_coef > 0 and olmoe_cfg.moe.z_loss_coef > 0
    olmoe_ref = reference_run(olmoe_cfg, STEPS, GBS, SEQ, micro_batch=2)
    check_parity(results[6], olmoe_ref)
    check_parity(results[0], dense_ref)
    check_parity(results[1], packed_ref)
    check_parity(results[2], deepseek_ref)
    # no document ids: the engine gives the window's mask one document spanning the sequence
    window_cfg = dataclasses.replace(dense_cfg(), sliding_window=8)
    check_parity(results[5], reference_run(window_cfg, 3, GBS, SEQ), 3)
    # activation checkpointing recomputes each block, its all-to-alls included, in backward
    check_parity(results[4], dense_ref)
    assert "cp=2 (alltoall)" in results[0]["layout"]
    saved, loaded = results[0]["params"], results[3]["params"]
    assert set(loaded) == set(saved)
    for k, v in saved.items():
        assert (loaded[k] == v).all(), k
    # the forward-only path (Engine.eval_loss) under CP2 after STEPS steps: the single-process
    # model of step 10 on the text that follows the training batches
    from model_zoo.model import build_model
    from pretrain.evaluation import loss_on_windows
    from pretrain.parity.harness import held_out_batch, text_batches

    model = build_model(dense_cfg()).double()  # the float64 reference's own weights
    model.load_state_dict(dense_ref["params_at"][STEPS], strict=False)  # no persistent buffers
    ref_sum, ref_tokens = loss_on_windows(model, held_out_batch(text_batches(STEPS, GBS, SEQ)))
    cp_sum, cp_tokens = results[0]["eval"][-1]
    print(f"CP2 eval_loss sum relative difference {rel(cp_sum, ref_sum):.1e}")
    assert cp_tokens == ref_tokens == GBS * SEQ
    assert rel(cp_sum, ref_sum) < TOL, (cp_sum, ref_sum)


def test_context_parallel_composed_with_tp_pp_fsdp(tmp_path, dense_ref, deepseek_ref):
    """CP2 x TP2 (sequence parallel inside each cp rank's tokens, heads split over tp, then
    over cp), CP2 x PP2 (1F1B) and CP2 x FSDP DP2 (dense weights sharded over dp_shard x cp) for
    the dense GQA model; CP2 x EP2 for the MoE + MLA model (routed experts split over ep,
    their gradients summed over cp). One launch of 4 ranks."""
    runs = [
        {"name": "CP2xTP2", "parallel": {"cp": 2, "tp": 2}},
        {"name": "CP2xPP2", "parallel": {"cp": 2, "pp": 2}},
        {"name": "CP2xDP2", "parallel": {"cp": 2, "dp_shard": 2}},
        {
            "name": "MoE+MLA CP2xEP2",
            "parallel": {"cp": 2, "ep": 2},
            "model": "deepseek-v2-lite-tiny",
            "model_overrides": {},
            "seed": SEED,
        },
    ]
    results = launch(4, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path)
    for r in results[:3]:
        check_parity(r, dense_ref)
    check_parity(results[3], deepseek_ref)
    # experts: 4 of 8 per ep rank, replicated over cp (their gradients summed by the engine)
    assert results[3]["local_shapes"]["layers.1.moe.experts.w1"] == (4, 32, 64)
    # FSDP over dp_shard x cp = 4 shards of the dense weights: 16 of wq's 64 rows on rank 0
    assert results[2]["local_shapes"]["layers.0.attention.wq.weight"] == (16, 64)


@pytest.mark.slow
def test_context_parallel_cp4_and_3d(tmp_path, dense_ref):
    """CP4 (one query head per cp rank, 8 chunks of 4 tokens), and CP2 composed with all three
    other axes at once: CP2 x TP2 x DP2 and CP2 x TP2 x PP2 (8 ranks). The default run covers each
    composition pairwise (test_context_parallel_composed_with_tp_pp_fsdp)."""
    model = {"overrides": {"n_layers": 4}, "seed": SEED}
    cp4 = launch(
        4, spec("llama3-tiny", [{"name": "CP4", "parallel": {"cp": 4}}], **model), tmp_path / "w4"
    )
    check_parity(cp4[0], dense_ref)
    runs = [
        {"name": "CP2xTP2xDP2", "parallel": {"cp": 2, "tp": 2, "dp_shard": 2}},
        {"name": "CP2xTP2xPP2", "parallel": {"cp": 2, "tp": 2, "pp": 2}},
    ]
    for r in launch(8, spec("llama3-tiny", runs, **model), tmp_path / "w8"):
        check_parity(r, dense_ref)


@pytest.mark.slow
def test_context_parallel_bf16(tmp_path, dense_ref):
    """CP2 in bf16 (FSDP2 mixed precision over the cp ranks) tracks the single-process bf16 run
    and is held to bf16's noise floor, as the other layouts' precision runs (check_precision)."""
    runs = [{"name": "CP2 bf16", "parallel": {"cp": 2, "precision": "bf16"}, "steps": 20}]
    model = {"overrides": {"n_layers": 4}, "seed": SEED}
    par = launch(2, spec("llama3-tiny", runs, **model), tmp_path / "w2")[0]
    singles = single_process(tmp_path / "w1", {"bf16": 20})["bf16"]
    check_precision(par, singles, dense_ref, micro_batch=2)
