"""Tokenizers (HF tokenizers, sentencepiece), BPE training, and Megatron .bin/.idx shard writing.

Shards are written with megatron-core's own `IndexedDatasetBuilder`, so they are valid Megatron-LM /
GPT-NeoX data by construction. The token dtype is uint16 when every id fits (vocabulary <= 65,536)
and int32 otherwise; the builder casts with numpy (which wraps silently), so every batch is checked
against the dtype's range before it is written: a wrong dtype is an error, never corrupted tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


class Tok:
    """Common face of an HF `tokenizers.Tokenizer` and a sentencepiece model."""

    def __init__(self, path: str, eos: str = "<|endoftext|>"):
        self.path = path
        if path.endswith(".model"):
            import sentencepiece as spm

            self.kind = "sentencepiece"
            self.sp = spm.SentencePieceProcessor(model_file=path)
            self.vocab_size = self.sp.get_piece_size()
            self.eos_id = self.sp.eos_id()
            if self.eos_id < 0:
                pid = self.sp.piece_to_id(eos)
                self.eos_id = pid if pid != self.sp.unk_id() else -1
        else:
            from tokenizers import Tokenizer

            self.kind = "hf"
            self.tk = Tokenizer.from_file(path)
            self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
            eid = self.tk.token_to_id(eos)
            self.eos_id = -1 if eid is None else eid
        if self.eos_id < 0:
            raise ValueError(
                f"tokenizer {path} has no EOS token {eos!r}; set tokenizer.eos to one it has "
                "or tokenizer.add_eos=false"
            )

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.kind == "hf":
            fast = getattr(self.tk, "encode_batch_fast", None) or self.tk.encode_batch
            return [e.ids for e in fast(texts, add_special_tokens=False)]
        return self.sp.encode(texts, num_threads=os.cpu_count() or 1)

    def encode(self, text: str) -> list[int]:
        if self.kind == "hf":
            return self.tk.encode(text, add_special_tokens=False).ids
        return self.sp.encode(text)

    def max_id(self) -> int:
        return self.vocab_size - 1


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 65536 else np.int32


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int, eos: str, out_path: str
) -> str:
    """Byte-level BPE (GPT-2/NeoX style) with HF tokenizers' Rust trainer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path + ".tmp"
    tk.save(tmp)
    os.replace(tmp, out_path)
    return out_path


class ShardWriter:
    """Megatron .bin/.idx shards of at most `max_tokens` tokens; a longer document gets a shard of its
    own (never a runaway file, never split). Written to .tmp names and renamed on close."""

    def __init__(self, prefix: str, vocab_size: int, max_tokens: int, write_npy: bool = False):
        self.prefix = prefix
        self.dtype = token_dtype(vocab_size)
        self.limit = np.iinfo(self.dtype).max
        self.max_tokens = max_tokens
        self.write_npy = write_npy
        self.index = 0
        self.builder = None
        self.npy = None
        self.in_shard = 0
        self.paths: list[str] = []
        self.tokens = 0
        self.docs = 0

    def _open(self) -> None:
        IndexedDatasetBuilder = megatron_indexed()[1]

        name = f"{self.prefix}-{self.index:04d}"
        self.cur = name
        self.builder = IndexedDatasetBuilder(name + ".bin.tmp", dtype=self.dtype)
        if self.write_npy:
            self.npy = open(name + ".npy.tmp", "wb")
        self.in_shard = 0

    def _close(self) -> None:
        if self.builder is None:
            return
        self.builder.finalize(self.cur + ".idx.tmp")
        os.replace(self.cur + ".bin.tmp", self.cur + ".bin")
        os.replace(self.cur + ".idx.tmp", self.cur + ".idx")
        if self.npy is not None:
            self.npy.close()
            os.replace(self.cur + ".npy.tmp", self.cur + ".npy")
        self.paths.append(self.cur)
        self.builder = None
        self.index += 1

    def add(self, ids: np.ndarray) -> None:
        n = len(ids)
        if n and (int(ids.max()) > self.limit or int(ids.min()) < 0):
            raise OverflowError(f"token id {int(ids.max())} does not fit {self.dtype.__name__}")
        if self.builder is not None and self.in_shard and self.in_shard + n > self.max_tokens:
            self._close()
        if self.builder is None:
            self._open()
        arr = ids.astype(self.dtype, copy=False)
        self.builder.add_document(arr, [n])
        if self.npy is not None:
            # OLMo's .npy data files are raw memmaps (no header); OLMo reads uint16 or uint32
            self.npy.write(
                arr.astype(np.uint32 if self.dtype == np.int32 else self.dtype).tobytes()
            )
        self.in_shard += n
        self.tokens += n
        self.docs += 1

    def close(self) -> list[str]:
        self._close()
        return self.paths


def encode_docs(tok: Tok, texts: list[str], add_eos: bool) -> Iterator[np.ndarray]:
    eos = np.array([tok.eos_id], dtype=np.int64)
    for ids in tok.encode_batch(texts):
        arr = np.asarray(ids, dtype=np.int64)
        yield np.concatenate([arr, eos]) if add_eos else arr


def megatron_indexed():
    """megatron-core's IndexedDataset and IndexedDatasetBuilder. Importing megatron.core warns that
    Transformer Engine and Apex are missing (they matter for its model code, not for datasets)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
    return IndexedDataset, IndexedDatasetBuilder


def read_back(prefix: str):
    return megatron_indexed()[0](prefix)
