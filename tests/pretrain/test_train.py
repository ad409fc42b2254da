"""`pretrain train` in one process: exact resume, the recorded data order, metrics, checkpoints."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from pretrain.analysis.batch import batch_of_step
from pretrain.callbacks import Callback
from pretrain.checkpoint import find_latest_complete, read_index, verify_checkpoint
from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.train import TrainingDiverged, train
from tests.pretrain.helpers import documents, read_metrics, run_cli, tiny_overrides, write_megatron


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    write_megatron(str(d / "en/man"), documents(60, max_bytes=1500), per_shard=25)
    write_megatron(str(d / "de/man"), documents(30, start=200, max_bytes=1500))
    return [str(d / "en"), str(d / "de")]


class OnBatch(Callback):
    """Calls fn(step, batch, sample_range) with every local batch, before its forward."""

    def __init__(self, fn):
        self.fn = fn

    def on_batch(self, state, batch, sample_range):
        self.fn(state.step + 1, batch, sample_range)


class StopAfter(Callback):
    """Ends the run after `step` as a preemption would (a full checkpoint is written there)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step >= self.step:
            state.request_stop("test")


def overrides(run_dir, data, steps, **extra):
    base = {"data.weights": "[0.75,0.25]", "data.mix_block": 16}
    base.update(extra)
    return tiny_overrides(run_dir, data, steps=steps, **base)


def test_exact_resume_is_bitwise(tmp_path, data):
    """20 steps straight == 10 steps, stop, resume in a new process for 10: every loss bitwise."""
    straight = train(compose_config(overrides(tmp_path / "a", data, 20)), log=lambda *_: None)
    assert straight["step"] == 20
    first = train(
        compose_config(overrides(tmp_path / "b", data, 20, **{"checkpoint.interval": 5})),
        callbacks=[StopAfter(10)],
        log=lambda *_: None,
    )
    assert first["step"] == 10
    res = run_cli(
        ["train", *overrides(tmp_path / "b", data, 20, **{"checkpoint.interval": 5}), "resume=auto"]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout and "step_0000010" in res.stdout
    resumed = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "b")}
    assert sorted(resumed) == list(range(1, 21))
    for step in range(1, 21):
        assert resumed[step] == straight["losses"][step], f"step {step} differs"
    assert straight["losses"][20] < straight["losses"][1] - 0.5  # it does learn


def test_analyze_batch_is_what_training_consumed(tmp_path, data, capsys):
    seen = {}
    train(
        compose_config(overrides(tmp_path / "r", data, 4)),
        log=lambda *_: None,
        callbacks=[OnBatch(lambda step, batch, rng: seen.__setitem__(step, (batch, rng)))],
    )
    for step in (1, 3, 4):
        got = batch_of_step(tmp_path / "r", step)
        batch, rng = seen[step]
        assert tuple(got["samples"][[0, -1]]) == (rng[0], rng[1] - 1)
        np.testing.assert_array_equal(got["tokens"][:, :-1], batch["inputs"].numpy())
        np.testing.assert_array_equal(got["tokens"][:, 1:], batch["labels"].numpy())
        np.testing.assert_array_equal(got["doc_ids"][:, :-1], batch["document_ids"].numpy())
    # both sources appear with provenance (the 0.75/0.25 mixture over 16-sample blocks)
    srcs = np.concatenate([batch_of_step(tmp_path / "r", s)["source"] for s in (1, 2, 3, 4)])
    assert (srcs == 0).sum() == 24 and (srcs == 1).sum() == 8
    out = tmp_path / "b3.npz"
    assert (
        main(["analyze", "batch", "--run", str(tmp_path / "r"), "--step", "3", "--out", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "hash verified" in text and "man-0000#" in text
    saved = np.load(out)
    np.testing.assert_array_equal(saved["tokens"][:, :-1], seen[3][0]["inputs"].numpy())
    # a changed data file is detected rather than silently giving other tokens
    run_cfg = tmp_path / "r" / "data_order.jsonl"
    lines = run_cfg.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["rank0_sha"] = "0" * 16
    run_cfg.write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")
    assert main(["analyze", "batch", "--run", str(tmp_path / "r"), "--step", "1"]) == 2
    assert "does not hash" in capsys.readouterr().err


def test_metrics_index_series_and_retention(tmp_path, data):
    ov = overrides(
        tmp_path / "m",
        data,
        8,
        **{
            "checkpoint.interval": 2,
            "checkpoint.keep_last": 2,
            "checkpoint.keep_every": 4,
            "checkpoint.series": "first+log2:4",
            "checkpoint.series_dtype": "bfloat16",
            "trainer.log_interval": 2,
        },
    )
    train(compose_config(ov), log=lambda *_: None)
    run_dir = tmp_path / "m"
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [2, 4, 6, 8]
    for m in metrics:
        for key in (
            "loss",
            "grad_norm",
            "lr",
            "tokens_per_s",
            "tokens_per_s_per_device",
            "mfu",
            "mem_rss_gb",
            "tokens",
        ):
            assert key in m
        assert m["mfu"] is None  # CPU: no peak in the table, so no made-up MFU
        assert m["tokens"] == m["step"] * 8 * 32
    assert (run_dir / "config.yaml").exists()
    idx = read_index(run_dir)
    full = [e["step"] for e in idx if e["kind"] == "full"]
    assert full == [4, 6, 8]  # keep_last=2 (6, 8) + keep_every=4 (4); 2 was removed
    assert not (run_dir / "checkpoints" / "step_0000002").exists()
    weights = [e for e in idx if e["kind"] == "weights"]
    assert [e["step"] for e in weights] == [0, 1, 2, 4]
    for e in idx:
        path = run_dir / e["path"]
        assert verify_checkpoint(path) is None
        manifest = json.loads((path / "manifest.json").read_text())
        assert (
            e["bytes"]
            == manifest["bytes"]
            == sum(
                f.stat().st_size
                for f in path.rglob("*")
                if f.is_file() and f.name != "manifest.json"
            )
        )
    # bf16 series is about half the fp32 weights in the full checkpoint's model part
    from pretrain.checkpoint import load_weights

    w4 = load_weights(run_dir / "series/step4")
    f4 = load_weights(run_dir / "checkpoints/step_0000004")
    for (n, a), (_, b) in zip(w4.state_dict().items(), f4.state_dict().items()):
        assert torch.equal(a, b.to(torch.bfloat16).float()), n


def test_resume_auto_skips_incomplete_and_corrupted(tmp_path, data, capsys):
    run_dir = tmp_path / "c"
    ov = overrides(run_dir, data, 6, **{"checkpoint.interval": 2, "checkpoint.keep_last": 0})
    train(compose_config(ov), log=lambda *_: None)
    ck = run_dir / "checkpoints"
    # step 6: flip one byte of a shard (same size: only the checksum can tell)
    shard = next((ck / "step_0000006").glob("*.distcp"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    # step 4: a save that never finished its manifest
    (ck / "step_0000004" / "manifest.json").unlink()
    # and an interrupted save still under its temporary name
    shutil.copytree(ck / "step_0000002", ck / "step_0000008.tmp")
    reports = []
    assert find_latest_complete(run_dir, "checksum", report=reports.append) == ck / "step_0000002"
    text = "\n".join(reports)
    assert "step_0000008.tmp" in text and "sha256" in text and "no manifest.json" in text
    # resume=auto goes on from step 2 and repeats steps 3..6 exactly
    before = {m["step"]: m["loss"] for m in read_metrics(run_dir)}
    out = train(compose_config(ov + ["resume=auto"]), log=reports.append)
    assert out["losses"] == {s: before[s] for s in range(3, 7)}
    # a fresh start into a run folder with checkpoints is refused with the fix
    assert main(["train", *ov]) == 2
    assert "resume=auto" in capsys.readouterr().err


def test_nan_loss_stops_after_saving_or_skips(tmp_path, data, monkeypatch):
    from parallel.engine import Engine

    real = Engine.forward_backward
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        loss = real(self, *a, **k)
        return float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(Engine, "forward_backward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss nan .* at step 4 .*nan_policy=skip"):
        train(compose_config(overrides(tmp_path / "n", data, 6)), log=lambda *_: None)
    idx = read_index(tmp_path / "n")
    assert [(e["step"], e["kind"]) for e in idx] == [(3, "full")]  # the last good state was saved

    calls["n"] = 0
    out = train(
        compose_config(overrides(tmp_path / "s", data, 6, **{"trainer.nan_policy": "skip"})),
        log=lambda *_: None,
    )
    assert out["skipped"] == 1 and sorted(out["losses"]) == [1, 2, 3, 5, 6]
    assert all(math.isfinite(v) for v in out["losses"].values())
    order = [json.loads(l) for l in (tmp_path / "s" / "data_order.jsonl").read_text().splitlines()]
    assert order[3]["step"] == 4 and order[3]["skipped"] is True


def test_async_checkpoint_equals_sync_and_does_not_change_training(tmp_path, data):
    from torch.distributed.checkpoint import load as dcp_load

    runs = {}
    for mode in ("sync", "async"):
        ov = overrides(
            tmp_path / mode,
            data,
            6,
            **{
                "checkpoint.interval": 2,
                "checkpoint.keep_last": 0,
                "checkpoint.async_save": str(mode == "async").lower(),
            },
        )
        runs[mode] = train(compose_config(ov), log=lambda *_: None)
    assert runs["sync"]["losses"] == runs["async"]["losses"]
    assert [e["step"] for e in read_index(tmp_path / "async")] == [2, 4, 6]
    for step in (2, 4):
        states = []
        for mode in ("sync", "async"):
            path = tmp_path / mode / "checkpoints" / f"step_{step:07d}"
            assert verify_checkpoint(path) is None
            meta = json.loads((path / "meta.json").read_text())
            assert meta["step"] == step and meta["data"]["consumed_samples"] == step * 8
            # read every tensor back (model and optimizer moments) through DCP's metadata
            from torch.distributed.checkpoint import FileSystemReader

            md = FileSystemReader(str(path)).read_metadata()
            sd = {
                k: torch.empty(v.size, dtype=v.properties.dtype)
                for k, v in md.state_dict_metadata.items()
                if hasattr(v, "size")
            }
            dcp_load(sd, checkpoint_id=str(path), no_dist=True)
            states.append(sd)
        assert states[0].keys() == states[1].keys() and any(".exp_avg" in k for k in states[0])
        for k in states[0]:
            assert torch.equal(states[0][k], states[1][k]), k


def test_stop_file_checkpoints_the_agreed_step_and_resume_continues(tmp_path, data, monkeypatch):
    """The preemption path (pretrain/preemption.py) through this loop: a stop request after step 3
    leaves a full checkpoint of step 3; resume=auto then gives the uninterrupted losses."""
    stop = tmp_path / "STOP"
    monkeypatch.setenv("PRETRAIN_STOP_FILE", str(stop))
    monkeypatch.setenv("PRETRAIN_REQUEUE", "0")
    ov = overrides(tmp_path / "p", data, 6, **{"checkpoint.interval": 0})
    hook = lambda step, batch, rng: stop.touch() if step == 3 else None  # noqa: E731
    out = train(compose_config(ov), callbacks=[OnBatch(hook)], log=lambda *_: None)
    assert out["step"] == 3 and out["preempted_at"] == 3
    assert [(e["step"], e["kind"]) for e in read_index(tmp_path / "p")] == [(3, "full")]
    assert not stop.exists()  # removed, so the continued run does not stop at once
    rest = train(compose_config(ov + ["resume=auto"]), log=lambda *_: None)
    monkeypatch.delenv("PRETRAIN_STOP_FILE")
    straight = train(compose_config(overrides(tmp_path / "q", data, 6)), log=lambda *_: None)
    assert {**out["losses"], **rest["losses"]} == straight["losses"]


def test_under_a_batch_script_rank_0_hands_the_requeue_over(tmp_path, monkeypatch):
    """With PRETRAIN_STOPPED_FILE (set by slurm/train.sbatch) rank 0 records the stop step for the
    batch script and does not run scontrol itself (PATH has none: calling it would raise)."""
    from pretrain.preemption import Preemption

    stopped = tmp_path / "stopped-77"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("PRETRAIN_STOPPED_FILE", str(stopped))
    monkeypatch.setenv("PATH", str(tmp_path))
    p = Preemption(stop_file=str(tmp_path / "stop"), log=lambda *_: None)
    assert not p.should_stop(4) and p.finish() is None and not stopped.exists()
    (tmp_path / "stop").touch()
    assert p.should_stop(5)
    msg = p.finish(tmp_path / "ckpt" / "step_0000005")
    assert "the batch script requeues Slurm job 77" in msg
    assert stopped.read_text().split() == ["5", str(tmp_path / "ckpt" / "step_0000005")]
    assert not (tmp_path / "stop").exists()
    monkeypatch.delenv("PRETRAIN_STOPPED_FILE")  # without a batch script rank 0 calls scontrol
    with pytest.raises(FileNotFoundError):
        q = Preemption(stop_file=str(tmp_path / "stop"), log=lambda *_: None)
        (tmp_path / "stop").touch()
        q.should_stop(1)
        q.finish()


def test_export_all_writes_one_hf_folder_per_step(tmp_path, data, capsys):
    import transformers

    ov = overrides(
        tmp_path / "e",
        data,
        4,
        **{
            "checkpoint.interval": 3,
            "checkpoint.series": "log2:2",
            "checkpoint.series_dtype": "float32",
        },
    )
    out = train(compose_config(ov), log=lambda *_: None)
    assert main(["export-hf", str(tmp_path / "e"), "--all", "--out", str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "step1",
        "step2",
        "step3",
        "step4",
    ]
    # step 2's export reproduces the loss training logged at step 3 (weights after step 2)
    from pretrain.analysis.batch import batch_of_step

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "step2").eval()
    batch = torch.from_numpy(batch_of_step(tmp_path / "e", 3)["tokens"])
    with torch.no_grad():
        logits = hf(batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).item()
    # float32 on both sides (the run, the export, transformers): our forward and transformers'
    # differ by float32 rounding, ~2e-6 in O(1) logits (tests/model_zoo/hf_helpers.py measures
    # it), which moves a mean cross-entropy by ~1e-6 relative; 1e-5 is an order above that
    assert abs(loss - out["losses"][3]) / out["losses"][3] < 1e-5
    assert (
        main(["export-hf", str(tmp_path / "e"), "--step", "7", "--out", str(tmp_path / "x")]) == 2
    )
    assert "saved steps: 1, 2, 3, 4" in capsys.readouterr().err


def test_intra_document_mask_reaches_the_model(tmp_path):
    """With data.intra_doc_mask=true the logged step-1 loss is the model's loss on that batch with
    the document mask (and restarted positions), which differs from the unmasked loss."""
    from model_zoo import build_model

    short = [write_megatron(str(tmp_path / "short/man"), documents(80, max_bytes=20))[0]]
    extra = {"data.intra_doc_mask": "true", "data.reset_position_ids": "true"}
    run = compose_config(tiny_overrides(tmp_path / "m", short, steps=3, **extra))
    seen = {}
    result = train(
        run,
        log=lambda *_: None,
        callbacks=[OnBatch(lambda step, batch, rng: seen.__setitem__(step, batch))],
    )
    batch = seen[1]
    assert (batch["document_ids"][:, 1:] != batch["document_ids"][:, :-1]).any(), (
        "no packed boundary"
    )
    model = build_model(run.model, seed=run.trainer.seed)
    with torch.no_grad():

        def loss(**kw):
            logits = model(batch["inputs"], position_ids=batch["position_ids"], **kw)
            return torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), batch["labels"].flatten()
            ).item()

        masked, unmasked = loss(document_ids=batch["document_ids"]), loss()
    # the mask changes what tokens attend to: the loss moves by O(1e-2), rounding by O(1e-7)
    assert abs(masked - unmasked) > 1e-4
    # the trainer's float32 forward of the same weights and batch in other micro-batches: they
    # differ by float32 rounding of the mean (<= 1e-6 relative), 1e-5 an order above
    assert result["losses"][1] == pytest.approx(masked, rel=1e-5)
