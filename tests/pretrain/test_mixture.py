"""`pretrain mixture` (RegMix) on real text: three sources built here from the bundled man pages by
language (English, German, Japanese: byte-level tokens, so the three differ in what the model must
learn), a swarm of 8 tiny proxies trained in this process one after another, the fit, the chosen
mixture's own run, and the swarm overlay of `analyze compare`.

* the draws are numpy's Dirichlet(concentration x natural token proportions) with the sweep's
  seed, the natural proportions counted here from the documents written;
* every proxy's data order (rebuilt step by step as `analyze batch` does, hash-checked against
  what training logged) holds each source's share of the run within one sample;
* the fit's out-of-fold predictions of the linear model equal a leave-one-out least squares done
  here with numpy; its Spearman is scipy's of fit.csv and is printed; the optimum respects the
  constraints; mixture.yaml is read as it is by `pretrain train` and by `pretrain data`'s mixer;
* the chosen mixture's run reaches a target loss at most the median proxy's.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from configcore import ConfigError
from pretrain.analysis.common import load_run, read_order_log
from pretrain.cli import main
from pretrain.config import compose_config, load_yaml
from pretrain.data.loader import batch_sha, build_data_order, global_batch
from pretrain.mixture import final_eval, plan_sweep, run_local
from pretrain.train import train
from tests.pretrain.helpers import EOS, SAMPLES, tiny_overrides, write_megatron

LANGS = ("en", "de", "ja")
N_PROXIES, STEPS, SEQ, GB = 8, 16, 32, 8  # tiny_overrides' seq_len and global batch
CONCENTRATION, SEED = 1.0, 0
MAX_EN = 0.8  # the fit's --max-weight for English: the constraint must shape the optimum


def man_docs(lang: str, start: int, n: int, max_bytes: int = 1500) -> list[np.ndarray]:
    out = []
    with gzip.open(SAMPLES.parent / f"manpages_{lang}.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < start:
                continue
            if len(out) == n:
                break
            raw = json.loads(line)["text"].encode("utf-8")[:max_bytes]
            out.append(np.frombuffer(raw, dtype=np.uint8).astype(np.uint16) + 1)
    return out


def base_overrides() -> list[str]:
    """tiny_overrides without what the sweep sets per proxy (data, run_dir)."""
    skip = ("data.paths", "run_dir")
    ov = tiny_overrides("unused", [], steps=STEPS, **{"trainer.micro_batch_size": GB})
    ov = [o for o in ov if o.split("=", 1)[0] not in skip]
    # validation every 8 steps on 2048 tokens of each held-out source: curves for the overlay
    return [*ov, "eval.interval=8", "eval.max_tokens=2048"]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixture")
    sources, val, tokens = {}, {}, {}
    n_train = {"en": 14, "de": 12, "ja": 10}  # unequal, so the natural proportions are too
    for lang in LANGS:
        docs = man_docs(lang, 0, n_train[lang])
        write_megatron(str(d / f"train/{lang}/man"), docs)
        write_megatron(str(d / f"val/{lang}/man"), man_docs(lang, 14, 4))
        sources[lang], val[lang] = str(d / f"train/{lang}"), str(d / f"val/{lang}")
        tokens[lang] = sum(len(x) + 1 for x in docs)  # each document and its EOS
    match = {lang: f"manpages-{lang}" for lang in LANGS}  # the documents' `source` field
    sweep = plan_sweep(
        base_overrides(), sources, val, ["en"], N_PROXIES, CONCENTRATION, SEED, d / "sweep", match
    )
    run_local(sweep)
    return {"dir": d, "sweep": sweep, "tokens": tokens, "val": val, "sources": sources}


@pytest.fixture(scope="module")
def fitted(swarm):
    sweep_dir = swarm["dir"] / "sweep"
    argv = ["mixture", "fit", "--sweep", str(sweep_dir), "--target", "en"]
    argv += ["--max-weight", f"en={MAX_EN}", "--max-epochs", "8", "--bootstrap", "40"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    out = buf.getvalue()
    print(out)  # the closing note: Spearman, proposed weights, predicted loss
    fit = json.loads((sweep_dir / "fit" / "fit.json").read_text())
    return {"fit": fit, "out": out, "fit_dir": sweep_dir / "fit"}


def test_draws_are_dirichlet_around_the_natural_proportions(swarm):
    sweep = swarm["sweep"]
    counted = np.array([swarm["tokens"][lang] for lang in LANGS], dtype=np.float64)
    natural = counted / counted.sum()
    # fp64 division of the same integers: the two agree to roundoff
    assert np.allclose(sweep["natural"], natural, rtol=0, atol=1e-15)
    expected = np.random.default_rng(SEED).dirichlet(CONCENTRATION * natural, size=N_PROXIES)
    # the same Generator stream from the same alpha (equal to 1e-15): roundoff of the alphas only
    assert np.allclose([p["drawn"] for p in sweep["proxies"]], expected, rtol=1e-12, atol=1e-14)
    with open(swarm["dir"] / "sweep" / "weights.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["en"]) for r in rows] == [p["weights"][0] for p in sweep["proxies"]]
    # the proxies share everything but their data and folder
    configs = [load_yaml(f"{p['run_dir']}/config.yaml") for p in sweep["proxies"]]
    for c in configs[1:]:
        for key in ("model", "optim", "schedule", "trainer"):
            assert c[key] == configs[0][key]


def test_every_proxy_trains_on_the_mixture_it_was_given(swarm):
    """Each proxy mixes its N = STEPS x GB samples in one block (data.mix_block = N): source s
    gets round(w_s N) samples by largest remainder, so |samples_s - w_s N| < 1 and its label
    tokens (SEQ per sample) lie within SEQ of w_s x N x SEQ, the drawn share of the run's tokens."""
    n = STEPS * GB
    for p in swarm["sweep"]["proxies"]:
        run = load_run(p["run_dir"])
        order = build_data_order(run)  # the order as `analyze batch` rebuilds it
        names = [next(k for k, v in swarm["sources"].items() if v == s.name) for s in order.sources]
        counts = dict.fromkeys(LANGS, 0)
        log = read_order_log(p["run_dir"])
        assert sorted(log) == list(range(1, STEPS + 1))
        for step, rec in log.items():
            start, end = rec["samples"]
            _, samples = global_batch(order, start, end)
            # the rebuilt batch is what training consumed: it hashes to what training logged
            tokens = torch.from_numpy(np.stack([s.tokens for s in samples]))
            r0, r1 = rec["rank0_samples"]
            assert batch_sha(tokens[r0 - start : r1 - start]) == rec["rank0_sha"], (p["id"], step)
            for smp in samples:
                counts[names[smp.source]] += SEQ
        for i, lang in enumerate(LANGS):
            assert abs(counts[lang] - p["drawn"][i] * n * SEQ) < SEQ, (p["id"], lang, counts)
            assert counts[lang] == p["quotas"][i] * SEQ
        # a source whose share rounds to no sample is absent from that proxy's data
        assert len(run.data.paths) == sum(q > 0 for q in p["quotas"])
        assert final_eval(p["run_dir"]).keys() == set(LANGS)


def test_fit_cross_validation_and_constrained_optimum(swarm, fitted):
    fit, fit_dir = fitted["fit"], fitted["fit_dir"]
    with open(fit_dir / "fit.csv") as fh:
        rows = list(csv.DictReader(fh))
    X = np.array([[float(r[lang]) for lang in LANGS] for r in rows])
    y = np.array([float(r["observed"]) for r in rows])
    for r, p in zip(rows, swarm["sweep"]["proxies"]):  # the observed loss is the proxy's last
        assert float(r["observed"]) == final_eval(p["run_dir"])["en"]
    # the linear model's leave-one-out predictions, by numpy's least squares with an intercept
    # (min-norm: the weights sum to 1, so the intercept column is their sum; predictions are
    # unique all the same). fp64 solves of an 8 x 4 system: equal to 1e-9
    A = np.hstack([np.ones((len(y), 1)), X])
    loo = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef = np.linalg.lstsq(A[keep], y[keep], rcond=None)[0]
        loo.append(A[i] @ coef)
    assert np.allclose([float(r["cv_linear"]) for r in rows], loo, rtol=0, atol=1e-9)
    for kind in ("linear", "lightgbm"):
        pred = np.array([float(r[f"cv_{kind}"]) for r in rows])
        rho = fit["spearman"][kind]
        if np.ptp(pred) > 0:
            assert rho == pytest.approx(spearmanr(pred, y).statistic, abs=1e-12)  # the same call
        else:
            assert math.isnan(rho)
    print(f"CV Spearman: {fit['spearman']}; proposed weights {fit['mixture']}")
    assert "out-of-fold Spearman linear" in fitted["out"]
    w = np.array([fit["weights"][lang] for lang in LANGS])
    assert w.sum() == pytest.approx(1, abs=1e-12)  # a mean of points of the simplex
    assert w[0] <= MAX_EN + 1e-12  # the --max-weight bound holds (a mean of feasible points)
    for lang in LANGS:
        a, b = fit["interval_95"][lang]
        assert 0 <= a <= b <= 1
    with open(fit_dir / "sensitivity.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 21 * len(LANGS)
    assert (fit_dir / "fit.png").stat().st_size > 0 and (fit_dir / "sensitivity.png").exists()


def test_mixture_file_is_read_by_train_and_by_the_data_mixer(swarm, fitted):
    from data_pipeline.config import compose_pipeline

    fit, path = fitted["fit"], fitted["fit_dir"] / "mixture.yaml"
    chosen = {k: v for k, v in fit["mixture"].items() if v > 0}
    run = compose_config([f"mixture={path}", "model.vocab_size=260", f"model.eos_token_id={EOS}"])
    assert run.data.paths == [swarm["sources"][k] for k in chosen]
    assert run.data.weights == list(chosen.values())
    pc = compose_pipeline(
        [f"mixture={path}", f"input.paths=[{SAMPLES}]", f"output.dir={swarm['dir'] / 'pipe'}"],
        "tokenize_only",
    )
    assert [s.match for s in pc.mixer.sources] == [f"manpages-{lang}" for lang in LANGS]
    assert [s.weight for s in pc.mixer.sources] == list(fit["mixture"].values())
    assert pc.mixer.total_tokens == fit["tokens"]
    with pytest.raises(ConfigError, match="given on the command line and by mixture="):
        compose_config([f"mixture={path}", "data.weights=[1.0]"])


def test_chosen_mixture_run_is_at_least_as_good_as_the_median_proxy(swarm, fitted, tmp_path):
    fit = fitted["fit"]
    run_dir = swarm["dir"] / "chosen"
    val = swarm["val"]
    ov = [
        *base_overrides(),
        f"mixture={fitted['fit_dir'] / 'mixture.yaml'}",
        f"eval.paths=[{','.join(val.values())}]",
        f"eval.names=[{','.join(val)}]",
        f"run_dir={run_dir}",
    ]
    train(compose_config(ov), log=lambda *_: None)
    chosen = final_eval(run_dir)["en"]
    median = float(np.median(fit["observed"]))
    print(
        f"chosen mixture {fit['mixture']}: target loss {chosen:.4f}; proxies median {median:.4f}, "
        f"best {min(fit['observed']):.4f}"
    )
    assert chosen <= median

    # the swarm overlay, with the chosen run beside the proxies
    out = tmp_path / "compare"
    argv = ["analyze", "compare", str(run_dir), "--sweep", str(swarm["dir"] / "sweep")]
    assert main([*argv, "--color-by", "en", "--out", str(out)]) == 0
    with open(out / "swarm.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_run = {p["run_dir"].rsplit("/", 1)[1]: p["weights"][0] for p in swarm["sweep"]["proxies"]}
    for r in rows:  # each point carries its run's weight of en; the chosen run none
        want = by_run.get(r["run"], "")
        assert (float(r["weight_en"]) if r["weight_en"] else "") == want
    finals = {r["run"]: float(r["value"]) for r in rows if r["metric"] == "eval/en/loss"}
    assert finals["chosen"] == chosen
    assert (out / "swarm.png").stat().st_size > 0


def test_sweep_refuses_what_it_sets_itself(tmp_path):
    src = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}
    with pytest.raises(ConfigError, match="is not a validation source"):
        plan_sweep([], src, {}, ["a"], 4, 1.0, 0, tmp_path / "s")
    with pytest.raises(ConfigError, match="set by the sweep for each proxy"):
        plan_sweep(["data.weights=[1,2]"], src, {"a": src["a"]}, ["a"], 4, 1.0, 0, tmp_path / "s")
