"""Loss spikes (pretrain/spikes.py) on real text with a planted poison: a block of documents of
random tokens placed in the man-page stream so that it fills the batches of steps P and P+1
(data.shuffle=false: sample j is window j of the stream), trained at a large learning rate.

* detection (spike.action=log, a two-source mixture): the spike is flagged at step P and not
  before, the planted documents are named first, the per-sequence losses average to the loss
  training logged, and the per-source training loss equals one process's plain forward of the
  step-(P-1) weights on that batch;
* rollback and skip: the run returns to its step-10 checkpoint, skips the K planted batches and
  from then on is bitwise the run whose stream never held them (the unpoisoned run, whose batches
  after P are the skipped run's); `analyze batch` rebuilds what the engine received; a run that
  rolls back from a host snapshot, is stopped after the rollback and resumed is bitwise the same;
* after spike.max_rollbacks the next spike stops the run with the reason;
* under TP2 x DP2 (4 processes) and PP2 (2) the same spikes, the same rollbacks, decided alike
  on every rank.
"""

import csv
import gzip
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configcore import ConfigError
from pretrain.analysis.batch import batch_of_step
from pretrain.callbacks import Callback
from pretrain.checkpoint import load_weights, read_index
from pretrain.config import compose_config
from pretrain.spikes import SpikeStop, robust_z
from pretrain.train import Trainer
from tests.pretrain.helpers import SAMPLES, read_metrics, run_cli, tiny_overrides, write_npy

P, K, STEPS = 12, 2, 18  # the poison fills the batches of steps P..P+K-1
SEQ, GB = 32, 8  # tiny_overrides' sequence length and global batch
LR = "1e-2"  # large for this model: the poisoned updates do visible damage


def man_docs(lang: str, n: int, max_bytes: int = 1500) -> list[np.ndarray]:
    out = []
    with gzip.open(SAMPLES.parent / f"manpages_{lang}.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            if len(out) == n:
                break
            raw = json.loads(line)["text"].encode("utf-8")[:max_bytes]
            out.append(np.frombuffer(raw, dtype=np.uint8).astype(np.uint16) + 1)
    return out


def plant(real: list[np.ndarray], start: int, length: int, n_docs: int, seed: int = 0):
    """Documents whose packed stream (one EOS after each) holds `n_docs` documents of uniform
    random tokens 1..256 at stream tokens [start, start + length); the same stream without them;
    and the planted document ids. The first planted token is the clean stream's token at `start`,
    so every window ending there is the same in both streams."""
    pre, total, rest = [], 0, list(real)
    while total + len(rest[0]) + 1 < start:
        d = rest.pop(0)
        pre.append(d)
        total += len(d) + 1
    pre.append(rest.pop(0)[: start - total - 1])
    rng = np.random.default_rng(seed)
    poison = [
        rng.integers(1, 257, size=length // n_docs - 1).astype(np.uint16) for _ in range(n_docs)
    ]
    poison[0][0] = rest[0][0]
    ids = list(range(len(pre), len(pre) + n_docs))
    return pre + poison + rest, pre + rest, ids


class Batches(Callback):
    """The inputs handed to the engine at each step (the last time the step was trained)."""

    def __init__(self):
        self.inputs = {}

    def on_batch(self, state, batch, sample_range):
        self.inputs[state.step + 1] = batch["inputs"].clone()


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            state.request_stop("test")


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("spikes")
    en = man_docs("en", 60)
    # single source: step s reads stream tokens [256 (s-1), 256 s]; mixture (mix_block = the
    # batch, weights 1:1): each step reads 4 English samples, stream tokens [128 (s-1), 128 s]
    one, clean, one_ids = plant(en, SEQ * GB * (P - 1), SEQ * GB * K, n_docs=4 * K)
    mix, _, mix_ids = plant(en, SEQ * GB // 2 * (P - 1), SEQ * GB // 2 * K, n_docs=2 * K)
    paths = {
        "one": write_npy(str(d / "one/en.npy"), one),
        "clean": write_npy(str(d / "clean/en.npy"), clean),
        "mix": write_npy(str(d / "mix/en.npy"), mix),
        "fr": write_npy(str(d / "fr/fr.npy"), man_docs("fr", 60)),
    }

    def ov(name, data, **extra):
        o = {
            "data.format": "npy",
            "data.shuffle": "false",
            "optim.lr": LR,
            "spike.min_steps": 5,
            "checkpoint.interval": 10,
            "checkpoint.keep_last": 0,
            **extra,
        }
        return tiny_overrides(d / name, data, steps=STEPS, **o)

    rollback = {"spike.action": "rollback", "spike.skip_batches": K}
    series = {"checkpoint.series": "'steps:[11,12]'", "checkpoint.series_dtype": "float32"}
    out = {"dir": d, "ov": ov, "paths": paths, "one_ids": one_ids, "mix_ids": mix_ids}
    mix_ov = ov(
        "mix",
        [paths["mix"], paths["fr"]],
        **{"data.mix_block": GB, "checkpoint.series": f"'steps:[{P - 1}]'"},
        **{"trainer.tensorboard": "true"},
        **{"checkpoint.series_dtype": "float32"},
    )
    out["mix"] = Trainer(compose_config(mix_ov), log=quiet).fit()
    clean_ov = ov("clean", [paths["clean"]], **rollback, **series)
    out["clean"] = Trainer(compose_config(clean_ov), log=quiet).fit()
    seen = Batches()
    lines: list[str] = []
    b_ov = ov("rollback", [paths["one"]], **rollback, **series)
    out["rollback"] = Trainer(compose_config(b_ov), [seen], log=lines.append).fit()
    out["seen"], out["lines"], out["rollback_cfg"] = seen, lines, rollback
    return out


def spikes(run_dir):
    return [json.loads(x) for x in (run_dir / "spikes.jsonl").read_text().splitlines() if x]


def test_robust_z_is_the_standardised_change():
    # changes 1, 2, 1, 2 (median 1.5, MAD 0.5); a change of 1.5 + 3 x 1.4826 x 0.5 is z 3
    z, med, sigma = robust_z([0.0, 1.0, 3.0, 4.0, 6.0], 6.0 + 1.5 + 3 * 1.4826 * 0.5)
    # float64 arithmetic on exact inputs: a few roundings of 1.1e-16
    assert (med, sigma) == (1.5, 1.4826 * 0.5) and z == pytest.approx(3.0, rel=1e-12)
    assert robust_z([1.0, 2.0, 3.0], 9.0)[0] is None  # equal changes: no spread, no verdict


def test_spike_flagged_at_the_planted_step_with_its_documents_first(runs):
    d = runs["dir"] / "mix"
    recs = spikes(d)
    assert recs[0]["step"] == P and recs[0]["action"] == "log" and recs[0]["trigger"] == ["loss"]
    print(
        f"spike at step {P}: loss {recs[0]['previous_loss']:.4f} -> {recs[0]['loss']:.4f}, "
        f"z {recs[0]['z_loss']:.1f}; grad norm z {recs[0]['z_grad_norm']:.1f}"
    )
    assert recs[0]["z_loss"] > 6.0  # the default threshold, not only the test's
    # the planted documents of step P (the first two) and of P+1 (the next two), first
    for rec, planted in zip(recs[:2], (runs["mix_ids"][:2], runs["mix_ids"][2:])):
        top = rec["documents"][: len(planted)]
        assert {(x["source"], x["doc"]) for x in top} == {("en", i) for i in planted}, top
        assert all(s["source"] == "en" for s in rec["sequences"][:4])  # the poisoned rows
    assert recs[1]["step"] == P + 1
    logged = {m["step"]: m for m in read_metrics(d)}
    # per-sequence losses of the training forward average to the logged loss: float32 sums of
    # 256 token losses (the engine) against float64 ones, rounding <= 256 x 2^-24 relative
    for rec in recs[:2]:
        loss = logged[rec["step"]]["loss"]
        assert abs(rec["batch_loss"] - loss) <= 256 * 2**-24 * loss, (rec["batch_loss"], loss)


def test_per_source_training_loss_is_a_plain_forward_of_the_weights(runs):
    """loss/<source> at step P equals one process's model of the step-(P-1) weights (the series
    checkpoint, fp32) on the batch of step P as `analyze batch` rebuilds it, split by source."""
    d = runs["dir"] / "mix"
    rec = next(m for m in read_metrics(d) if m["step"] == P)
    b = batch_of_step(d, P)
    tokens = torch.from_numpy(b["tokens"])
    model = load_weights(d / "series" / f"step{P - 1}").eval()
    with torch.no_grad():
        ce = F.cross_entropy(
            model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten(), reduction="none"
        ).view(len(tokens), -1)
    for i, name in enumerate(["en", "fr"]):
        ref = ce[torch.from_numpy(b["source"] == i)].mean().item()
        # float32 logits of another micro-batch grouping (8 rows vs 2): ulp-level differences
        # in each cross-entropy, <= 1e-6 relative in a mean; 1e-5 an order above
        assert abs(rec[f"loss/{name}"] - ref) <= 1e-5 * ref, (name, rec[f"loss/{name}"], ref)
    # the spike is the English source's: its loss, not the French one's, jumped
    prev = next(m for m in read_metrics(d) if m["step"] == P - 1)
    assert rec["loss/en"] - prev["loss/en"] > 10 * abs(rec["loss/fr"] - prev["loss/fr"])
    # sources weighted by their tokens (4 sequences each) give the step's loss, float32 bound
    assert abs((rec["loss/en"] + rec["loss/fr"]) / 2 - rec["loss"]) <= 256 * 2**-24 * rec["loss"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(d / "tensorboard"))
    acc.Reload()
    logged = {m["step"]: m for m in read_metrics(d) if "loss" in m}
    for name in ("en", "fr"):
        tb = {e.step: e.value for e in acc.Scalars(f"train/loss/{name}")}
        assert sorted(tb) == sorted(logged)  # every log step
        for step, value in tb.items():  # TensorBoard stores float32
            assert value == pytest.approx(logged[step][f"loss/{name}"], rel=2**-23)


def test_rollback_skips_the_planted_batches_and_is_the_unpoisoned_run(runs, capsys):
    """The unpoisoned run has the same settings (rollback on): the batch that follows the planted
    ones is a hard one of its own (a gcloud page's capitals, z ~6.5 at step P), which both runs
    flag and skip alike; every other step is the same computation on the same tokens."""
    d, clean = runs["dir"] / "rollback", runs["dir"] / "clean"
    recs, ref = spikes(d), spikes(clean)
    rec = recs[0]
    assert rec["step"] == P and rec["action"] == "rollback" and rec["rollback_to"] == 10
    assert rec["skipped_samples"] == [GB * (P - 1), GB * (P - 1 + K)] and rec["ranks_agree"]
    planted = set(runs["one_ids"][:4])  # step P reads the first four planted documents
    assert {x["doc"] for x in rec["documents"][:4]} == planted
    assert any(
        f"spike at step {P}:" in line and "rolled back to step 10" in line for line in runs["lines"]
    )
    # past the planted batches the two runs flag the same batches of the same text
    shifted = [[a - GB * K, b - GB * K] for a, b in (r["samples"] for r in recs[1:])]
    assert shifted == [r["samples"] for r in ref]
    assert [r["loss"] for r in recs[1:]] == [r["loss"] for r in ref]
    # from the step-10 checkpoint the run re-trains 11, then trains P.. on the batches after the
    # planted ones: the same tokens as the run whose stream never held them, so the same bits
    assert runs["rollback"]["losses"] == runs["clean"]["losses"]
    assert sorted(runs["rollback"]["losses"]) == list(range(1, STEPS + 1))
    order = [json.loads(x) for x in (d / "data_order.jsonl").read_text().splitlines()]
    clean_order = [json.loads(x) for x in (clean / "data_order.jsonl").read_text().splitlines()]
    assert [r["step"] for r in order] == list(range(1, STEPS + 1))
    for mine, theirs in zip(order[P - 1 :], clean_order[P - 1 :]):
        assert mine["samples"][0] == theirs["samples"][0] + GB * K
    assert order[P - 1]["skipped_samples"] == [GB * (P - 1), order[P - 1]["samples"][0]]
    # analyze batch returns what step P really trained on: the engine's inputs, the clean batch
    got = batch_of_step(d, P)
    assert torch.equal(torch.from_numpy(got["tokens"][:, :-1]), runs["seen"].inputs[P])
    assert np.array_equal(got["tokens"], batch_of_step(clean, P)["tokens"])
    assert not set(got["doc_ids"].ravel().tolist()) & set(runs["one_ids"])
    from pretrain.cli import main

    assert main(["analyze", "batch", "--run", str(d), "--step", str(P), "--show", "0"]) == 0
    a, b = order[P - 1]["samples"]
    shown = capsys.readouterr().out
    assert f"step {P}: global samples {a}..{b - 1}" in shown
    assert f"samples {GB * (P - 1)}..{a - 1} of the order were skipped before it" in shown
    # the series steps are the ones asked for, and hold the unpoisoned run's weights
    assert sorted(e["step"] for e in read_index(d) if e["kind"] == "weights") == [11, 12]
    a, b = load_weights(d / "series/step12"), load_weights(clean / "series/step12")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_snapshot_rollback_stopped_and_resumed_is_bitwise_the_same(runs):
    """Rollback from a host-memory snapshot (spike.snapshot_interval=1: step P-1's, no replay),
    a stop two steps after it and resume=auto: the losses are bitwise the uninterrupted run's."""
    ov = runs["ov"](
        "snapshot",
        [runs["paths"]["one"]],
        **{"spike.action": "rollback", "spike.skip_batches": K, "spike.snapshot_interval": 1},
    )
    first = Trainer(compose_config(ov), [StopAt(P + 2)], log=quiet).fit()
    assert first["step"] == P + 2
    rec = spikes(runs["dir"] / "snapshot")[0]
    assert rec["restored_from"] == "host snapshot" and rec["rollback_to"] == P - 1
    second = Trainer(compose_config(ov + ["resume=auto"]), log=quiet).fit()
    losses = {**first["losses"], **second["losses"]}
    assert losses == runs["rollback"]["losses"]
    # the resumed run skips the batches too: its spikes are the uninterrupted run's
    assert [r["step"] for r in spikes(runs["dir"] / "snapshot")] == [
        r["step"] for r in spikes(runs["dir"] / "rollback")
    ]


def test_found_at_a_later_log_step_under_nan_check_log_the_same_run(runs):
    """trainer.nan_check=log, log_interval=5: the spikes of step 12 are scored at step 15 (the
    steps between trained on the damaged weights), the rollback discards them: the same run."""
    ov = runs["ov"](
        "nan_log",
        [runs["paths"]["one"]],
        **runs["rollback_cfg"],
        **{"trainer.nan_check": "log", "trainer.log_interval": 5},
    )
    out = Trainer(compose_config(ov), log=quiet).fit()
    assert out["losses"] == runs["rollback"]["losses"]
    recs = spikes(runs["dir"] / "nan_log")
    assert [(r["step"], r["rollback_to"]) for r in recs] == [(P, 10)] * len(recs) and recs


def test_a_spike_after_max_rollbacks_stops_the_run(runs):
    # skipping one batch leaves the second planted one: a second spike, past max_rollbacks=1
    ov = runs["ov"](
        "stop",
        [runs["paths"]["one"]],
        **{"spike.action": "rollback", "spike.skip_batches": 1, "spike.max_rollbacks": 1},
    )
    lines: list[str] = []
    with pytest.raises(SpikeStop, match=r"1 rollbacks already \(spike.max_rollbacks\)"):
        Trainer(compose_config(ov), log=lines.append).fit()
    said = [line for line in lines if line.startswith("spike at step")]
    assert "rolled back to step 10" in said[0] and "the run stops" in said[1]
    recs = spikes(runs["dir"] / "stop")
    assert [(r["step"], r["action"]) for r in recs] == [(P, "rollback"), (P, "stop")]
    assert max(e["step"] for e in read_index(runs["dir"] / "stop")) == P - 1  # last good state


def test_rollback_needs_a_state_to_return_to():
    with pytest.raises(ConfigError, match="spike.action=rollback needs a state to return to"):
        compose_config(["spike.action=rollback", "checkpoint.interval=0"])


@pytest.mark.parametrize(
    "layout",
    [
        ("tp2_dp2", 4, ["parallel.tp=2", "parallel.dp_shard=2"]),
        # the first stage records no losses: it must still join every gather
        ("pp2", 2, ["parallel.pp=2"]),
    ],
    ids=lambda x: x[0],
)
def test_same_spike_and_decision_on_every_rank(runs, layout):
    name, nproc, extra = layout
    run_dir = runs["dir"] / name
    ov = runs["ov"](name, [runs["paths"]["one"]], **runs["rollback_cfg"]) + extra
    res = run_cli(["train", *ov], nproc=nproc, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    recs, refs = spikes(run_dir), spikes(runs["dir"] / "rollback")
    assert len(recs) == len(refs)
    for rec, ref in zip(recs, refs):
        assert rec["ranks"] == nproc and rec["ranks_agree"]
        for key in ("step", "action", "rollback_to", "skipped_samples", "trigger"):
            assert rec[key] == ref[key], key
        top = [x["doc"] for x in rec["documents"][:4]]
        assert top == [x["doc"] for x in ref["documents"][:4]]
    got = {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}
    for step, loss in runs["rollback"]["losses"].items():
        # float32 under TP2 x DP2 against one process: partial sums in another order, ulp-level
        # logits, <= 1e-6 relative in a mean loss; 1e-5 an order above
        assert abs(got[step] - loss) <= 1e-5 * loss, (step, got[step], loss)


def test_analyze_spikes_table_plot_and_curve_markers(runs, capsys, monkeypatch):
    from pretrain.analysis import compare
    from pretrain.analysis import spikes as analyze_spikes
    from pretrain.cli import main

    d = runs["dir"] / "mix"
    assert main(["analyze", "spikes", "--run", str(d), "--docs", "2"]) == 0
    out = capsys.readouterr().out
    recs = spikes(d)
    assert f"{len(recs)} spike(s)" in out and f"en doc {runs['mix_ids'][0]} " in out
    with open(d / "analysis/spikes/spikes.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(int(r["step"]), int(r["doc"])) for r in table[:2]] == [
        (P, recs[0]["documents"][0]["doc"]),
        (P, recs[0]["documents"][1]["doc"]),
    ]
    assert (d / "analysis/spikes/spikes.png").stat().st_size > 0
    # the compare / report curves carry a red x at each spike's loss and grad norm
    figs = []
    monkeypatch.setattr(compare, "save_figure", lambda fig, path: figs.append(fig) or path)
    monkeypatch.setattr(analyze_spikes, "save_figure", lambda fig, path: figs.append(fig) or path)
    compare.plot(compare.run_points(d), "step", d / "unused.png")
    analyze_spikes.plot(d, recs, d / "unused.png")
    (loss_ax, _, gnorm_ax, _), (own_loss, own_gnorm) = figs[0].axes, figs[1].axes
    for ax, key in (
        (loss_ax, "loss"),
        (gnorm_ax, "grad_norm"),
        (own_loss, "loss"),
        (own_gnorm, "grad_norm"),
    ):
        (marks,) = [ln for ln in ax.lines if ln.get_label().endswith("spike")]
        assert list(marks.get_xdata()) == [r["step"] for r in recs]
        assert list(marks.get_ydata()) == [r[key] for r in recs]
