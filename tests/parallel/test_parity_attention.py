"""Attention variants under tensor and pipeline parallel against one process: KV heads
replicated when tp exceeds them (GQA, MQA with QK-norm and biases), Qwen3's per-head QK-norm,
FlexAttention masks and the sliding window (float64; tests/parallel/parity_cases.py)."""

import dataclasses

from model_zoo.zoo import get_model_config
from pretrain.parity.harness import launch, reference_run, rel
from tests.parallel.parity_cases import GBS, SEED, SEQ, STEPS, TOL, check_parity, dense_cfg, spec


def test_kv_heads_replicated_when_tp_exceeds_them(tmp_path, dense_ref):
    """tp > n_kv_heads: each rank keeps the KV head of its query heads. llama3-tiny (4 query, 2 KV
    heads) under TP4, each KV head on 2 ranks; OLMo-2-tiny made MQA (1 KV head) with qkv biases
    under TP2 x FSDP DP2, where the full QK-norm over the KV dims runs before the head is
    chosen (and the post-sublayer norms meet the residual stream under sequence parallel)."""
    r = launch(
        4,
        spec(
            "llama3-tiny",
            [{"name": "TP4 (KV heads x2)", "parallel": {"tp": 4}}],
            overrides={"n_layers": 4},
        ),
        tmp_path / "llama",
    )[0]
    check_parity(r, dense_ref)
    assert r["local_shapes"]["layers.0.attention.wq.weight"] == (16, 64)  # 1 of 4 query heads
    assert r["local_shapes"]["layers.0.attention.wk.weight"] == (
        32,
        64,
    )  # both KV heads, kept whole
    mqa = {"n_kv_heads": 1, "qkv_bias": True}
    ref = reference_run(dataclasses.replace(get_model_config("olmo2-tiny"), **mqa), STEPS, GBS, SEQ)
    # TP2 x DP2 replicates the one KV head over both tp ranks (QK-norm and biases on it); tp=4
    # replication is the llama run above
    runs = [{"name": "OLMo-2 MQA TP2xDP2", "parallel": {"tp": 2}}]
    for r in launch(4, spec("olmo2-tiny", runs, overrides=mqa), tmp_path / "olmo2"):
        check_parity(r, ref)


def test_qwen3_tp2_and_pp2(tmp_path):
    """Qwen3-tiny (per-head QK-norm, GQA 2:1, head_dim 32 wider than d_model / n_heads), untied as
    Qwen3-8B since pipeline stages cannot share a tied embedding: TP2 splits the heads, so each
    rank's per-head q/k norms see only its heads; PP2 puts one layer on each stage."""
    untied = {"tie_embeddings": False}
    cfg = dataclasses.replace(get_model_config("qwen3-tiny"), **untied)
    ref = reference_run(cfg, STEPS, GBS, SEQ)
    runs = [
        {"name": "Qwen3 TP2", "parallel": {"tp": 2}},
        {"name": "Qwen3 PP2", "parallel": {"pp": 2}},
    ]
    for r in launch(2, spec("qwen3-tiny", runs, overrides=untied), tmp_path):
        check_parity(r, ref)


def test_flex_attention_tp2_pp2(tmp_path):
    """FlexAttention block masks from document ids with a sliding window of 8 under TP2 (each
    rank holds half the heads) and PP2 (each stage builds its own mask) give the single-process
    dense-mask result, forward only: torch 2.13's FlexAttention has no backward on CPU. And the
    sliding window trains under TP2 and PP2 (1F1B) as in one process (the dense mask, the CPU
    kernel). One launch of 2 ranks (pretrain.parity.attention_worker.py)."""
    import torch
    import torch.nn.functional as F

    from model_zoo.model import build_model
    from pretrain.parity.harness import packed_ids, text_batches

    flex, window = {"attention_kernel": "flex"}, {"sliding_window": 8}
    runs = [
        {
            "name": "TP2 flex window",
            "parallel": {"tp": 2},
            "mode": "forward",
            "model_overrides": {**flex, **window},
        },
        {
            "name": "PP2 flex window",
            "parallel": {"pp": 2},
            "mode": "forward",
            "model_overrides": {**flex, **window},
        },
        {
            "name": "TP2 window",
            "parallel": {"tp": 2},
            "mode": "train",
            "steps": 3,
            "model_overrides": window,
        },
        {
            "name": "PP2 window",
            "parallel": {"pp": 2},
            "mode": "train",
            "steps": 3,
            "model_overrides": window,
        },
    ]
    attention_spec = spec("llama3-tiny", runs, overrides={"n_layers": 4})
    results = launch(2, attention_spec, tmp_path, worker="pretrain.parity.attention_worker")
    batch = text_batches(1, GBS, SEQ)[0]
    doc, pos = packed_ids(batch[:, :-1])
    model = build_model(dataclasses.replace(dense_cfg(), **window), seed=SEED).double()
    for r in results[:2]:
        with torch.no_grad():
            logits = model(batch[:, :-1], position_ids=pos, document_ids=doc)
        ref = float(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
        print(f"{r['name']:<20} forward CE sum relative difference {rel(r['sum'], ref):.1e}")
        assert rel(r["sum"], ref) < TOL, (r["name"], r["sum"], ref)
    cfg = dataclasses.replace(dense_cfg(), **window)
    ref = reference_run(cfg, 3, GBS, SEQ, packed=True)
    for r in results[2:]:
        check_parity(r, ref, steps=3)
