"""A parallel run computes what one process computes (CPU, gloo, processes launched here).

Same seed, same real-text data (Debian man pages, byte-level ids), AdamW, gradient clipping at 1.0,
all in float64 (parallel.precision=fp64; the reference's parameters float64 too): the loss and
gradient norm of every step must equal the single-process run within TOL relative, and the
parameters after training, gathered, too. Each job launches one process group and runs several
layouts in it, to keep the suite fast on a 2-core machine. The bf16/FP8 runs, whose claim is the
precision itself, are held to a noise floor measured in the same test (test_precisions_pp2_fast).
"""

import contextlib
import dataclasses
import itertools

import pytest
import torch

from model_zoo.zoo import get_model_config
from pretrain.parity.harness import FP64_TOL, launch, max_rel_param_diff, reference_run, rel

# float64 parity: the harness's bound (its comment derives it from float64's roundoff)
TOL = FP64_TOL
# Five steps: in float64 a wrong layout (a missing reduction, a shard applied twice, a stale
# gradient) is off by far more than TOL at its first step; steps 2 to 5 carry what one step
# cannot show (AdamW's moments and bias correction, clipping of a gradient computed from updated
# weights, parameters after several updates). Every step costs one forward-backward on every
# rank of a 2-core machine, which is what the suite's time goes to.
STEPS = 5
GBS, SEQ = 8, 32


def dense_cfg():
    # 4 layers so a ZBV pipeline of pp=2 has one layer per stage (4 stages)
    return dataclasses.replace(get_model_config("llama3-tiny"), n_layers=4)


# Every run starts from seed 0: in float64 no seed is calmer than another.
SEED = 0


@pytest.fixture(scope="module")
def dense_ref():
    """20 steps (the precision runs); parity runs compare with its first STEPS. Also measures the
    float64 floor of the claim: the same single process with the batch accumulated in
    micro-batches of 2 (nothing changed but the order of sums) against it, printed beside the
    layouts' figures; it must sit under TOL, or no layout could be judged at TOL."""
    ref = reference_run(dense_cfg(), 20, GBS, SEQ, seed=SEED, snapshot_steps=(STEPS,))
    acc = reference_run(dense_cfg(), 20, GBS, SEQ, seed=SEED, micro_batch=2)
    acc["name"], acc["layout"] = "one process, micro-batches of 2", "reordered sums only"
    check_parity(acc, ref, steps=20)
    return ref


def spec(model, runs, micro_batch=2, steps=STEPS, overrides=None, seed=SEED):
    return {
        "model": model,
        "model_overrides": overrides or {},
        "steps": steps,
        "seed": seed,
        "global_batch": GBS,
        "micro_batch": micro_batch,
        "seq_len": SEQ,
        "runs": runs,
    }


def check_parity(result, ref, steps=STEPS):
    loss = max(rel(a, b) for a, b in zip(result["losses"], ref["losses"][:steps]))
    gnorm = max(rel(a, b) for a, b in zip(result["grad_norms"], ref["grad_norms"][:steps]))
    ref_params = ref["params"] if steps == len(ref["losses"]) else ref["params_at"][steps]
    params = max_rel_param_diff(result["params"], ref_params)
    print(
        f"{result['name']:<28} loss {loss:.1e}  grad-norm {gnorm:.1e}  params {params:.1e}  "
        f"[{result['layout']}]"
    )
    assert len(result["losses"]) == steps
    assert loss < TOL, (result["name"], result["losses"], ref["losses"])
    assert gnorm < TOL, (result["name"], result["grad_norms"], ref["grad_norms"])
    assert params < TOL, (result["name"], params)


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


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_parity_does_not_depend_on_the_thread_count(tmp_path):
    """The claim holds whatever the machine's threading (the float32 suite's failure on another
    CPU was this: OLMo-2 MQA's reference moved with the summation path). OLMo-2 MQA with qkv
    biases under TP2 on every rank with 1 and with 2 intra-op threads, against the single process
    computed under 1 and under 2 threads: all four pairs within TOL. Whether the thread count
    changed any bit is printed (on small matrices torch may not split the work at all)."""
    mqa = {"n_kv_heads": 1, "qkv_bias": True}
    cfg = dataclasses.replace(get_model_config("olmo2-tiny"), **mqa)
    refs, layouts = {}, {}
    for n in (1, 2):
        with torch_threads(n):
            refs[n] = reference_run(cfg, 4, GBS, SEQ)
        runs = [{"name": f"OLMo-2 MQA TP2, {n} threads", "parallel": {"tp": 2}}]
        layouts[n] = launch(
            2, spec("olmo2-tiny", runs, steps=4, overrides=mqa), tmp_path / f"t{n}", threads=n
        )[0]
    assert [layouts[n]["threads"] for n in (1, 2)] == [1, 2]  # the ranks ran with what was asked
    same_bits = {
        "reference": refs[1]["losses"] == refs[2]["losses"],
        "TP2": layouts[1]["losses"] == layouts[2]["losses"],
    }
    print(f"1 vs 2 threads bitwise equal losses: {same_bits}")
    for n_ref, n_layout in itertools.product((1, 2), repeat=2):
        result = dict(layouts[n_layout], name=f"{n_layout} threads vs ref {n_ref}")
        check_parity(result, refs[n_ref], steps=4)


@pytest.fixture(scope="module")
def packed_ref():
    return reference_run(dense_cfg(), STEPS, GBS, SEQ, packed=True)


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


# ------------------------------------------------------------------------------------------------
# Reduced precision (bf16, FP8): here the precision itself is the claim, so no constant bounds a
# layout's difference to one process; the bound is measured in the same test, on the same machine.
# ------------------------------------------------------------------------------------------------
# The single process of a precision, with the global batch of 8 accumulated in micro-batches of 2,
# 4 and 8: equally valid runs that differ only in the order of sums (and, for FP8 tensorwise, in
# the tensors its scales are taken over). How far they sit from the float64 run is the
# precision's floor (check_precision).
MICRO_BATCHINGS = (2, 4, 8)


def single_process(tmp_path, steps_by_precision):
    """{precision: {micro_batch: run}}: the engine on one rank (bf16/fp8 with the same FSDP2
    mixed-precision policy there as on many ranks), one launch for all."""
    runs = [
        {"name": f"single {p} mb{mb}", "parallel": {"precision": p}, "steps": n, "micro_batch": mb}
        for p, n in steps_by_precision.items()
        for mb in MICRO_BATCHINGS
    ]
    results = iter(launch(1, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path))
    return {p: {mb: next(results) for mb in MICRO_BATCHINGS} for p in steps_by_precision}


def check_precision(par, singles, fp64_ref, micro_batch):
    """A layout's run of a reduced precision against that precision's single-process runs.

    The floor is how far the precision's rounding takes a valid run from the exact math: the
    largest distance of the single process (micro-batches of 2, 4, 8) from the float64 run. The
    layout is one more rounding of the same math; if it is as accurate as those runs (within the
    floor of float64), the triangle inequality puts it within 2 x floor of the single process with
    its own micro-batch size, which is what is asserted. (The spread of the single-process runs
    among themselves is printed too: a layout adds roundings they do not, e.g. tensor-parallel
    partial sums reduced in bf16, so it may exceed that spread.)"""
    steps = len(par["losses"])

    def worst(a, b):
        return max(rel(x, y) for x, y in zip(a["losses"][:steps], b["losses"][:steps]))

    floor = max(worst(single, fp64_ref) for single in singles.values())
    spread = max(worst(singles[a], singles[b]) for a, b in itertools.combinations(singles, 2))
    track = worst(par, singles[micro_batch])
    vs_fp64 = worst(par, fp64_ref)
    print(
        f"{par['name']}: vs single process (micro-batches of {micro_batch}) {track:.2e}, "
        f"bound {2 * floor:.2e} (single vs fp64 up to {floor:.2e}; their spread {spread:.2e}); "
        f"layout vs fp64 {vs_fp64:.2e} over {steps} steps"
    )
    assert steps == len(singles[micro_batch]["losses"]) <= len(fp64_ref["losses"])
    # the precision path was taken: a run that silently computed in float64 would equal the
    # float64 reference within the float64 parity bound
    assert floor > FP64_TOL, (par["name"], floor)
    assert track <= 2 * floor, (par["losses"], singles[micro_batch]["losses"], floor)
    # The precision claim itself (docs/parallel.md, "Precision"): a bf16 or FP8 run trains like
    # full precision, its loss within 2% of the float64 run's at every step. It is the claim's
    # threshold, not a noise bound (measured here: 1e-4 to 1e-3 over 3 to 20 steps).
    assert vs_fp64 < 0.02, (par["losses"], fp64_ref["losses"])


def test_precisions_pp2_fast(tmp_path, dense_ref):
    """The default run's check of every precision path under a pipeline: bf16 over 10 steps, FP8
    tensorwise and rowwise over their first 3 (each step of FP8 costs seconds on CPU: torch's
    CPU `_scaled_mm` takes ~12 ms per call even for these 64-wide matrices), micro-batches of 4
    (half the FP8 matmul calls), each against its precision's floor (check_precision).
    test_precisions_pp2 (PARALLEL_SLOW=1) runs all three for the full 20 steps."""
    steps = {"bf16": 10, "fp8_tensorwise": 3, "fp8_rowwise": 3}
    runs = [
        {"name": f"PP2 {p}", "parallel": {"pp": 2, "precision": p}, "steps": n}
        for p, n in steps.items()
    ]
    par = launch(2, spec("llama3-tiny", runs, 4, overrides={"n_layers": 4}), tmp_path / "w2")
    singles = single_process(tmp_path / "w1", steps)
    for p, result in zip(steps, par):
        check_precision(result, singles[p], dense_ref, micro_batch=4)


@pytest.mark.slow
def test_precisions_pp2(tmp_path, dense_ref):
    """Every precision path under a pipeline (PP2, 20 steps): bf16, FP8 tensorwise and rowwise
    each against their noise floor (about 6 minutes on 2 cores: FP8 matmuls are slow on CPU;
    test_precisions_pp2_fast covers the same paths in the default run)."""
    steps = {"bf16": 20, "fp8_tensorwise": 20, "fp8_rowwise": 20}
    runs = [{"name": f"PP2 {p}", "parallel": {"pp": 2, "precision": p}} for p in steps]
    par = launch(
        2, spec("llama3-tiny", runs, 4, steps=20, overrides={"n_layers": 4}), tmp_path / "w2"
    )
    singles = single_process(tmp_path / "w1", steps)
    for p, result in zip(steps, par):
        check_precision(result, singles[p], dense_ref, micro_batch=4)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp8_tensorwise", "fp8_rowwise"])
def test_precision_3d(tmp_path, dense_ref, precision):
    """bf16 / FP8 under TP2 x PP2 x DP2 over 20 steps, against the precision's noise floor."""
    runs = [
        {
            "name": f"TP2xPP2xDP2 {precision}",
            "steps": 20,
            "parallel": {"tp": 2, "pp": 2, "precision": precision},
        }
    ]
    par = launch(8, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path / "w8")[0]
    singles = single_process(tmp_path / "w1", {precision: 20})[precision]
    check_precision(par, singles, dense_ref, micro_batch=2)


@pytest.mark.slow
def test_compile_dp2(tmp_path, dense_ref):
    """Per-block torch.compile (inductor, CPU) under FSDP2 DP2 still matches one process."""
    runs = [{"name": "DP2 compile", "parallel": {"compile": True}}]
    check_parity(
        launch(2, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path)[0],
        dense_ref,
    )


@pytest.fixture(scope="module")
def deepseek_ref():
    return reference_run(get_model_config("deepseek-v2-lite-tiny"), STEPS, GBS, SEQ)


def test_moe_mla_tp2_pp2_ep2(tmp_path, deepseek_ref):
    """DeepSeek-V2-Lite-like tiny model: MLA attention in every layer, MoE (2 shared + 8 routed
    experts, group-limited top-2 routing) after the first dense layer."""
    runs = [
        {"name": "MoE+MLA TP2", "parallel": {"tp": 2}},
        {"name": "MoE+MLA PP2", "parallel": {"pp": 2}},
        {"name": "MoE+MLA EP2", "parallel": {"ep": 2}},
    ]
    results = launch(2, spec("deepseek-v2-lite-tiny", runs), tmp_path)
    for r in results:
        check_parity(r, deepseek_ref)
    # the layouts really split what they claim (rank 0's local shards): 8 experts of hidden 32,
    # 4 heads x (16 + 8) query dims, d_model 64
    tp2, _, ep2 = (r["local_shapes"] for r in results)
    assert tp2["layers.1.moe.experts.w1"] == (8, 16, 64)  # TP inside every expert
    assert tp2["layers.1.moe.experts.w2"] == (8, 64, 16)
    assert tp2["layers.1.attention.wq.weight"] == (48, 64)  # 2 of 4 heads
    assert ep2["layers.1.moe.experts.w1"] == (4, 32, 64)  # 4 of 8 whole experts


def test_moe_ep2_with_tp2_pp2_dp2(tmp_path, deepseek_ref):
    """Expert parallel composed: EP2 x TP2, EP2 x PP2, EP2 x FSDP DP2 (experts sharded over
    dp_shard, dense weights over dp_shard x ep)."""
    runs = [
        {"name": "MoE+MLA EP2xTP2", "parallel": {"ep": 2, "tp": 2}},
        {"name": "MoE+MLA EP2xPP2", "parallel": {"ep": 2, "pp": 2}},
        {"name": "MoE+MLA EP2xDP2", "parallel": {"ep": 2, "dp_shard": 2}},
    ]
    results = launch(4, spec("deepseek-v2-lite-tiny", runs), tmp_path)
    for r in results:
        check_parity(r, deepseek_ref)
    # EP2 x TP2: 4 of 8 experts, each with 16 of its 32 hidden units
    assert results[0]["local_shapes"]["layers.1.moe.experts.w1"] == (4, 16, 64)
    assert results[0]["local_shapes"]["layers.1.moe.experts.w2"] == (4, 64, 16)


@pytest.mark.slow
def test_moe_experts_split_over_ep_tp_and_dp(tmp_path, deepseek_ref):
    """8 ranks: experts split over ep, inside over tp, and FSDP-sharded over dp_shard (a 2-D
    expert DTensor under FSDP2); EP2 x TP2 x PP2; and the 3-D layout without ep. The default
    run covers each pair (test_moe_ep2_with_tp2_pp2_dp2: EP2 x TP2, x PP2, x FSDP DP2, with the
    expert shapes) and the 3-D dense layout (test_distributed's TP2 x PP2 x DP2 run); this
    8-rank launch takes ~60 s."""
    runs = [
        {"name": "MoE+MLA EP2xTP2xDP2", "parallel": {"ep": 2, "tp": 2}},
        {"name": "MoE+MLA EP2xTP2xPP2", "parallel": {"ep": 2, "tp": 2, "pp": 2}},
        {"name": "MoE+MLA TP2xPP2xDP2", "parallel": {"tp": 2, "pp": 2}},
    ]
    results = launch(8, spec("deepseek-v2-lite-tiny", runs), tmp_path)
    for r in results:
        check_parity(r, deepseek_ref)
    # ep 2 x FSDP 2 over 8 experts: 2 per rank, each with 16 of its 32 hidden units (tp)
    assert results[0]["local_shapes"]["layers.1.moe.experts.w1"] == (2, 16, 64)


def test_moe_mla_data_parallel_and_pipeline_schedules(tmp_path):
    """The MoE + MLA model under FSDP2 DP4, HSDP 2x2, and the interleaved and zero-bubble pipeline
    schedules (4 layers, so pp=2 has 4 stages), each with FSDP DP2 besides."""
    overrides = {"n_layers": 4}
    cfg = dataclasses.replace(get_model_config("deepseek-v2-lite-tiny"), **overrides)
    ref = reference_run(cfg, STEPS, GBS, SEQ)
    runs = [
        {"name": "MoE+MLA FSDP2 DP4", "parallel": {"dp_shard": 4}},
        {"name": "MoE+MLA HSDP 2x2", "parallel": {"dp_replicate": 2, "dp_shard": 2}},
        {
            "name": "MoE+MLA PP2 Interleaved xDP2",
            "parallel": {"pp": 2, "pp_schedule": "Interleaved1F1B"},
        },
        {"name": "MoE+MLA PP2 ZBV xDP2", "parallel": {"pp": 2, "pp_schedule": "ZBVZeroBubble"}},
    ]
    moe_spec = spec("deepseek-v2-lite-tiny", runs, micro_batch=1, overrides=overrides)
    for r in launch(4, moe_spec, tmp_path):
        check_parity(r, ref)


@pytest.mark.slow
def test_moe_mixtral_layouts(tmp_path):
    """Mixtral-like MoE under PP2 and DP2. (Under TP2 the attention's reduction order differs
    from one process by ~1e-7, and at step 4 of this run that flips one near-tied top-2 routing
    decision: a discrete change no tolerance can absorb, so TP x MoE is covered by the
    DeepSeek test above, whose routing has no such tie.)"""
    cfg = get_model_config("mixtral-tiny")
    ref = reference_run(cfg, STEPS, GBS, SEQ)
    runs = [
        {"name": "Mixtral PP2", "parallel": {"pp": 2}},
        {"name": "Mixtral DP2", "parallel": {}},
        {"name": "Mixtral EP2", "parallel": {"ep": 2}},
    ]
    for r in launch(2, spec("mixtral-tiny", runs), tmp_path):
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


# ------------------------------------------------------------------------------------------------
# Context parallel (alltoall: DeepSpeed-Ulysses over gloo). The ring style cannot run on CPU; its
# parity case is in benchmarks/gpu_acceptance.sh.
# ------------------------------------------------------------------------------------------------
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
