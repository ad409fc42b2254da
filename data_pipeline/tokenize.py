"""Tokenizers (HF tokenizers, sentencepiece), BPE training, and Megatron .bin/.idx shard writing.

Shards are written with megatron-core's own `IndexedDatasetBuilder`, so they are valid Megatron-LM /
GPT-NeoX data by construction. The token dtype is uint16 when every id fits (vocabulary <= 65,536)
and int32 otherwise; the builder casts with numpy (which wraps silently), so every batch is checked
against the dtype's range before it is written: a wrong dtype is an error, never corrupted tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TOKEN_DATA_FORMAT, TOKEN_DATA_VERSION = "pretrain-token-data", 1  # tokens/metadata.json
TOKENIZER_KINDS = ("hf-tokenizer-json", "hf-folder", "sentencepiece")


def tokenizer_kind(path: str | Path) -> str:
    """What `tokenizer.path` names: an HF tokenizer folder, a sentencepiece .model or an HF
    tokenizer.json."""
    p = Path(path)
    if p.is_dir():
        return "hf-folder"
    return "sentencepiece" if p.suffix == ".model" else "hf-tokenizer-json"


def _token_content(value: object) -> str | None:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def folder_special_tokens(folder: Path) -> dict[str, str]:
    """eos/bos/pad token strings of an HF tokenizer folder: tokenizer_config.json first (what
    transformers' AutoTokenizer reads), special_tokens_map.json for what it leaves out."""
    out: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if not f.is_file():
            continue
        conf = json.loads(f.read_text(encoding="utf-8"))
        for key in ("eos_token", "bos_token", "pad_token"):
            tok = _token_content(conf.get(key))
            if tok and key not in out:
                out[key] = tok
    return out


class Tok:
    """Common face of an HF `tokenizers.Tokenizer` (a tokenizer.json, or an HF tokenizer folder whose
    tokenizer_config.json names the special tokens) and a sentencepiece model.

    `eos` is the document separator's token string for a bare tokenizer.json; a folder's own
    eos_token and a sentencepiece model's eos id take precedence. `vocab_size` is the full size
    including added special tokens (the ids the data can hold)."""

    def __init__(self, path: str, eos: str = "<|endoftext|>", need_eos: bool = True):
        self.path = path
        self.kind = tokenizer_kind(path)
        p = Path(path)
        if self.kind == "sentencepiece":
            self.sp = spm.SentencePieceProcessor(model_file=path)
            self.files = [p]
            self.vocab_size = self.sp.get_piece_size()
            self.eos_id = self.sp.eos_id()
            if self.eos_id < 0:
                pid = self.sp.piece_to_id(eos)
                self.eos_id = pid if pid != self.sp.unk_id() else -1
            self.bos_id, self.pad_id = self.sp.bos_id(), self.sp.pad_id()
        else:
            file = p / "tokenizer.json" if self.kind == "hf-folder" else p
            self.tk = Tokenizer.from_file(str(file))
            self.files = [file]
            specials: dict[str, str] = {}
            if self.kind == "hf-folder":
                specials = folder_special_tokens(p)
                self.files += [
                    p / n
                    for n in ("tokenizer_config.json", "special_tokens_map.json")
                    if (p / n).is_file()
                ]
            self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
            eid = self.tk.token_to_id(specials.get("eos_token", eos))
            self.eos_id = -1 if eid is None else eid
            self.bos_id, self.pad_id = (
                self.tk.token_to_id(specials[k]) if k in specials else None
                for k in ("bos_token", "pad_token")
            )
        self.bos_id = None if self.bos_id is None or self.bos_id < 0 else self.bos_id
        self.pad_id = None if self.pad_id is None or self.pad_id < 0 else self.pad_id
        if need_eos and self.eos_id < 0:
            raise ValueError(
                f"tokenizer {path} has no EOS token {eos!r}; set tokenizer.eos to one it has "
                "or tokenizer.add_eos=false"
            )

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.kind != "sentencepiece":
            fast = getattr(self.tk, "encode_batch_fast", None) or self.tk.encode_batch
            return [e.ids for e in fast(texts, add_special_tokens=False)]
        return self.sp.encode(texts, num_threads=os.cpu_count() or 1)

    def encode(self, text: str) -> list[int]:
        if self.kind != "sentencepiece":
            return self.tk.encode(text, add_special_tokens=False).ids
        return self.sp.encode(text)

    def max_id(self) -> int:
        return self.vocab_size - 1

    def fingerprint(self) -> str:
        """sha256 of the tokenizer's serialized bytes (tokenizer.json or the .model file): equal
        fingerprints mean the same vocabulary and merges, whatever the file is called."""
        return "sha256:" + hashlib.sha256(self.files[0].read_bytes()).hexdigest()

    def copy_to(self, folder: Path) -> None:
        """The files that make this tokenizer, as tokenizer.json (+ the folder's configs) or
        tokenizer.model, into `folder` (written under .tmp names and renamed)."""
        folder.mkdir(parents=True, exist_ok=True)
        main = "tokenizer.model" if self.kind == "sentencepiece" else "tokenizer.json"
        for f in self.files:
            name = main if f == self.files[0] else f.name
            tmp = folder / (name + ".tmp")
            shutil.copyfile(f, tmp)
            os.replace(tmp, folder / name)

    def metadata(self) -> dict:
        return {
            "kind": self.kind,
            "path": "tokenizer",
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id if self.eos_id >= 0 else None,
            "bos_id": self.bos_id,
            "pad_id": self.pad_id,
            "fingerprint": self.fingerprint(),
        }


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 65536 else np.int32


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int, eos: str, out_path: str
) -> str:
    """Byte-level BPE (GPT-2/NeoX style) with HF tokenizers' Rust trainer."""
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
        self.counts: list[tuple[int, int]] = []  # (documents, tokens) of each closed shard
        self.in_shard_docs = 0
        self.tokens = 0
        self.docs = 0

    def _open(self) -> None:
        IndexedDatasetBuilder = megatron_indexed()[1]

        name = f"{self.prefix}-{self.index:04d}"
        self.cur = name
        self.builder = IndexedDatasetBuilder(name + ".bin.tmp", dtype=self.dtype)
        if self.write_npy:
            self.npy = open(name + ".npy.tmp", "wb")
        self.in_shard = self.in_shard_docs = 0

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
        self.counts.append((self.in_shard_docs, self.in_shard))
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
        self.in_shard_docs += 1
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
    """megatron-core's IndexedDataset and IndexedDatasetBuilder, imported on first use (heavy:
    only the tasks that write or read shards need them; data_pipeline/megatron_datasets.py)."""
    from .megatron_datasets import IndexedDataset, IndexedDatasetBuilder

    return IndexedDataset, IndexedDatasetBuilder


def read_back(prefix: str):
    return megatron_indexed()[0](prefix)
