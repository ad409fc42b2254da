"""Token sources: one member of the data mixture, seen as a sequence of documents.

Two on-disk formats:

* Megatron `.bin/.idx` shards (what `pretrain data` writes, and what Megatron-LM / GPT-NeoX read),
  read through megatron-core's own `IndexedDataset`, so our reading can never disagree with theirs.
* OLMo-style `.npy` files: raw token memmaps without a header (uint16 or uint32), documents
  separated by the EOS token.

A source is a list of files; its documents are numbered 0..n_docs-1 across the files in sorted
order. Each document is followed by exactly one EOS in the packed stream: when a document does not
already end with EOS (Megatron shards written without add_eos, or the tail of an .npy file) a
virtual EOS is appended, so packing never glues two documents together.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configcore import ConfigError


def _expand(path: str, suffix: str) -> list[str]:
    """A prefix/file, a glob, or a folder -> sorted list of files (with `suffix`) or prefixes."""
    p = Path(path)
    if p.is_dir():
        files = sorted(glob.glob(str(p / f"**/*{suffix}"), recursive=True))
    elif any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if f.endswith(suffix))
        if not files:  # a glob over prefixes, e.g. data/wiki-*
            files = sorted(glob.glob(path + suffix, recursive=True))
    elif Path(path + suffix).exists():
        files = [path + suffix]
    elif p.exists() and path.endswith(suffix):
        files = [path]
    else:
        files = []
    if not files:
        raise ConfigError(
            f"data path {path!r} matches no {suffix} file; give a shard prefix, a "
            "glob, or a folder of shards (`pretrain data` writes PREFIX-0000.bin/.idx)"
        )
    return files


@dataclass
class DocLoc:
    file: str  # shard prefix or .npy path
    index: int  # document index within that file (Megatron) or token offset (npy)


class Source:
    """Documents of one mixture member. Subclasses fill `lengths` (real tokens per document),
    `add_eos` (1 where a virtual EOS follows), and implement `_read(doc, offset, n)`."""

    name: str
    lengths: np.ndarray
    add_eos: np.ndarray
    eos_id: int
    files: list[str]

    def _finish(self) -> None:
        span = self.lengths + self.add_eos
        self.doc_starts = np.zeros(len(span) + 1, dtype=np.int64)
        np.cumsum(span, out=self.doc_starts[1:])
        self.n_docs = len(span)
        self.n_tokens = int(self.doc_starts[-1])  # length of the packed stream of one epoch

    def _read(self, doc: int, offset: int, n: int) -> np.ndarray:
        raise NotImplementedError

    def locate(self, doc: int) -> DocLoc:
        raise NotImplementedError

    def read_stream(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens [start, end) of the packed stream, with the document id and the offset within
        the document of each token (the appended EOS gets the offset just past the text)."""
        n = end - start
        tokens = np.empty(n, dtype=np.int64)
        docs = np.empty(n, dtype=np.int64)
        offs = np.empty(n, dtype=np.int64)
        d = int(np.searchsorted(self.doc_starts, start, side="right") - 1)
        pos = start
        while pos < end:
            off = pos - int(self.doc_starts[d])
            real = int(self.lengths[d])
            take = min(end, int(self.doc_starts[d + 1])) - pos
            i = pos - start
            real_take = max(0, min(take, real - off))
            if real_take:
                tokens[i : i + real_take] = self._read(d, off, real_take)
            if take > real_take:  # the virtual EOS after the document
                tokens[i + real_take] = self.eos_id
            docs[i : i + take] = d
            offs[i : i + take] = np.arange(off, off + take)
            pos += take
            d += 1
        return tokens, docs, offs

    def fingerprint(self) -> dict:
        """What identifies the data: file names and sizes, and a hash of the document lengths.
        `pretrain analyze` refuses to reconstruct batches from different data."""
        h = hashlib.sha256(self.lengths.astype(np.int64).tobytes())
        h.update(self.add_eos.astype(np.int8).tobytes())
        sizes = {}
        for f in self.files:
            for path in (f + ".bin", f + ".idx") if not f.endswith(".npy") else (f,):
                sizes[os.path.basename(path)] = os.path.getsize(path)
        return {
            "name": self.name,
            "n_docs": self.n_docs,
            "n_tokens": self.n_tokens,
            "files": sizes,
            "doc_lengths_sha256": h.hexdigest(),
        }


class MegatronSource(Source):
    def __init__(self, path: str, eos_id: int):
        # Imported here: megatron-core takes seconds to import and only this format needs it.
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.name, self.eos_id = path, eos_id
        self.files = [f[: -len(".idx")] for f in _expand(path, ".idx")]
        self.datasets = [IndexedDataset(prefix) for prefix in self.files]
        lengths, add_eos, self._file_of, self._first = [], [], [], [0]
        for k, ds in enumerate(self.datasets):
            n = len(ds)
            lens = np.asarray(ds.sequence_lengths, dtype=np.int64)
            lengths.append(lens)
            add_eos.append(self._needs_eos(ds, lens, k))
            self._file_of.append(np.full(n, k, dtype=np.int32))
            self._first.append(self._first[-1] + n)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self.add_eos = np.concatenate(add_eos) if add_eos else np.zeros(0, np.int64)
        self._file_of = np.concatenate(self._file_of)
        self._finish()

    def _needs_eos(self, ds, lens: np.ndarray, k: int) -> np.ndarray:
        """1 for each document whose last token is not EOS. Read vectorised from the .bin (the
        same bytes IndexedDataset maps) so a million documents take milliseconds, not a loop."""
        dtype = np.dtype(ds.index.dtype)
        data = np.memmap(self.files[k] + ".bin", dtype=dtype, mode="r")
        ptrs = np.asarray(ds.index.sequence_pointers, dtype=np.int64) // dtype.itemsize
        out = np.ones(len(lens), dtype=np.int64)
        nonempty = lens > 0
        last = data[ptrs[nonempty] + lens[nonempty] - 1]
        out[nonempty] = (last != self.eos_id).astype(np.int64)
        return out

    def _read(self, doc: int, offset: int, n: int) -> np.ndarray:
        k = int(self._file_of[doc])
        return self.datasets[k].get(doc - self._first[k], offset=offset, length=n)

    def locate(self, doc: int) -> DocLoc:
        k = int(self._file_of[doc])
        return DocLoc(self.files[k], doc - self._first[k])


class NpySource(Source):
    def __init__(self, path: str, eos_id: int, dtype: str):
        self.name, self.eos_id = path, eos_id
        self.files = _expand(path, ".npy")
        self.arrays = [np.memmap(f, dtype=np.dtype(dtype), mode="r") for f in self.files]
        lengths, add_eos, self._file_of, self._start = [], [], [], []
        for k, arr in enumerate(self.arrays):
            # A document ends at (and includes) each EOS; a tail without EOS is a document too.
            ends = np.flatnonzero(np.asarray(arr) == eos_id) + 1
            starts = np.concatenate([[0], ends[:-1]]) if len(ends) else np.zeros(0, np.int64)
            lens = ends - starts
            tail = len(arr) - (int(ends[-1]) if len(ends) else 0)
            if tail:
                starts = np.concatenate([starts, [len(arr) - tail]])
                lens = np.concatenate([lens, [tail]])
            lengths.append(lens.astype(np.int64))
            extra = np.zeros(len(lens), np.int64)
            if tail:
                extra[-1] = 1
            add_eos.append(extra)
            self._file_of.append(np.full(len(lens), k, dtype=np.int32))
            self._start.append(starts.astype(np.int64))
        self.lengths = np.concatenate(lengths)
        self.add_eos = np.concatenate(add_eos)
        self._file_of = np.concatenate(self._file_of)
        self._start = np.concatenate(self._start)
        self._finish()

    def _read(self, doc: int, offset: int, n: int) -> np.ndarray:
        arr = self.arrays[int(self._file_of[doc])]
        s = int(self._start[doc]) + offset
        return np.asarray(arr[s : s + n], dtype=np.int64)

    def locate(self, doc: int) -> DocLoc:
        return DocLoc(self.files[int(self._file_of[doc])], int(self._start[doc]))


def open_source(path: str, fmt: str, eos_id: int, npy_dtype: str) -> Source:
    src = MegatronSource(path, eos_id) if fmt == "megatron" else NpySource(path, eos_id, npy_dtype)
    if src.n_tokens == 0:
        raise ConfigError(
            f"data path {path!r} holds no tokens; check that tokenization produced output"
        )
    return src
