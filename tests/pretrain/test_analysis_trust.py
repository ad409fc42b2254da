"""Trust in what is loaded: every load checks the checkpoint against its manifest and a damaged
one stops with one line naming the file (exit 2), never a traceback; continued pretraining from
an imported Hugging Face model starts exactly where transformers' model is."""

import json

import pytest
import torch
import torch.nn.functional as F

from pretrain.analysis.batch import batch_of_step
from pretrain.checkpoint import CheckpointError, load_weights
from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.train import train
from tests.pretrain.helpers import EOS, documents, tiny_overrides, write_megatron


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    write_megatron(str(d / "en/man"), documents(40, max_bytes=1200))
    return [str(d / "en")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data):
    """3 steps, series at 1 and 2, full checkpoint at 3: the checkpoints damaged below."""
    r = tmp_path_factory.mktemp("trustrun") / "r"
    ov = tiny_overrides(r, data, steps=3, **{"checkpoint.series": "'steps:[1,2]'"})
    train(compose_config(ov), log=lambda *_: None)
    return r


def _truncate_a_shard(ckpt_dir) -> str:
    shard = sorted(ckpt_dir.rglob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    return shard.name


def test_truncated_shard_is_one_line_naming_the_file(run_dir, tmp_path, capsys):
    name = _truncate_a_shard(run_dir / "series" / "step1")
    code = main(["export-hf", str(run_dir / "series" / "step1"), "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert name in err and "the manifest says" in err and "Traceback" not in err
    # the whole-run export checks every step before writing the first
    assert main(["export-hf", str(run_dir), "--all", "--out", str(tmp_path / "all")]) == 2
    assert name in capsys.readouterr().err and not (tmp_path / "all").exists()
    # checksums on request: a flipped byte keeps the size, only sha256 sees it
    meta = run_dir / "series" / "step2" / "meta.json"
    meta.write_text(meta.read_text().replace("{", "{ ", 1)[:-1])
    load_weights(run_dir / "series" / "step2")  # sizes match
    with pytest.raises(CheckpointError, match="meta.json does not match its sha256"):
        load_weights(run_dir / "series" / "step2", verify="checksum")
    code = main(
        [*("analyze", "series", "--run", str(run_dir))]
    )  # listing reads no weights: still works
    assert code == 0


def test_resume_from_a_truncated_checkpoint_exits_2_in_one_line(run_dir, data, tmp_path, capsys):
    full = run_dir / "checkpoints" / "step_0000003"
    broken = tmp_path / "step_0000003"
    broken.mkdir()
    for p in full.rglob("*"):
        if p.is_file():
            dst = broken / p.relative_to(full)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    name = _truncate_a_shard(broken)
    ov = tiny_overrides(tmp_path / "again", data, steps=4, resume=str(broken))
    code = main(["train", *ov])  # stops before any process group exists
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert name in err and "checkpoint error" in err and "Traceback" not in err


def _transformers_llama(tmp_path):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "hf")
    return model


def test_continued_pretraining_from_an_imported_model(tmp_path, data, capsys):
    """import-hf, then train with checkpoint.init_from and no model=: the model is the imported
    one and step 1's loss equals transformers' loss on step 1's batch (1e-5)."""
    hf = _transformers_llama(tmp_path)
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    ov = [
        o
        for o in tiny_overrides(tmp_path / "cont", data, steps=3)
        if not o.startswith(("model=", "model."))
    ] + [f"checkpoint.init_from={tmp_path / 'ours'}"]
    run = compose_config(ov)
    assert (run.model.d_model, run.model.ffn_hidden_size, run.model.vocab_size) == (64, 160, 260)
    out = train(run, log=lambda *_: None)
    batch = torch.from_numpy(batch_of_step(tmp_path / "cont", 1)["tokens"])
    with torch.no_grad():
        logits = hf(batch[:, :-1]).logits
    ref = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).item()
    # float32 on both sides (the run, the export, transformers): our forward and transformers'
    # differ by float32 rounding, ~2e-6 in O(1) logits (tests/model_zoo/hf_helpers.py measures
    # it), which moves a mean cross-entropy by ~1e-6 relative; 1e-5 is an order above that
    assert abs(out["losses"][1] - ref) / ref < 1e-5, (out["losses"][1], ref)
    # a given model that computes something else is rejected, naming the fields
    code = main(["train", *ov, "model=llama3-tiny", "model.vocab_size=260"])
    err = capsys.readouterr().err
    assert code == 2 and "does not match checkpoint.init_from" in err
    assert "d_model: 64 (given) vs 64" not in err and "ffn_hidden_size: 192 (given) vs 160" in err
    saved = json.loads((tmp_path / "ours" / "manifest.json").read_text())
    assert any(k.endswith(".distcp") for k in saved["files"])  # import-hf writes a manifest
