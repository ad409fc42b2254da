"""`pretrain analyze` across a checkpoint series: eval, memorization, weights, compare, report on
one tiny model trained here on real text (the bundled man pages) with a dense series, and the
scaling-law fit on points from the published Chinchilla fit.

The training text has one man-page excerpt planted as every second document: each document is
95 bytes + EOS = seq_len tokens, so every training sample is one whole document and the planted
one is seen as a training sample many times (the memorization test's positive)."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from model_zoo.counting import training_flops_per_token
from pretrain.analysis.memorization import draw_sequences
from pretrain.analysis.scaling_fit import Fit
from pretrain.checkpoint import load_weights
from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.train import train
from tests.pretrain.helpers import documents, read_metrics, run_cli, tiny_overrides, write_megatron

SEQ = 96
STEPS = 40
SERIES = [0, 1, 2, 4, 8, 16, 24, 32, 40]  # first + log2:32 + every:8


def png_is_a_plot(path) -> np.ndarray:
    """The PNG has drawn content: many colours and far from uniform (not a blank canvas)."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img.std() > 20, f"{path} is nearly uniform"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, f"{path} has almost no colours"
    return img


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("analysis")
    docs = [x[:95] for x in documents(400, max_bytes=200) if len(x) >= 95]
    planted = docs[0]
    train_docs = [planted if i % 2 == 0 else doc for i, doc in enumerate(docs[1:301])]
    write_megatron(str(d / "tok/train/man"), train_docs)
    write_megatron(str(d / "tok/val/man"), documents(20, start=240, max_bytes=1500))
    val = str(d / "tok/val")
    extra = {
        "trainer.seq_len": SEQ,
        "trainer.global_batch_size": 16,
        "trainer.micro_batch_size": 16,
        "optim.lr": 1e-2,
        "schedule.name": "constant",
        "checkpoint.series": "first+log2:32+every:8",
        "checkpoint.series_dtype": "float32",
        "eval.paths": f"[{val}]",
        "eval.max_tokens": 2048,
    }
    run_dir = d / "run"
    ov = tiny_overrides(run_dir, [str(d / "tok/train")], steps=STEPS, **extra)
    train(compose_config(ov), log=lambda *_: None)
    return {"dir": d, "run": run_dir, "val": val, "planted": planted, "ov": ov}


def test_eval_equals_the_validation_loss_training_logged(suite, capsys):
    run, val = suite["run"], suite["val"]
    args = ["analyze", "eval", "--run", str(run), "--data", val, "--max-tokens", "2048"]
    assert main([*args, "--per-position"]) == 0
    assert f"eval: {len(SERIES)} checkpoints evaluated, 0 already done" in capsys.readouterr().out
    out = run / "analysis" / "eval"
    with open(out / "eval.csv", newline="") as fh:
        rows = {int(r["step"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == SERIES
    logged = {m["step"]: m["eval/val/loss"] for m in read_metrics(run) if "eval/val/loss" in m}
    for step in SERIES:  # the trainer validated at every series step with the same definition
        # the same float32 weights and forward, summed in float64, in other micro-batches and
        # processes: ulp-level logits move the mean by <= 1e-6 relative; 1e-5 an order above
        assert abs(float(rows[step]["loss/val"]) - logged[step]) / logged[step] < 1e-5
        assert int(rows[step]["tokens_evaluated/val"]) == 2048 // SEQ * SEQ  # whole windows
    assert float(rows[16]["loss/val"]) < float(rows[0]["loss/val"]) - 1.0
    recs = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    pos = np.array(recs[-1]["position_loss/val"])
    # equal token counts per position: the mean of the position means is the mean, both float64
    # sums of the same terms (rounding ~1e-15); 1e-6 allows no other difference
    assert len(pos) == SEQ and abs(pos.mean() - recs[-1]["loss/val"]) < 1e-6
    png_is_a_plot(out / "eval.png")
    png_is_a_plot(out / "eval_positions.png")
    # resumable: a second invocation finds every step done and rewrites nothing
    before = {p.name: p.stat().st_mtime_ns for p in (out / "steps").iterdir()}
    assert main(args) == 0
    assert f"eval: 0 checkpoints evaluated, {len(SERIES)} already done" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "steps").iterdir()}


def test_eval_of_hf_folders_and_under_torchrun_equals_one_process(suite, tmp_path):
    """Pythia's layout (one HF folder per step) gives the same losses as our checkpoints, and
    two data-parallel ranks the same as one process."""
    run, val = suite["run"], suite["val"]
    for step in (8, 40):
        assert (
            main(["export-hf", str(run), "--step", str(step), "--out", str(tmp_path / "hf")]) == 0
        )
    tokens_per_step = 16 * SEQ
    res = run_cli(
        [
            *("analyze", "eval", str(tmp_path / "hf"), "--data", val),  # torchrun owns --run
            *("--max-tokens", "2048", "--seq-len", str(SEQ), "--out", str(tmp_path / "hf_eval")),
            *("--tokens-per-step", str(tokens_per_step)),
        ],
        nproc=2,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ours = {
        json.loads(p.read_text())["step"]: json.loads(p.read_text())
        for p in (run / "analysis" / "eval" / "steps").glob("*.json")
    }
    with open(tmp_path / "hf_eval" / "eval.csv", newline="") as fh:
        hf_rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in hf_rows] == [8, 40]
    for r in hf_rows:
        step = int(r["step"])
        assert int(r["tokens"]) == step * tokens_per_step == ours[step]["tokens"]
        # the HF export (float32) through transformers' forward against ours on the same
        # weights: float32 rounding, ~1e-6 relative in a mean loss (see test_train's export test)
        assert abs(float(r["loss/val"]) - ours[step]["loss/val"]) < 1e-5 * ours[step]["loss/val"]
        assert int(r["tokens_evaluated/val"]) == 2048 // SEQ * SEQ


def test_planted_sequence_is_memorized_late_and_not_at_step_0(suite, capsys):
    run = suite["run"]
    args = ["analyze", "memorization", "--run", str(run), "--samples", "96"]
    assert main([*args, "--steps", "steps:[0,8,40]"]) == 0
    assert "memorization of 96 training sequences" in capsys.readouterr().out
    out = run / "analysis" / "memorization"
    seqs = json.loads((out / "sequences.json").read_text())
    drawn = draw_sequences(run, 96, 64, seed=0)
    assert drawn["samples"] == seqs["samples"]
    planted = (drawn["tokens"][:, :64] == suite["planted"][:64]).all(axis=1)
    assert 25 < planted.sum() < 75  # half of the training samples are the planted text
    per = {
        s: json.loads((out / "steps" / f"step{s}.json").read_text())["per_sequence"]
        for s in (0, 8, 40)
    }
    mem = {s: np.array(per[s]["memorized"]) for s in per}
    assert not mem[0].any()  # the initialisation reproduces nothing
    assert mem[40][planted].all()  # every copy of the planted text, at the last checkpoint
    assert mem[40][~planted].mean() < 0.1  # ordinary man-page text mostly not
    score40 = np.array(per[40]["score"])
    assert score40[planted].min() == 1.0 and score40[~planted].mean() < 0.6
    with open(out / "memorization.csv", newline="") as fh:
        rows = {int(r["step"]): r for r in csv.DictReader(fh)}
    trained = np.array(drawn["trained_step"])
    seen40 = trained <= 40
    # a float64 mean of the same 0/1 scores: rounding ~1e-16
    assert abs(float(rows[40]["memorized"]) - mem[40][seen40].mean()) < 1e-9
    png_is_a_plot(out / "memorization.png")


def test_weights_heat_map_of_norms_and_relative_change(suite, capsys):
    run = suite["run"]
    assert main(["analyze", "weights", "--run", str(run)]) == 0
    assert "median relative change" in capsys.readouterr().out
    out = run / "analysis" / "weights"
    with open(out / "weights.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    params = dict(load_weights(run / "series" / "step8").named_parameters())
    assert len(rows) == len(params) * len(SERIES)
    at8 = {r["param"]: r for r in rows if r["step"] == "8"}
    prev = dict(load_weights(run / "series" / "step4").named_parameters())
    for name, w in params.items():  # recompute two entries from the checkpoints themselves
        # the same float32 reductions recomputed: were their order to differ, log2(n) x 6e-8
        # ~ 1e-6 relative for these n <= 2^14 elements; 1e-4 is two orders above
        assert abs(float(at8[name]["norm"]) - w.norm().item()) < 1e-4 * w.norm().item()
        change = ((w - prev[name]).norm() / prev[name].norm()).item()
        assert abs(float(at8[name]["rel_change"]) - change) < 1e-4 * change
    assert all(r["rel_change"] == "" for r in rows if r["step"] == "0")
    assert all(float(r["rel_change"]) > 0 for r in rows if r["step"] != "0")
    png_is_a_plot(out / "weights.png")


def test_compare_overlays_runs_on_a_flops_axis(suite, tmp_path, capsys):
    other = tmp_path / "lr3e-3"
    ov = [
        o for o in suite["ov"] if not o.startswith(("run_dir=", "trainer.max_steps=", "optim.lr="))
    ]
    ov += [f"run_dir={other}", "trainer.max_steps=6", "optim.lr=3e-3", "checkpoint.series=last"]
    train(compose_config(ov), log=lambda *_: None)
    out = tmp_path / "cmp"
    code = main(
        ["analyze", "compare", str(suite["run"]), str(other), "--x", "flops", "--out", str(out)]
    )
    assert code == 0 and "compare 2 runs" in capsys.readouterr().out
    with open(out / "compare.csv", newline="") as fh:
        pts = list(csv.DictReader(fh))
    per_token = training_flops_per_token(compose_config(suite["ov"]).model, SEQ)
    assert {p["run"] for p in pts} == {"run", "lr3e-3"}
    for p in pts:
        assert float(p["flops"]) == float(p["tokens"]) * per_token
    metrics = {(p["run"], p["metric"]) for p in pts}
    for run in ("run", "lr3e-3"):
        assert {(run, m) for m in ("loss", "grad_norm", "lr", "eval/val/loss")} <= metrics
    lr = [float(p["value"]) for p in pts if p["run"] == "lr3e-3" and p["metric"] == "lr"]
    assert max(lr) == pytest.approx(3e-3)  # the schedule's float64 peak (approx's rel 1e-6)
    png_is_a_plot(out / "compare.png")


def test_report_is_one_self_contained_page(suite, capsys):
    run = suite["run"]
    assert main(["analyze", "report", "--run", str(run)]) == 0
    page = (run / "analysis" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # curves + eval + memorization + weights
    assert 'src="http' not in page and "<link" not in page  # nothing outside the file
    for section in ("Data provenance", "Checkpoint series", "Config", "eval.csv"):
        assert section in page
    assert page.count("<tr>") >= len(SERIES) + 1
    assert "series/step40" in page and "llama3-tiny" in page


def test_scaling_fit_recovers_the_published_fit(tmp_path, capsys):
    """Points from L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28 with 0.5% log-normal noise, 8 sizes x
    8 token counts: every published parameter lies inside the fit's bootstrap interval."""
    true = Fit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    rng = np.random.default_rng(0)
    n = np.repeat(np.geomspace(1e7, 1e10, 8), 8)
    d = np.tile(np.geomspace(1e9, 1e12, 8), 8)
    loss = true.loss(n, d) * np.exp(rng.normal(0, 0.005, n.size))
    pts = tmp_path / "points.csv"
    pts.write_text(
        "params,tokens,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(n, d, loss))
    )
    out = tmp_path / "fit"
    args = ["analyze", "scaling-fit", "--points", str(pts), "--out", str(out), "--json"]
    assert main([*args, "--bootstrap", "40", "--flops", "5.76e23"]) == 0
    fit = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k, v in (("E", 1.69), ("A", 406.4), ("B", 410.7), ("alpha", 0.34), ("beta", 0.28)):
        lo, hi = fit["intervals"][k]
        assert lo <= v <= hi, (k, v, lo, hi)
        assert lo <= fit[k] <= hi
    # compute-optimal split at Chinchilla's budget: C = 6 N D and no better split on that line
    n_opt, d_opt = fit["optimal_params"], fit["optimal_tokens"]
    assert abs(6 * n_opt * d_opt / 5.76e23 - 1) < 1e-9  # closed form in float64: ~1e-16
    f = Fit(*(fit[k] for k in ("E", "A", "B", "alpha", "beta")))
    best = f.loss(n_opt, d_opt)
    for scale in (0.8, 1.25):
        assert f.loss(n_opt * scale, d_opt / scale) > best
    png_is_a_plot(out / "scaling_fit.png")
    assert main(["analyze", "scaling-fit", "--points", str(pts), "--runs", "x"]) == 2


def test_damaged_series_checkpoint_stops_an_analysis_in_one_line(suite, tmp_path, capsys):
    """Every analysis command checks each checkpoint before it starts: one line, exit 2."""
    copy = tmp_path / "run"
    shutil.copytree(suite["run"], copy, ignore=shutil.ignore_patterns("analysis"))
    shard = sorted((copy / "series" / "step16").rglob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:-8])
    for cmd in (["weights"], ["memorization", "--samples", "4"], ["eval", "--data", suite["val"]]):
        assert main(["analyze", cmd[0], "--run", str(copy), *cmd[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and shard.name in err and "step16" in err, err
