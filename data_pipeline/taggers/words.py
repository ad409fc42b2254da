"""Words of a document, split once and shared by every tagger.

Two tokenisations are needed because the references disagree on what a word is:

- datatrove (FineWeb) splits with spaCy's blank English tokenizer (`datatrove/utils/text.py:308`,
  `split_into_words` -> `utils/word_tokenizers.py:151` `SpaCyTokenizer.word_tokenize`), so
  punctuation marks and clitics ("n't") are words of their own;
- Dolma's Gopher tagger uses `text.split()` (`dolma/taggers/gopher.py:146`).

spaCy's tokenizer cuts the text at whitespace first and tokenises every whitespace-free chunk on its
own (prefixes, suffixes, infixes, special cases: `spacy/tokenizer.pyx`, `_tokenize_affixes`), so the
tokens of a document are the concatenation of the tokens of its chunks. `ChunkVocab` memoises that:
each distinct chunk is tokenised by spaCy once (many unseen chunks of a document in one call), then
every later occurrence is a dict lookup. The result is exactly spaCy's token list (checked against
datatrove's own `split_into_words` in tests/data_pipeline/test_agreement.py) at a fraction of the
cost, because datatrove runs the whole spaCy pipeline three times per document.

Tokens become integer ids with per-id properties in numpy arrays (length, "has a non-punctuation
character", "has a letter", stop word, sentencizer flags), so the per-word statistics are array
operations and the n-gram statistics compiled loops over ids (kernels.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .kernels import sentence_starts
from .punctuation import PUNCTUATION_SET, TERMINAL_PUNCTUATION

# spaCy is the reference's tokenizer; importing it costs ~1 s, so it loads on first use (taggers
# that need no spaCy words, e.g. the Dolma reading, never pay for it)
_NLP = None

# datatrove/utils/text.py:13-181: PUNCTUATION_SET = PUNCTUATION | TERMINAL_PUNCTUATION
_PUNCT_SET: frozenset[str] | None = None
_TERMINAL: tuple[str, ...] | None = None
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

# Bound on the memo (distinct chunks). Past it the memo and the ids start afresh between two
# documents: memory stays bounded on any corpus (about 200 bytes per entry: ~200 MB at 1M).
MAX_CHUNKS = 1_000_000
_BASE, _MASK = 0x100000001B3, (1 << 64) - 1


def _spacy():
    global _NLP, _PUNCT_SET, _TERMINAL
    if _NLP is None:
        import spacy  # heavy optional import (see above)

        _NLP = spacy.blank("en")
        _PUNCT_SET = PUNCTUATION_SET
        _TERMINAL = tuple(sorted(TERMINAL_PUNCTUATION))
    return _NLP


def punctuation_set() -> frozenset[str]:
    _spacy()
    return _PUNCT_SET  # type: ignore[return-value]


def terminal_punctuation() -> tuple[str, ...]:
    _spacy()
    return _TERMINAL  # type: ignore[return-value]


@dataclass
class TokenTable:
    """Growing per-id property arrays (ids are dense, 0..n-1)."""

    length: np.ndarray
    non_symbol: np.ndarray  # any character outside datatrove's PUNCTUATION_SET
    alpha: np.ndarray  # any character with str.isalpha()
    stop: np.ndarray  # one of Gopher's eight stop words (case-sensitive, as datatrove)
    sent_punct: np.ndarray  # in spaCy Sentencizer.default_punct_chars
    is_punct: np.ndarray  # spaCy's lexeme IS_PUNCT
    # polynomial hash of the token's characters and base^length (mod 2^64): the hash of a
    # concatenation folds from its parts (datatrove compares "".join(n-gram) strings)
    chash: np.ndarray
    cpow: np.ndarray
    n: int = 0

    @classmethod
    def empty(cls, cap: int = 1 << 14) -> TokenTable:
        z = lambda dt: np.zeros(cap, dtype=dt)  # noqa: E731
        return cls(
            z(np.int64),
            z(np.bool_),
            z(np.bool_),
            z(np.bool_),
            z(np.bool_),
            z(np.bool_),
            z(np.uint64),
            z(np.uint64),
        )

    def grow(self, need: int) -> None:
        cap = len(self.length)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for name in (
            "length",
            "non_symbol",
            "alpha",
            "stop",
            "sent_punct",
            "is_punct",
            "chash",
            "cpow",
        ):
            a = getattr(self, name)
            b = np.zeros(new, dtype=a.dtype)
            b[: len(a)] = a
            setattr(self, name, b)


class ChunkVocab:
    """Memo of whitespace chunk -> spaCy token ids, and token string -> id with properties."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.chunks: dict[str, tuple[int, ...]] = {}
        self.ids: dict[str, int] = {}
        self.strings: list[str] = []  # id -> token
        self.table = TokenTable.empty()
        self._sent_chars: frozenset[str] | None = None

    def _token_id(self, tok: str, lex_is_punct: bool) -> int:
        i = self.ids.get(tok)
        if i is not None:
            return i
        i = len(self.ids)
        self.ids[tok] = i
        self.strings.append(tok)
        t = self.table
        t.grow(i + 1)
        punct = punctuation_set()
        t.length[i] = len(tok)
        t.non_symbol[i] = any(ch not in punct for ch in tok)
        t.alpha[i] = any(ch.isalpha() for ch in tok)
        t.stop[i] = tok in STOP_WORDS
        t.sent_punct[i] = tok in self._sent_chars  # type: ignore[operator]
        t.is_punct[i] = lex_is_punct
        h, p = 0, 1
        for ch in tok:
            h = (h * _BASE + ord(ch)) & _MASK
            p = (p * _BASE) & _MASK
        t.chash[i], t.cpow[i] = h, p
        t.n = i + 1
        return i

    def _fill(self, missing: list[str]) -> None:
        """Tokenise the unseen chunks of one document in a single spaCy call (chunks joined by one
        space, which spaCy consumes as the previous token's trailing space)."""
        nlp = _spacy()
        if self._sent_chars is None:
            from spacy.pipeline.sentencizer import Sentencizer  # part of spaCy, loaded above

            self._sent_chars = frozenset(Sentencizer.default_punct_chars)
        doc = nlp.tokenizer(" ".join(missing))
        k, end, cur = 0, len(missing[0]), []
        for tok in doc:
            while tok.idx >= end:  # the token belongs to a later chunk
                self.chunks[missing[k]] = tuple(cur)
                k, cur = k + 1, []
                end += 1 + len(missing[k])
            text = tok.text
            if text.strip():  # datatrove's strip_strings drops whitespace tokens
                cur.append(self._token_id(text.strip(), tok.is_punct))
        self.chunks[missing[k]] = tuple(cur)
        for rest in missing[k + 1 :]:
            self.chunks[rest] = ()

    def words(self, chunks: list[str]) -> np.ndarray:
        """spaCy token ids of a text given its whitespace chunks (`text.split()`)."""
        memo = self.chunks
        missing = [c for c in dict.fromkeys(chunks) if c not in memo]
        if missing:
            self._fill(missing)
        out: list[int] = []
        for c in chunks:
            out.extend(memo[c])
        return np.fromiter(out, dtype=np.int64, count=len(out))

    def maybe_reset(self) -> None:
        if len(self.chunks) > MAX_CHUNKS:
            self.reset()


def sentence_count(vocab: ChunkVocab, line: str) -> int:
    """Sentences spaCy's Sentencizer finds in one line (spacy/pipeline/sentencizer.pyx, `predict`):
    a new sentence starts at the first token that is neither punctuation nor a sentence-final
    character after a sentence-final character. A whitespace run other than one single space is a
    token of its own in spaCy (not punctuation), so it can start a sentence too."""
    chunks = line.split()
    if " ".join(chunks) == line:  # single spaces only (most lines): no whitespace tokens
        if not chunks:
            return 0
        t = vocab.table
        return int(sentence_starts(vocab.words(chunks), t.is_punct, t.sent_punct))
    parts: list[str | None] = []  # chunks, None for a whitespace token
    for m in _RUNS.finditer(line):
        run = m.group()
        if not run[0].isspace():
            parts.append(run)
        elif not (m.start() > 0 and run == " "):
            parts.append(None)
    if not parts:
        return 0
    vocab.words([p for p in parts if p is not None])  # fills the memo
    t, memo = vocab.table, vocab.chunks
    count, seen_period = 1, False
    for p in parts:
        for tid in (-1,) if p is None else memo[p]:
            punct = tid >= 0 and bool(t.is_punct[tid])
            final = tid >= 0 and bool(t.sent_punct[tid])
            if seen_period and not punct and not final:
                count += 1
                seen_period = False
            elif final:
                seen_period = True
    return count


_RUNS = re.compile(r"\s+|\S+")
