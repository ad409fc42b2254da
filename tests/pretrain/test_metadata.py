"""Token data that describes itself: `pretrain train data.paths=[DIR]` reads DIR's metadata.json,
written by the real pipeline (`pretrain data pipeline=tokenize_only`) on the bundled man pages."""

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from configcore import ConfigError
from data_pipeline.cli import main as data_main
from data_pipeline.tokenize import Tok, train_bpe
from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.data.metadata import find_metadata, read_metadata
from tests.pretrain.helpers import SAMPLES, documents, tiny_overrides, write_megatron

VOCAB = 300  # > the 257 symbols a byte-level BPE starts from; pythia-tiny pads to 64 -> 320


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("man")
    rc = data_main(
        [
            "pipeline=tokenize_only",
            f"input.paths=[{SAMPLES}]",
            f"output.dir={out}",
            f"tokenizer.train.vocab_size={VOCAB}",
        ]
    )
    assert rc in (0, None)
    return out / "tokens"


def test_vocabulary_separator_and_format_come_from_the_data(tokens):
    run = compose_config(["model=pythia-tiny", f"data.paths=[{tokens}]"])
    hf = Tokenizer.from_file(str(tokens / "tokenizer" / "tokenizer.json"))
    eos = hf.token_to_id("<|endoftext|>")
    assert run.model.vocab_size == hf.get_vocab_size() == VOCAB
    assert run.model.padded_vocab_size == 320  # pythia-tiny's pad_vocab_multiple is 64
    assert run.data.eos_id == run.model.eos_token_id == eos
    assert run.data.format == "megatron"


def test_metadata_is_found_from_a_prefix_a_glob_and_a_subfolder(tokens, tmp_path):
    meta = tokens / "metadata.json"
    prefix = tokens / read_metadata(meta).shards[0]["path"]
    assert find_metadata(str(tokens)) == meta.absolute()
    assert find_metadata(str(prefix)) == meta.absolute()
    assert find_metadata(f"{tokens}/part-*") == meta.absolute()
    (tokens / "sub").mkdir(exist_ok=True)
    assert find_metadata(str(tokens / "sub")) == meta.absolute()
    raw = write_megatron(str(tmp_path / "raw" / "docs"), documents(3))
    assert find_metadata(raw[0]) is None


def test_a_vocabulary_too_small_for_the_data_names_both_numbers(tokens):
    with pytest.raises(ConfigError) as err:
        compose_config(["model=pythia-tiny", "model.vocab_size=200", f"data.paths=[{tokens}]"])
    msg = str(err.value)
    assert "model.vocab_size=200" in msg and f"({VOCAB} tokens" in msg
    # a larger explicit vocabulary is kept (e.g. room for tokens added later)
    run = compose_config(["model=pythia-tiny", "model.vocab_size=512", f"data.paths=[{tokens}]"])
    assert run.model.vocab_size == 512


def test_members_made_with_different_tokenizers_are_rejected_naming_both(tokens, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tokens, other)
    texts = [json.dumps(i) for i in range(10)]
    new_tok = train_bpe(texts, 280, 1, "<|endoftext|>", str(tmp_path / "t" / "tokenizer.json"))
    meta = json.loads((other / "metadata.json").read_text())
    meta["tokenizer"] = Tok(new_tok).metadata()
    (other / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        compose_config(["model=pythia-tiny", f"data.paths=[{tokens},{other}]"])
    msg = str(err.value)
    assert "mixes tokenizers" in msg and str(tokens) in msg and str(other) in msg
    assert meta["tokenizer"]["fingerprint"] in msg


def test_raw_shards_keep_their_explicit_keys(tmp_path):
    raw = write_megatron(str(tmp_path / "raw" / "docs"), documents(3))
    run = compose_config(tiny_overrides(tmp_path / "run", raw))
    assert run.model.vocab_size == 260 and run.model.eos_token_id == 0 and run.data.eos_id == -1


def test_a_start_that_fails_validation_writes_nothing(tmp_path, capsys):
    raw = write_megatron(str(tmp_path / "raw" / "docs"), documents(3))
    run_dir = tmp_path / "run"
    # byte tokens go up to 256: a 100-token vocabulary cannot read them
    args = ["train", *tiny_overrides(run_dir, raw, **{"model.vocab_size": 100})]
    assert main(args) == 2
    assert ">= model.vocab_size=100" in capsys.readouterr().err
    assert not run_dir.exists()
