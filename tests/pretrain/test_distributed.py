"""Under torchrun: a TP2 x PP2 x DP2 run, resumed under DP4, TP2 x DP2 and PP2 x DP2 (reshard on
load), compared with the uninterrupted run and with one process; its checkpoint exported to
Hugging Face and checked in `transformers` against the loss training logged. The step-3
checkpoint every resume starts from is written with async_save under 8 ranks. The runs validate
on held-out text (eval.paths) at the series step and at the end, through the pipeline schedule's
forward-only path under TP2 x PP2 x DP2."""

import json

import pytest
import torch
import torch.nn.functional as F

from pretrain.checkpoint import load_weights
from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.evaluation import EvalSet, evaluate_model
from pretrain.parity.harness import FP64_TOL
from pretrain.train import train
from tests.pretrain.helpers import (
    EOS,
    documents,
    read_metrics,
    run_cli,
    tiny_overrides,
    write_npy,
)

LAYOUTS = {
    "tp2_pp2_dp2": ["parallel.tp=2", "parallel.pp=2", "parallel.dp_shard=2"],
    "dp4": ["parallel.tp=1", "parallel.pp=1", "parallel.dp_shard=4"],
    "tp2_dp2": ["parallel.tp=2", "parallel.pp=1", "parallel.dp_shard=2"],
    "pp2_dp2": ["parallel.tp=1", "parallel.pp=2", "parallel.dp_shard=2"],
}


# The runs are float64 (parallel.precision=fp64, series in float64): a layout, a resume and a
# reshard change only the order of sums, so they differ from one process by float64 rounding
# (pretrain/parity/harness.py derives the bound).
EXACT = FP64_TOL


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    # .npy (OLMo format) here: the workers then skip importing megatron-core, seconds each
    path = write_npy(str(d / "tokens/en.npy"), documents(60, max_bytes=1500))
    val = write_npy(str(d / "tokens/val.npy"), documents(20, start=100, max_bytes=1500))

    def ov(run_dir, layout, **extra):
        o = tiny_overrides(
            run_dir,
            [path],
            steps=6,
            **{
                "data.format": "npy",
                "checkpoint.interval": 3,
                "checkpoint.async_save": "true",
                "checkpoint.keep_last": 0,
                "checkpoint.series": "'steps:[3]'",
                "checkpoint.series_dtype": "float64",
                "parallel.precision": "fp64",
                "eval.paths": f"[{val}]",
                "eval.max_tokens": 1024,
                **extra,
            },
        )
        return o + LAYOUTS[layout]

    run_dir = d / "tp2_pp2_dp2"
    res = run_cli(["train", *ov(run_dir, "tp2_pp2_dp2")], nproc=8, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    losses = {m["step"]: m["loss"] for m in read_metrics(run_dir)}
    assert sorted(losses) == list(range(1, 7))
    return {"dir": d, "ov": ov, "run": run_dir, "losses": losses, "val": val}


def test_layout_does_not_change_the_run(base):
    """One process sees the same global batches and ends at the same losses as TP2xPP2xDP2."""
    single = train(
        compose_config(base["ov"](base["dir"] / "single", "dp4")[:-3]), log=lambda *_: None
    )
    for step, loss in base["losses"].items():
        assert rel(single["losses"][step], loss) < EXACT, (step, single["losses"][step], loss)
    a = (base["dir"] / "single" / "data_order.jsonl").read_text().splitlines()
    b = [json.loads(l) for l in (base["run"] / "data_order.jsonl").read_text().splitlines()]
    assert [json.loads(l)["samples"] for l in a] == [r["samples"] for r in b]


# dp4 in the default run: the step-3 checkpoint of TP2 x PP2 x DP2 loses both its tp and its pp
# split (each launch of 4 ranks takes ~20 s here). The other two run with PARALLEL_SLOW=1;
# test_parity's "PP2 <- DCP(TP2)" and "TP2 <- DCP(CP2)" cover loading into another tp/pp split.
@pytest.mark.parametrize(
    "layout",
    [
        "dp4",
        pytest.param("tp2_dp2", marks=pytest.mark.slow),
        pytest.param("pp2_dp2", marks=pytest.mark.slow),
    ],
)
def test_reshard_on_resume(base, layout):
    ckpt = base["run"] / "checkpoints" / "step_0000003"
    run_dir = base["dir"] / f"resume_{layout}"
    res = run_cli(["train", *base["ov"](run_dir, layout), f"resume={ckpt}"], nproc=4, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "resumed from" in res.stdout
    got = {m["step"]: m["loss"] for m in read_metrics(run_dir)}
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert rel(got[step], base["losses"][step]) < EXACT, (
            layout,
            step,
            got[step],
            base["losses"][step],
        )


@pytest.mark.parametrize("source", ["series", "full"])
def test_export_of_sharded_checkpoint_matches_training_in_transformers(base, source, tmp_path):
    """export-hf RUN --step 3 (series) or the full checkpoint folder, in one process; the HF model's
    mean loss on the batch of step 4 must be the loss training logged at step 4 (computed by the
    TP2xPP2xDP2 model holding exactly the step-3 weights)."""
    import transformers

    from pretrain.analysis.batch import batch_of_step

    if source == "series":
        code = main(["export-hf", str(base["run"]), "--step", "3", "--out", str(tmp_path)])
        hf_dir = tmp_path / "step3"
        ours = load_weights(base["run"] / "series" / "step3")
    else:
        hf_dir = tmp_path / "full3"
        code = main(
            ["export-hf", str(base["run"] / "checkpoints" / "step_0000003"), "--out", str(hf_dir)]
        )
        ours = load_weights(base["run"] / "checkpoints" / "step_0000003")
    assert code == 0  # one process consolidates the 8-rank checkpoint
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    batch = torch.from_numpy(batch_of_step(base["run"], 4)["tokens"])
    with torch.no_grad():
        logits = hf(batch[:, :-1]).logits
        ref = ours.eval()(batch[:, :-1])[..., : logits.shape[-1]]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten()).item()
    # The export is float32 (export-hf's default) and transformers computes in float32, against
    # our float64 weights and the float64 logged loss: the difference is fp32 rounding. Logits
    # here are O(10), each from ~1e3 sequential roundings of 2^-24 (6e-8) through the 4 layers:
    # 6e-4 at worst, ~2e-5 for errors of random sign; 1e-4 in abs. The mean loss averages 256
    # such per-token errors: ~6e-8 x 1e3 / sqrt(256) ~ 4e-6 relative; 1e-5.
    diff = (logits.double() - ref).abs().max().item()
    print(
        f"export ({source}): max |logit diff| {diff:.1e}, loss rel {rel(loss, base['losses'][4]):.1e}"
    )
    assert diff < 1e-4
    assert rel(loss, base["losses"][4]) < 1e-5, (loss, base["losses"][4])


def test_validation_under_tp2_pp2_dp2_equals_one_process(base):
    """The validation loss the 8-rank run logged at steps 3 (series) and 6 (last) equals one
    process's loss (`loss_on_windows`) of the float64 weights saved at those steps, within EXACT."""
    recs = {m["step"]: m for m in read_metrics(base["run"]) if "eval/val/loss" in m}
    assert sorted(recs) == [3, 6]
    evalset = EvalSet.from_paths([base["val"]], 32, 1024, EOS, fmt="npy")
    for step, path in ((3, "series/step3"), (6, "checkpoints/step_0000006")):
        ref = evaluate_model(load_weights(base["run"] / path), evalset)["val"]
        diff = rel(recs[step]["eval/val/loss"], ref.loss)
        print(f"validation loss step {step}: TP2xPP2xDP2 vs one process, relative diff {diff:.1e}")
        assert diff < EXACT, (step, recs[step], ref)
        assert recs[step]["eval/val/tokens"] == ref.tokens == 1024
