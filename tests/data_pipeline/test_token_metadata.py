"""Self-describing token data: the tokenize stage writes tokens/metadata.json and a copy of the
tokenizer, for each kind of tokenizer a user brings (an HF tokenizer.json, an HF tokenizer folder,
a sentencepiece model), all built here from the bundled man pages. The ids in the shards must equal
what the tokenizer's own library encodes (transformers' AutoTokenizer for the folder)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from data_pipeline.cli import main
from data_pipeline.tokenize import read_back
from tests.data_pipeline.helpers import write_jsonl_gz


@pytest.fixture(scope="module")
def tokenizers_built(tmp_path_factory, samples_en):
    """A byte-level BPE tokenizer.json, an HF folder saved by transformers with its own special
    tokens (not the pipeline's default EOS), and a sentencepiece unigram model."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tokenizers")
    texts = [x["text"] for x in samples_en[:80]]

    def bpe(special: list[str]) -> Tokenizer:
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=1500,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tk.train_from_iterator(texts, trainer=trainer)
        return tk

    json_path = d / "bpe.json"
    bpe(["<|endoftext|>"]).save(str(json_path))
    folder = d / "hf_folder"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe(["<pad>", "<s>", "</s>"]),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.save_pretrained(str(folder))
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(d / "uni"),
        vocab_size=1000,
        model_type="unigram",
        pad_id=3,
        minloglevel=2,
    )
    return {
        "hf-tokenizer-json": json_path,
        "hf-folder": folder,
        "sentencepiece": d / "uni.model",
    }


def _reference(kind: str, path):
    """(encode, eos_id, bos_id, pad_id, vocab_size) from the tokenizer's own library."""
    if kind == "hf-folder":
        from transformers import AutoTokenizer

        t = AutoTokenizer.from_pretrained(str(path))
        enc = lambda s: t(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        return enc, t.eos_token_id, t.bos_token_id, t.pad_token_id, len(t)
    if kind == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(path))
        return sp.encode, sp.eos_id(), sp.bos_id(), sp.pad_id(), sp.get_piece_size()
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(path))
    enc = lambda s: tk.encode(s, add_special_tokens=False).ids  # noqa: E731
    return enc, tk.token_to_id("<|endoftext|>"), None, None, tk.get_vocab_size(True)


@pytest.mark.parametrize("kind", ["hf-tokenizer-json", "hf-folder", "sentencepiece"])
def test_metadata_and_ids_for_each_tokenizer_kind(tmp_path, samples_en, tokenizers_built, kind):
    path = tokenizers_built[kind]
    docs = samples_en[100:125]
    inp = write_jsonl_gz(tmp_path / "in.jsonl.gz", docs)
    out = tmp_path / "out"
    args = [
        "pipeline=tokenize_only",
        f"input.paths=[{inp}]",
        f"output.dir={out}",
        f"tokenizer.path={path}",
        "tokenizer.max_tokens_per_shard=20000",  # several shards, so per-shard counts matter
        "executor.progress=false",
    ]
    assert main(args) == 0
    meta = json.loads((out / "tokens" / "metadata.json").read_text())
    encode, eos, bos, pad, vocab = _reference(kind, path)
    assert eos is not None and eos >= 0
    t = meta["tokenizer"]
    assert t["kind"] == kind and t["path"] == "tokenizer"
    assert t["vocab_size"] == vocab
    assert t["eos_id"] == eos
    assert t["bos_id"] == (bos if bos is not None and bos >= 0 else None)
    assert t["pad_id"] == (pad if pad is not None and pad >= 0 else None)
    if kind == "hf-folder":  # the folder's own special tokens, not the pipeline's default EOS
        assert (t["bos_id"], t["pad_id"]) != (None, None)
    copy = out / "tokens" / "tokenizer"
    main_file = copy / ("tokenizer.model" if kind == "sentencepiece" else "tokenizer.json")
    assert t["fingerprint"] == "sha256:" + hashlib.sha256(main_file.read_bytes()).hexdigest()
    if kind == "hf-folder":
        assert (copy / "tokenizer_config.json").is_file()
        assert _reference(kind, copy)[1:] == (eos, bos, pad, vocab)  # the copy loads the same
    assert meta["format"] == "pretrain-token-data" and meta["version"] == 1
    assert meta["shard_format"] == "megatron" and meta["token_dtype"] == "uint16"
    assert meta["source"]["pipeline"] == "tokenize_only"

    got, per_shard = [], []
    assert len(meta["shards"]) >= 2
    for sh in meta["shards"]:
        ds = read_back(str(out / "tokens" / sh["path"]))
        seqs = [np.asarray(ds[i]).tolist() for i in range(len(ds))]
        per_shard.append((len(seqs), sum(map(len, seqs))))
        got.extend(seqs)
        del ds
    assert per_shard == [(sh["documents"], sh["tokens"]) for sh in meta["shards"]]
    assert meta["documents"] == len(docs) == len(got)
    assert meta["tokens"] == sum(map(len, got))
    for d, ids in zip(docs, got):  # tokenize_only keeps every document, in order
        assert ids == list(encode(d["text"])) + [eos]
