"""Tokenization: a vocabulary over 65,536 is written as int32 without corrupting ids, sentencepiece models
work, shards stay bounded, and megatron-core reads back exactly what re-tokenising gives."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from data_pipeline.cli import main
from data_pipeline.tokenize import ShardWriter, Tok, read_back, train_bpe
from tests.data_pipeline.helpers import write_jsonl_gz


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(l) for l in fh]


def _check_readback(out, tok):
    mixed = [d for p in sorted((out / "mixed").glob("*.jsonl.gz")) for d in _read(p)]
    got = []
    for idx in sorted((out / "tokens").glob("*.idx")):
        ds = read_back(str(idx)[:-4])
        got.extend(np.asarray(ds[i]).tolist() for i in range(len(ds)))
    assert len(got) == len(mixed)
    for d, ids in zip(mixed, got):
        assert ids == tok.encode(d["text"]) + [tok.eos_id]
    return got


@pytest.fixture(scope="module")
def big_vocab_tokenizer(tmp_path_factory, samples_en):
    """A real BPE trained on man pages, then grown past 65,536 ids with added tokens that occur in
    the text (real words), so the encoded data contains ids that do not fit uint16."""
    from tokenizers import AddedToken, Tokenizer

    d = tmp_path_factory.mktemp("tok")
    path = str(d / "base.json")
    train_bpe((x["text"] for x in samples_en[:100]), 3000, 2, "<|endoftext|>", path)
    tk = Tokenizer.from_file(path)
    tk.add_tokens([f"<pad_{i}>" for i in range(70000)])
    tk.add_tokens(
        [AddedToken(w, single_word=True) for w in ("manual", "option", "command", "file")]
    )
    big = str(d / "big.json")
    tk.save(big)
    return big


def test_vocab_over_65536_is_int32_and_exact(tmp_path, samples_en, big_vocab_tokenizer):
    tok = Tok(big_vocab_tokenizer)
    assert tok.vocab_size > 70000
    inp = write_jsonl_gz(tmp_path / "in.jsonl.gz", samples_en[:30])
    out = tmp_path / "out"
    assert (
        main(
            [
                "pipeline=tokenize_only",
                f"input.paths=[{inp}]",
                f"output.dir={out}",
                f"tokenizer.path={big_vocab_tokenizer}",
                "executor.progress=false",
                "output.write_npy=true",
            ]
        )
        == 0
    )
    got = _check_readback(out, tok)
    assert max(max(x) for x in got) > 65535, (
        "the data never used a large id; the test would prove nothing"
    )
    ds = read_back(str(sorted((out / "tokens").glob("*.idx"))[0])[:-4])
    assert ds.index.dtype == np.int32
    npy = np.fromfile(sorted((out / "tokens").glob("*.npy"))[0], dtype=np.uint32)
    assert npy.tolist() == [t for x in got for t in x]


def test_uint16_writer_refuses_ids_that_do_not_fit(tmp_path):
    w = ShardWriter(str(tmp_path / "x"), vocab_size=1000, max_tokens=100)
    w.add(np.array([1, 2, 999]))
    with pytest.raises(OverflowError):
        w.add(np.array([70000]))


def test_shards_are_bounded_and_a_huge_document_gets_its_own(tmp_path):
    w = ShardWriter(str(tmp_path / "s"), vocab_size=1000, max_tokens=100)
    for n in (40, 40, 40, 500, 10, 10):
        w.add(np.arange(n) % 1000)
    paths = w.close()
    lens = []
    for p in paths:
        ds = read_back(p)  # keep the dataset alive while reading its mmap-backed arrays
        lens.append(ds.sequence_lengths.tolist())
        del ds
    assert lens == [[40, 40], [40], [500], [10, 10]], lens


def test_sentencepiece_model(tmp_path, samples_en):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(x["text"] for x in samples_en[:60]), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=800,
        model_type="bpe",
        eos_id=2,
        minloglevel=2,
    )
    inp = write_jsonl_gz(tmp_path / "in.jsonl.gz", samples_en[:10])
    out = tmp_path / "out"
    model = str(tmp_path / "sp.model")
    assert (
        main(
            [
                "pipeline=tokenize_only",
                f"input.paths=[{inp}]",
                f"output.dir={out}",
                f"tokenizer.path={model}",
                "executor.progress=false",
            ]
        )
        == 0
    )
    tok = Tok(model)
    assert tok.kind == "sentencepiece" and tok.eos_id == 2
    _check_readback(out, tok)
