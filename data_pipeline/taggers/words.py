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

from .kernels import code_points, line_sentence_starts, sentence_starts, token_hashes
from .punctuation import PUNCTUATION_SET, TERMINAL_PUNCTUATION

# spaCy is the reference's tokenizer; importing it costs ~1 s, so it loads on first use (taggers
# that need no spaCy words, e.g. the Dolma reading, never pay for it)
_NLP = None
IDX = LENGTH = IS_PUNCT = 0  # spacy.attrs ids, set with _NLP

# datatrove/utils/text.py:13-181: PUNCTUATION_SET = PUNCTUATION | TERMINAL_PUNCTUATION
_PUNCT_SET: frozenset[str] | None = None
_TERMINAL: tuple[str, ...] | None = None
_PUNCT_CHARS = "".join(sorted(PUNCTUATION_SET))
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

# Bound on the memo (distinct chunks). Past it the memo and the ids start afresh between two
# documents: memory stays bounded on any corpus (about 200 bytes per entry: ~200 MB at 1M).
MAX_CHUNKS = 1_000_000


def _spacy():
    global _NLP, _PUNCT_SET, _TERMINAL, IDX, LENGTH, IS_PUNCT
    if _NLP is None:
        import spacy  # heavy optional import (see above)
        from spacy import attrs

        _NLP = spacy.blank("en")
        IDX, LENGTH, IS_PUNCT = attrs.IDX, attrs.LENGTH, attrs.IS_PUNCT
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


class FastSplit:
    """The spaCy tokens of a chunk that spaCy's own tables settle without running spaCy.

    A chunk is `[a] w [b]`: `w` letters only (str.isalpha), `a` and `b` at most one character
    each. Walking spaCy's `_split_affixes` / `_attach_tokens` (spacy/tokenizer.pyx) on it, the
    tokens are `[a, w, b]` exactly when
    - the tokenizer has no `token_match` (the blank English one has none; else no fast path),
    - none of `c`, `c` without `a`, `c` without `b` is a special case (`tokenizer.rules`: this
      also keeps out every special-case phrase the `_special_matcher` could merge, since its
      patterns are those keys' own tokens),
    - `prefix_search(c)` matches exactly `a` (or nothing when there is no `a`) and
      `suffix_search(c[len(a):])` exactly `b` (or nothing),
    - `w` itself is one token: not a special case, and no prefix, suffix, infix or URL
      pattern matches it.
    spaCy's special-case matcher (`_apply_special_cases`) only rewrites a matched span whose
    text is a key of the rules; within the chunk those spans are `c`, `aw`, `wb` or one token, so
    the claim holds in any context (a match across chunks holds a space, and the only keys with
    whitespace are whitespace alone).
    spaCy's lexeme flag IS_PUNCT (all characters of Unicode category P, spacy/lang/lex_attrs.py)
    is False for `w` (letters are category L) and is read from spaCy's vocabulary for `a`, `b`.
    Every other chunk goes to spaCy. tests/data_pipeline/test_taggers.py checks the claim against
    spaCy on every distinct chunk of the bundled samples and on a list of tricky chunks."""

    def __init__(self, nlp) -> None:
        tk = nlp.tokenizer
        self.enabled = tk.token_match is None
        self.rules = frozenset(tk.rules)
        self.prefix = tk.prefix_search
        self.suffix = tk.suffix_search
        self.infix = tk.infix_finditer
        self.url = tk.url_match
        self.vocab = nlp.vocab
        self._word: dict[str, bool] = {}  # w -> "one token equal to itself"
        self._punct: dict[str, bool] = {}

    def one_token(self, w: str) -> bool:
        ok = self._word.get(w)
        if ok is None:
            ok = (
                w not in self.rules
                and self.prefix(w) is None
                and self.suffix(w) is None
                and next(self.infix(w), None) is None
                and (self.url is None or self.url(w) is None)
            )
            self._word[w] = ok
        return ok

    def is_punct(self, ch: str) -> bool:
        p = self._punct.get(ch)
        if p is None:
            p = self._punct[ch] = bool(self.vocab[ch].is_punct)
        return p

    def split(self, c: str) -> tuple[str, ...] | None:
        """The tokens of chunk `c` if they are settled here, else None (spaCy decides)."""
        if not self.enabled or c in self.rules:
            return None
        if c.isalpha():
            return (c,) if self.one_token(c) else None
        n = len(c)
        if n < 2:
            return None
        if c[1:].isalpha():
            pre, suf = 1, 0
        elif c[:-1].isalpha():
            pre, suf = 0, 1
        elif n > 2 and c[1:-1].isalpha():
            pre, suf = 1, 1
        else:
            return None
        m = self.prefix(c)
        if (m.end() if m is not None else 0) != pre:
            return None
        rest = c[pre:]
        m = self.suffix(rest)
        if (len(m.group()) if m is not None else 0) != suf:
            return None
        w = c[pre : n - suf]
        if (pre and c[1:] in self.rules) or (suf and c[:-1] in self.rules):
            return None
        if not self.one_token(w):
            return None
        return ((c[0],) if pre else ()) + (w,) + ((c[-1],) if suf else ())


class ChunkVocab:
    """Memo of whitespace chunk -> spaCy token ids, and token string -> id with properties.

    A chunk's tokens are a slice of one flat id array (`_flat[_start[k] : _start[k] + _count[k]]`
    for chunk id k), so the words of a document are one numpy gather over its chunk ids."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.chunk_ids: dict[str, int] = {}
        self._start = np.zeros(1 << 14, dtype=np.int64)
        self._count = np.zeros(1 << 14, dtype=np.int64)
        self._flat = np.zeros(1 << 15, dtype=np.int64)
        self._n_flat = 0
        self.ids: dict[str, int] = {}
        self.strings: list[str] = []  # id -> token
        self.table = TokenTable.empty()
        self._fast: FastSplit | None = None
        self._sent_chars: frozenset[str] | None = None

    def _add_tokens(self, toks: list[str], punct: list[bool]) -> None:
        """Give the new token strings ids and their properties, all at once."""
        i0 = len(self.strings)
        for k, tok in enumerate(toks):
            self.ids[tok] = i0 + k
        self.strings.extend(toks)
        t = self.table
        n = i0 + len(toks)
        t.grow(n)
        sl = slice(i0, n)
        t.length[sl] = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
        # a character outside the set survives str.strip(set): "any character not punctuation"
        chars = _PUNCT_CHARS
        t.non_symbol[sl] = [bool(tok.strip(chars)) for tok in toks]
        t.alpha[sl] = [tok.isalpha() or any(map(str.isalpha, tok)) for tok in toks]
        t.stop[sl] = [tok in STOP_WORDS for tok in toks]
        sent = self._sent_chars
        t.sent_punct[sl] = [tok in sent for tok in toks]  # type: ignore[operator]
        t.is_punct[sl] = punct
        cps = code_points("".join(toks))
        lens = t.length[sl]
        token_hashes(cps, lens, t.chash[sl], t.cpow[sl])
        t.n = n

    def _store(self, chunk_tokens: list[tuple[str, ...]], missing: list[str], punct: dict) -> None:
        """Ids for the tokens of each new chunk (new token strings get ids first)."""
        ids = self.ids
        new: list[str] = []
        new_punct: list[bool] = []
        seen: set[str] = set()
        for toks in chunk_tokens:
            for tok in toks:
                if tok not in ids and tok not in seen:
                    seen.add(tok)
                    new.append(tok)
                    new_punct.append(punct.get(tok, False))
        if new:
            self._add_tokens(new, new_punct)
        k0 = len(self.chunk_ids)
        m = len(missing)
        if k0 + m > len(self._start):
            size = max(k0 + m, 2 * len(self._start))
            self._start = np.resize(self._start, size)
            self._count = np.resize(self._count, size)
        flat = [ids[tok] for toks in chunk_tokens for tok in toks]
        counts = np.fromiter(map(len, chunk_tokens), dtype=np.int64, count=m)
        f0 = self._n_flat
        if f0 + len(flat) > len(self._flat):
            self._flat = np.resize(self._flat, max(f0 + len(flat), 2 * len(self._flat)))
        self._flat[f0 : f0 + len(flat)] = flat
        self._n_flat = f0 + len(flat)
        self._count[k0 : k0 + m] = counts
        self._start[k0 : k0 + m] = f0 + np.cumsum(counts) - counts
        for k, c in enumerate(missing):
            self.chunk_ids[c] = k0 + k

    def _fill(self, missing: list[str]) -> None:
        """Tokenise the unseen chunks of one document: those FastSplit settles directly, the rest
        in a single spaCy call (chunks joined by one space, which spaCy consumes as the previous
        token's trailing space), read back as arrays (offsets, lengths, IS_PUNCT)."""
        nlp = _spacy()
        if self._fast is None:
            from spacy.pipeline.sentencizer import Sentencizer  # part of spaCy, loaded above

            self._sent_chars = frozenset(Sentencizer.default_punct_chars)
            self._fast = FastSplit(nlp)
        fast = self._fast
        split = fast.split
        settled = [split(c) for c in missing]
        punct: dict[str, bool] = {}
        for toks in settled:
            if toks is not None and len(toks) > 1:
                for tok in (toks[0], toks[-1]):
                    if len(tok) == 1 and not tok.isalpha():
                        punct[tok] = fast.is_punct(tok)
        rest = [c for c, toks in zip(missing, settled) if toks is None]
        if rest:
            joined = " ".join(rest)
            doc = nlp.tokenizer(joined)
            arr = doc.to_array([IDX, LENGTH, IS_PUNCT])
            lens = np.fromiter(map(len, rest), dtype=np.int64, count=len(rest))
            ends = np.cumsum(lens + 1) - 1  # end offset of each chunk in `joined`
            owner = np.searchsorted(ends, arr[:, 0], side="right").tolist()
            per: list[list[str]] = [[] for _ in rest]
            for (idx, n, p), k in zip(arr.tolist(), owner):
                tok = joined[idx : idx + n].strip()
                if tok:  # datatrove's strip_strings drops whitespace tokens
                    per[k].append(tok)
                    if p:
                        punct[tok] = True
            it = iter(per)
            settled = [tuple(next(it)) if toks is None else toks for toks in settled]
        self._store(settled, missing, punct)  # type: ignore[arg-type]

    def chunk_index(self, chunks: list[str]) -> np.ndarray:
        """Chunk ids of `chunks`, tokenising the unseen ones first."""
        get = self.chunk_ids.get
        cids = list(map(get, chunks))
        if None in cids:
            self._fill([c for c in dict.fromkeys(chunks) if c not in self.chunk_ids])
            cids = list(map(self.chunk_ids.__getitem__, chunks))
        return np.array(cids, dtype=np.int64)

    def gather(self, cids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, tokens per chunk) of a chunk id sequence."""
        counts = self._count[cids]
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64), counts
        starts = self._start[cids]
        offsets = np.cumsum(counts) - counts
        pos = np.repeat(starts - offsets, counts) + np.arange(total, dtype=np.int64)
        return self._flat[pos], counts

    def words(self, chunks: list[str]) -> np.ndarray:
        """spaCy token ids of a text given its whitespace chunks (`text.split()`)."""
        if not chunks:
            return np.zeros(0, dtype=np.int64)
        return self.gather(self.chunk_index(chunks))[0]

    def words_and_counts(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and the number of tokens of each chunk."""
        if not chunks:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return self.gather(self.chunk_index(chunks))

    def word_count(self, chunks: list[str]) -> int:
        """How many spaCy tokens the chunks make."""
        if not chunks:
            return 0
        return int(self._count[self.chunk_index(chunks)].sum())

    def chunk_tokens(self, chunk: str) -> np.ndarray:
        """Token ids of one chunk already in the memo."""
        k = self.chunk_ids[chunk]
        s = self._start[k]
        return self._flat[s : s + self._count[k]]

    def maybe_reset(self) -> None:
        if len(self.chunk_ids) > MAX_CHUNKS:
            self.reset()


def sentence_counts(vocab: ChunkVocab, lines: list[str]) -> int:
    """`sentence_count` summed over `lines`, in one pass: the lines' chunks go to the memo in one
    call and one compiled loop walks them (a whitespace token is chunk id -1)."""
    parts: list[str | None] = []
    sizes: list[int] = []
    for line in lines:
        chunks = line.split()
        if " ".join(chunks) == line:  # single spaces only (most lines): no whitespace tokens
            parts.extend(chunks)
            sizes.append(len(chunks))
            continue
        n = len(parts)
        for m in _RUNS.finditer(line):
            run = m.group()
            if not run[0].isspace():
                parts.append(run)
            elif not (m.start() > 0 and run == " "):
                parts.append(None)
        sizes.append(len(parts) - n)
    if not parts:
        return 0
    words = [p for p in parts if p is not None]
    cids = np.full(len(parts), -1, dtype=np.int64)
    if words:
        known = vocab.chunk_index(words)
        if len(words) == len(parts):
            cids = known
        else:
            cids[np.fromiter((p is not None for p in parts), np.bool_, len(parts))] = known
    t = vocab.table
    return int(
        line_sentence_starts(
            cids,
            np.array(sizes, dtype=np.int64),
            vocab._start,
            vocab._count,
            vocab._flat,
            t.is_punct,
            t.sent_punct,
        )
    )


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
    t = vocab.table
    count, seen_period = 1, False
    for p in parts:
        for tid in (-1,) if p is None else vocab.chunk_tokens(p).tolist():
            punct = tid >= 0 and bool(t.is_punct[tid])
            final = tid >= 0 and bool(t.sent_punct[tid])
            if seen_period and not punct and not final:
                count += 1
                seen_period = False
            elif final:
                seen_period = True
    return count


_RUNS = re.compile(r"\s+|\S+")
