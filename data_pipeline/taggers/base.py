"""The tagger registry and the one split of a document every tagger shares.

A tagger is a class with `config_type` (its dataclass in config.py, a field of `TaggersConfig`),
`emits(cfg)` (the attribute names it can write; `*` stands for a language code and the like) and
`__call__(view, context) -> attributes`. `@register("<field of TaggersConfig>")` adds it; the field
name is its attribute folder (`attributes/<group>/`). `TaggerSet` runs the enabled ones in
registration order, handing each the outputs of the ones before (the content tagger reads the
language the language tagger found).
"""

from __future__ import annotations

import re
from dataclasses import fields
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from ..config import TaggersConfig
from ..text.kernels import code_points, space_table, splitlines_words
from ..text.words import ChunkVocab

Spans = list[list]
Attrs = dict[str, Spans]


def whole(text: str, value: float) -> Spans:
    """A document-level measurement: one span over the whole text."""
    return [[0, len(text), float(value)]]


class Tagger:
    config_type: ClassVar[type]
    group: ClassVar[str] = ""

    @staticmethod
    def emits(cfg: Any) -> list[str]:
        raise NotImplementedError

    def __call__(self, view: DocView, context: dict | None = None) -> Attrs:
        raise NotImplementedError


class Reading:
    """One reference filter's measurements inside a tagger (the quality tagger's Gopher, C4 and
    FineWeb readings, as datatrove has one filter class each): `keys` are the attribute keys it
    writes under `<tagger name>__<group>__`, and `__call__` measures one document. `passed` is
    shared by a document's readings in their order: a reading hands on what a later one reads
    (C4's kept text, which FineWeb's filter measures)."""

    group: ClassVar[str]
    keys: ClassVar[list[str]]

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def __call__(self, view: DocView, passed: dict) -> Attrs:
        raise NotImplementedError


def as_view(doc: DocView | dict) -> DocView:
    """Taggers take the shared split; a plain document (tests, notebooks) is split here."""
    return doc if isinstance(doc, DocView) else DocView(doc)


TAGGERS: dict[str, type[Tagger]] = {}


def register(group: str):
    """Class decorator: the tagger of `TaggersConfig.<group>`."""
    names = {f.name for f in fields(TaggersConfig)}

    def deco(cls: type[Tagger]) -> type[Tagger]:
        if group not in names:
            raise TypeError(f"tagger group {group!r} is not a field of TaggersConfig ({names})")
        cls.group = group
        TAGGERS[group] = cls
        return cls

    return deco


# ---------------------------------------------------------------- the shared split


_PARA = re.compile(r"\n\s*\n")

# One memo per process: the tag task handles one shard after another in the same process.
SPACY_VOCAB = ChunkVocab()


class DocView:
    """A document split once: whitespace chunks, spaCy word ids, paragraphs (computed on first use
    and then shared by every tagger)."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.text: str = doc["text"]
        self.vocab = SPACY_VOCAB

    @cached_property
    def chunks(self) -> list[str]:
        return self.text.split()

    @cached_property
    def chunk_cids(self) -> np.ndarray:
        """Ids of the whitespace chunks in the spaCy word memo (unseen chunks tokenised)."""
        return self.vocab.index_text(self.text)  # aligned with self.chunks (text.split())

    @cached_property
    def spacy_ids(self) -> np.ndarray:
        cids = self.chunk_cids
        if not len(cids):
            return np.zeros(0, dtype=np.int64)
        return self.vocab.gather(cids)[0]

    @cached_property
    def cps(self) -> np.ndarray:
        """The text as UTF-32 code points (what the compiled kernels read)."""
        return code_points(self.text)

    @cached_property
    def lines(self) -> tuple[np.ndarray, ...]:
        """str.splitlines()'s lines as kernels.splitlines_words gives them: (offsets [line, start
        end stripped-start stripped-end], words, longest word, holds "{", gap token per word)."""
        return splitlines_words(self.cps, space_table())

    @cached_property
    def paragraphs(self) -> list[tuple[int, int]]:
        return paragraph_spans(self.text)


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the non-blank blocks of `text` separated by blank lines."""
    out, pos = [], 0
    for m in _PARA.finditer(text):
        if text[pos : m.start()].strip():
            out.append((pos, m.start()))
        pos = m.end()
    if text[pos:].strip():
        out.append((pos, len(text)))
    return out


def release_memory() -> None:
    """Between documents: restart the memos once they pass their bound."""
    SPACY_VOCAB.maybe_reset()
