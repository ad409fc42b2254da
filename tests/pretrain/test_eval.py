"""Validation during training (eval.*) and the held-out reader of pretrain/evaluation.py.

References: transformers' own loss of a Llama model for `loss_on_windows`; the packed stream as
written to disk for the windows; a weights checkpoint of the same step evaluated on one device
for the trainer's validation values; the same run without validation for the training losses.
"""

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configcore import ConfigError
from model_zoo.zoo import get_model_config
from pretrain.checkpoint import load_weights
from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.evaluation import EvalSet, eval_batches, evaluate_model, loss_on_windows
from pretrain.metrics import wandb_available
from pretrain.parity.harness import FP64_TOL, launch, max_rel_param_diff, reference_run, rel
from pretrain.train import train
from tests.pretrain.helpers import (
    EOS,
    documents,
    read_metrics,
    tiny_overrides,
    write_megatron,
    write_npy,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaldata")
    en, de = documents(12, start=150, max_bytes=1500), documents(12, start=220, max_bytes=1500)
    write_megatron(str(d / "val/en/man"), en, per_shard=5)  # a folder of three shards
    return {
        "train": write_megatron(str(d / "train/man"), documents(40, max_bytes=1500)),
        "en": str(d / "val/en"),
        "en_docs": en,
        "de": write_npy(str(d / "val/de.npy"), de),
        "de_docs": de,
    }


def packed(docs):
    return np.concatenate([np.append(d, EOS) for d in docs]).astype(np.int64)


def test_windows_are_the_packed_stream_in_order(data):
    es = EvalSet.from_paths([data["en"]], 32, 200, EOS, vocab_size=260)
    assert es.names == ["en"]  # default label: the path's last component
    # .npy (OLMo's format) is read by the same rules as training data
    es_de = EvalSet.from_paths([data["de"]], 32, 0, EOS, fmt="npy", npy_dtype="uint16")
    for src, docs in ((es.sources[0], data["en_docs"]), (es_de.sources[0], data["de_docs"])):
        stream = packed(docs)
        w = src.windows.numpy()
        for j in range(w.shape[0]):
            np.testing.assert_array_equal(w[j], stream[j * 32 : j * 32 + 33])
    assert es.sources[0].windows.shape == (6, 33)  # 200 tokens -> 6 whole windows of 32
    assert es_de.sources[0].windows.shape[0] == (len(packed(data["de_docs"])) - 1) // 32
    with pytest.raises(ConfigError, match="token id .* >= model.vocab_size=100"):
        EvalSet.from_paths([data["en"]], 32, 0, EOS, vocab_size=100)


def test_loss_on_windows_is_transformers_loss(data):
    """A Hugging Face Llama's own mean loss (labels=) on the windows equals sum/tokens of
    loss_on_windows on that model, whatever the micro-batch; padding rows add nothing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(hf_cfg).eval()
    windows = EvalSet.from_paths([data["en"]], 32, 0, EOS).sources[0].windows
    with torch.no_grad():
        ref = model(windows, labels=windows).loss.item()  # HF shifts the labels itself
    total, n = loss_on_windows(model, windows, micro_batch=5)
    assert n == windows.shape[0] * 32
    print(
        f"loss_on_windows vs transformers' loss over {n} tokens: {abs(total / n - ref) / ref:.1e}"
    )
    # transformers' loss is float32 whatever the model (its loss casts logits .float()) and its
    # mean over the n tokens is one float32 reduction: torch's pairwise sum rounds by at most
    # log2(n) x 6e-8 = 8.5e-7 relative (n = 17,984 here; measured 1.3e-7); ours sums the same
    # float32 terms in float64
    assert abs(total / n - ref) / ref < 1e-6
    # whatever the micro-batch: in float64 (our cross-entropy keeps it) only rounding differs
    wide = copy.deepcopy(model).double()
    narrow_sum = loss_on_windows(wide, windows, micro_batch=5)[0]
    assert rel(loss_on_windows(wide, windows, micro_batch=64)[0], narrow_sum) < FP64_TOL
    padded = [(i, lab) for i, lab in eval_batches(windows, 8)]
    assert sum(int((lab != -100).sum()) for _, lab in padded) == n


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same 6 steps with and without validation (two sources, every 2 steps and at the
    series steps 0 and 3); TensorBoard and (when installed) offline W&B on in the first."""
    root = tmp_path_factory.mktemp("evalruns")
    common = {"checkpoint.series": "'steps:[0,3]'", "checkpoint.series_dtype": "float32"}
    with_eval = {
        **common,
        "eval.paths": f"[{data['en']},{data['train'][0]}]",
        "eval.names": "[en,train]",
        "eval.interval": 2,
        "eval.max_tokens": 256,
        "trainer.log_interval": 2,
        "trainer.tensorboard": "true",
    }
    if wandb_available():
        with_eval.update({"metrics.wandb": "true", "metrics.wandb_mode": "offline"})
    out, lines = {}, []
    for name, extra in (("eval", with_eval), ("plain", {**common, "trainer.log_interval": 2})):
        run = compose_config(tiny_overrides(root / name, data["train"], steps=6, **extra))
        out[name] = train(run, log=lines.append)
    return {"root": root, "out": out}


def test_validation_does_not_change_training(runs):
    assert runs["out"]["eval"]["losses"] == runs["out"]["plain"]["losses"]  # bitwise


def test_validation_values_at_their_steps(runs, data):
    """Steps 0, 2, 3, 4, 6; at the series steps they equal one device's loss on the saved
    weights of that step; merged into the training record on log steps, alone otherwise."""
    recs = read_metrics(runs["root"] / "eval")
    evals = {r["step"]: r for r in recs if "eval/en/loss" in r}
    assert sorted(evals) == [0, 2, 3, 4, 6]
    assert [r["step"] for r in recs if "loss" in r] == [2, 4, 6]
    assert "loss" not in evals[0] and "loss" not in evals[3] and "loss" in evals[4]
    es = EvalSet.from_paths([data["en"], data["train"][0]], 32, 256, EOS, names=["en", "train"])
    for step in (0, 3):
        ref = evaluate_model(load_weights(runs["root"] / "eval" / "series" / f"step{step}"), es)
        for name in ("en", "train"):
            got = evals[step][f"eval/{name}/loss"]
            # the same float32 weights (series_dtype float32) and forward on one device as in
            # training, summed per micro-batch in float64: only the micro-batch split differs
            # (ulp-level logits), far below 1e-6 relative; exp in float64: approx's default
            assert abs(got - ref[name].loss) / ref[name].loss < 1e-6, (step, name)
            assert evals[step][f"eval/{name}/ppl"] == pytest.approx(math.exp(got))
            assert evals[step][f"eval/{name}/tokens"] == 256
    assert evals[6]["eval/train/loss"] < evals[0]["eval/train/loss"] - 0.5  # it learned


def test_validation_reaches_tensorboard_and_wandb(runs):
    recs = {r["step"]: r for r in read_metrics(runs["root"] / "eval") if "eval/en/loss" in r}
    acc = EventAccumulator(str(runs["root"] / "eval" / "tensorboard"))
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("eval/en/loss")}
    assert sorted(tb) == sorted(recs)
    for step, value in tb.items():
        # TensorBoard stores float32 scalars: one rounding (6e-8) of the float64 record
        assert value == pytest.approx(recs[step]["eval/en/loss"], rel=1e-6)
    assert "train/loss" in acc.Tags()["scalars"]
    if not wandb_available():
        pytest.skip("wandb is not installed")
    (offline,) = (runs["root"] / "eval" / "wandb").glob("offline-run-*/run-*.wandb")
    raw = offline.read_bytes()  # the offline log holds each key and its value as JSON text
    assert b"eval/train/loss" in raw
    for rec in recs.values():
        assert json.dumps(rec["eval/train/loss"]).encode() in raw


def test_bad_eval_config_is_one_line(tmp_path, capsys, data):
    assert main(["config", "eval.paths=[a,b]", "eval.names=[x]"]) == 2
    assert "eval.names has 1 entries but eval.paths has 2" in capsys.readouterr().err
    assert main(["config", "eval.interval=-1"]) == 2
    assert "eval.interval=-1 must be >= 0" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere" / "val")
    ov = tiny_overrides(tmp_path / "r", data["train"], steps=4, **{"eval.paths": f"[{missing}]"})
    assert main(["train", *ov]) == 2
    err = capsys.readouterr().err
    assert "nowhere/val" in err and "matches no .idx file" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before any process group or run folder


def test_forward_only_path_of_multi_stage_pipelines(tmp_path):
    """Interleaved1F1B and ZBV (pp=2, two stages per rank) validate through a forward-only run
    of their schedule after every step: the loss on the next batch of text after 3 steps equals
    one process's loss_on_windows of the reference model within FP64_TOL (both float64), and the training losses
    and final weights stay those of the reference, the losses bitwise those of the same run
    without validation (validation between steps disturbs nothing).
    The 1F1B pipeline under TP2 x PP2 x DP2 is tests/pretrain/test_distributed.py's."""
    cfg = dataclasses.replace(get_model_config("llama3-tiny"), n_layers=4)
    ref = reference_run(cfg, 3, 8, 32, evaluate=True)
    runs = [
        {"name": f"PP2 {name}", "parallel": {"pp": 2, "pp_schedule": name}, "eval": True}
        for name in ("Interleaved1F1B", "ZBVZeroBubble")
    ]
    runs.append(
        {"name": "PP2 ZBV, no validation", "parallel": {"pp": 2, "pp_schedule": "ZBVZeroBubble"}}
    )
    spec = {
        "model": "llama3-tiny",
        "model_overrides": {"n_layers": 4},
        "steps": 3,
        "global_batch": 8,
        "micro_batch": 2,
        "seq_len": 32,
        "runs": runs,
    }
    *results, plain = launch(2, spec, tmp_path)
    assert results[1]["losses"] == plain["losses"]  # bitwise, with and without validation
    for result in results:
        (total, n), (ref_total, ref_n) = result["eval"][-1], ref["eval"]
        assert len(result["eval"]) == 3 and n == ref_n == 8 * 32
        print(
            f"{result['name']}: validation vs one process, relative diff {rel(total, ref_total):.1e}"
        )
        assert rel(total, ref_total) < FP64_TOL, (result["name"], total, ref_total)
        assert max(rel(a, b) for a, b in zip(result["losses"], ref["losses"])) < FP64_TOL
        assert max_rel_param_diff(result["params"], ref["params"]) < FP64_TOL, result["name"]


def test_validation_leaves_moe_routing_counters_alone(tmp_path, data):
    """DeepSeek-V3's aux-loss-free balancing updates router biases from the step's tokens per
    expert; validation routes tokens too, and the engine restores the counters after it, so the
    losses and the logged expert load are bitwise those of the run without validation."""
    extra = {"model": "deepseek-v3-tiny", "model.moe.bias_update_speed": 0.05}
    runs = {}
    for name, ev in (
        ("plain", {}),
        ("eval", {"eval.paths": f"[{data['en']}]", "eval.interval": 1}),
    ):
        ov = tiny_overrides(tmp_path / name, data["train"], steps=4, **extra, **ev)
        runs[name] = train(compose_config(ov), log=lambda *_: None)
    assert runs["eval"]["losses"] == runs["plain"]["losses"]
    loads = {n: [m["expert_load"] for m in read_metrics(tmp_path / n) if "loss" in m] for n in runs}
    assert loads["eval"] == loads["plain"] and loads["plain"][0] != loads["plain"][-1]
