"""Dense layouts compute what one process computes: TP2, the PP2 schedules, activation
checkpointing, DCP across layouts, packed documents, FSDP2 and HSDP, the 3-D layout (float64;
tests/parallel/parity_cases.py says how they are compared)."""

import pytest

from pretrain.parity.harness import launch
from tests.parallel.parity_cases import GBS, SEQ, check_parity, spec


def test_dense_tp2_pp2_schedules_and_dcp(tmp_path, dense_ref):
    """TP2; PP2 with 1F1B, Interleaved1F1B, ZBV; and a DCP checkpoint written under TP2 read
    back under PP2 (another layout, other initial weights) gives the same parameters."""
    runs = [
        {"name": "TP2", "parallel": {"tp": 2}, "dcp_save": True},
        {"name": "PP2 1F1B", "parallel": {"pp": 2, "pp_schedule": "1F1B"}},
        {"name": "PP2 Interleaved1F1B", "parallel": {"pp": 2, "pp_schedule": "Interleaved1F1B"}},
        {"name": "PP2 ZBVZeroBubble", "parallel": {"pp": 2, "pp_schedule": "ZBVZeroBubble"}},
        {"name": "PP2 <- DCP(TP2)", "parallel": {"pp": 2}, "steps": 0, "seed": 7, "dcp_load": 0},
        {"name": "PP2 AC full", "parallel": {"pp": 2, "activation_checkpointing": "full"}},
        {
            "name": "PP2 AC selective/2",
            "parallel": {"pp": 2, "activation_checkpointing": "selective", "ac_every_n": 2},
        },
    ]
    results = launch(2, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path)
    for r in results[:4] + results[5:]:
        check_parity(r, dense_ref)
    # rank 0 holds stages 0 (layers 0,1) of the 1F1B pipeline: all recomputed / every 2nd
    assert results[5]["checkpointed_layers"] == [0, 1]
    assert results[6]["checkpointed_layers"] == [0]
    assert results[1]["checkpointed_layers"] == []
    loaded = results[4]["params"]
    assert set(loaded) == set(results[0]["params"])
    for k, v in results[0]["params"].items():
        assert (loaded[k] == v).all(), k


def test_packed_documents_tp2_pp2(tmp_path, packed_ref):
    """Packed documents (each line of text is one): restarting position ids and the model's
    intra-document mask pass through sequence parallel and the pipeline unchanged."""
    from pretrain.parity.harness import packed_ids, text_batches

    doc, _ = packed_ids(text_batches(1, GBS, SEQ)[0, :, :-1])
    assert doc.max() > 0  # the data really has several documents per row
    ref = packed_ref
    runs = [
        {"name": "TP2 packed", "parallel": {"tp": 2}, "packed": True},
        {
            "name": "PP2 ZBV packed",
            "parallel": {"pp": 2, "pp_schedule": "ZBVZeroBubble"},
            "packed": True,
        },
    ]
    packed_spec = spec("llama3-tiny", runs, overrides={"n_layers": 4})
    for r in launch(2, packed_spec, tmp_path):
        check_parity(r, ref)


def test_dense_fsdp_dp4_and_hsdp(tmp_path, dense_ref):
    runs = [
        {"name": "FSDP2 DP4", "parallel": {"dp_shard": 4}},
        {"name": "HSDP 2x2", "parallel": {"dp_replicate": 2, "dp_shard": 2}},
    ]
    for r in launch(4, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path):
        check_parity(r, dense_ref)


@pytest.mark.slow
def test_dense_3d(tmp_path, dense_ref):
    """TP2 x PP2 x DP2 (8 ranks, ~35 s on 2 cores). The default run covers the same claim with
    tests/pretrain/test_distributed.py, whose TP2 x PP2 x DP2 float64 run equals one process
    within FP64_TOL (test_layout_does_not_change_the_run)."""
    runs = [{"name": "TP2xPP2xDP2", "parallel": {"tp": 2, "pp": 2}}]
    res = launch(8, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path)
    check_parity(res[0], dense_ref)
