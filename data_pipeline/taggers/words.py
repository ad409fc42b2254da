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
from itertools import repeat

try:  # the stdlib's regex parser: which characters an affix can start or end with, read off
    from re import _constants as _C  # spaCy's own compiled patterns (Python 3.11+ names)
    from re import _parser
except ImportError:  # Python 3.10
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

import numpy as np

from .affixes import Tables, build_tables, split_chunks
from .kernels import code_points, line_sentence_starts, token_hashes
from .punctuation import PUNCTUATION_SET, TERMINAL_PUNCTUATION

# spaCy is the reference's tokenizer; importing it costs ~1 s, so it loads on first use (taggers
# that need no spaCy words, e.g. the Dolma reading, never pay for it)
_NLP = None
IDX = LENGTH = IS_PUNCT = 0  # spacy.attrs ids, set with _NLP
_FAST: FastSplit | None = None
_TABLES: Tables | None = None  # spaCy's affix patterns compiled (affixes.py); None: FastSplit only
_SENT_CHARS: frozenset[str] = frozenset()  # spaCy Sentencizer.default_punct_chars

# datatrove/utils/text.py:13-181: PUNCTUATION_SET = PUNCTUATION | TERMINAL_PUNCTUATION
_PUNCT_SET: frozenset[str] | None = None
_TERMINAL: tuple[str, ...] | None = None
_PUNCT_CHARS = "".join(sorted(PUNCTUATION_SET))
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

# Bound on the memo (distinct chunks). Past it the memo and the ids start afresh between two
# documents: memory stays bounded on any corpus (about 200 bytes per entry: ~200 MB at 1M).
MAX_CHUNKS = 1_000_000


def _spacy():
    global _NLP, _PUNCT_SET, _TERMINAL, IDX, LENGTH, IS_PUNCT, _FAST, _SENT_CHARS, _TABLES
    if _NLP is None:
        import spacy  # heavy optional import (see above)
        from spacy import attrs
        from spacy.pipeline.sentencizer import Sentencizer

        _NLP = spacy.blank("en")
        IDX, LENGTH, IS_PUNCT = attrs.IDX, attrs.LENGTH, attrs.IS_PUNCT
        _PUNCT_SET = PUNCTUATION_SET
        _TERMINAL = tuple(sorted(TERMINAL_PUNCTUATION))
        # built once per process (it reads spaCy's compiled patterns), kept across memo resets
        _FAST = FastSplit(_NLP, IS_PUNCT)
        _TABLES = build_tables(_NLP)
        _SENT_CHARS = frozenset(Sentencizer.default_punct_chars)
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


_REPEATS = tuple(
    getattr(_C, name)
    for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")  # the last is Python 3.11+
    if hasattr(_C, name)
)


def _edge_ranges(seq, last: bool) -> list[tuple[int, int]] | None:
    """Code point ranges the first (or last) character of any match of a parsed regex sequence
    lies in; None where that cannot be read off (categories such as \\w, negated sets, an element
    that can be empty): the caller then always runs the regex."""
    items = list(seq)
    for op, av in reversed(items) if last else items:
        if op in (_C.ASSERT, _C.ASSERT_NOT, _C.AT):  # zero-width: the match's edge is further in
            continue
        if op is _C.LITERAL:
            return [(av, av)]
        if op is _C.IN:
            out = []
            for kind, val in av:
                if kind is _C.LITERAL:
                    out.append((val, val))
                elif kind is _C.RANGE:
                    out.append(val)
                else:  # NEGATE, CATEGORY, ...
                    return None
            return out
        if op is _C.BRANCH:
            out = []
            for branch in av[1]:
                r = _edge_ranges(branch, last)
                if r is None:
                    return None
                out += r
            return out
        if op is _C.SUBPATTERN:
            _group, add_flags, del_flags, inner = av
            if add_flags or del_flags or inner.getwidth()[0] == 0:
                return None
            return _edge_ranges(inner, last)
        if op in _REPEATS:
            lo, _hi, inner = av
            return _edge_ranges(inner, last) if lo > 0 else None
        return None
    return None


def _edge_class(compiled: re.Pattern | None, last: bool) -> re.Pattern | None:
    """One character class holding every character that can start (or end) a match of
    `compiled`, a `|` of alternatives as spaCy compiles its affix lists; None if not readable."""
    if compiled is None or compiled.flags & (re.IGNORECASE | re.VERBOSE):
        return None
    tree = _parser.parse(compiled.pattern, compiled.flags)
    if tree.getwidth()[0] == 0:  # some alternative matches the empty string
        return None
    ranges = _edge_ranges(tree, last)
    if ranges is None:
        return None
    body = "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )
    return re.compile(f"[{body}]")


def _edge_chars(compiled: re.Pattern | None, last: bool) -> frozenset[str] | None:
    """Those characters as a set (a membership test costs less than a regex call); None if they
    cannot be read or are too many to hold."""
    if compiled is None or compiled.flags & (re.IGNORECASE | re.VERBOSE):
        return None
    tree = _parser.parse(compiled.pattern, compiled.flags)
    ranges = _edge_ranges(tree, last) if tree.getwidth()[0] > 0 else None
    if ranges is None or sum(b - a + 1 for a, b in ranges) > 100_000:
        return None
    return frozenset(chr(c) for a, b in ranges for c in range(a, b + 1))


def _suffix_window(
    nlp,
) -> tuple[int, re.Pattern, re.Pattern | None, frozenset[str] | None] | None:
    """spaCy's suffix regex split into its alternatives of bounded width (and that width) and
    those of unbounded width, if the tokenizer's pattern is exactly spaCy's join of the language's
    suffix list (`"|".join(piece + "$")`, spacy/util.py compile_suffix_regex); else None."""
    compiled = getattr(nlp.tokenizer.suffix_search, "__self__", None)
    pieces = [p for p in nlp.Defaults.suffixes or () if p.strip()]
    if compiled is None or not pieces or "|".join(p + "$" for p in pieces) != compiled.pattern:
        return None
    bounded, unbounded, width = [], [], 0
    for p in pieces:
        hi = _parser.parse(p + "$", compiled.flags).getwidth()[1]
        if hi >= _C.MAXREPEAT:
            unbounded.append(p + "$")
        else:
            bounded.append(p + "$")
            width = max(width, hi)
    if not bounded:
        return None
    rest = re.compile("|".join(unbounded), compiled.flags) if unbounded else None
    return (
        width,
        re.compile("|".join(bounded), compiled.flags),
        rest,
        _edge_chars(rest, last=True),  # what they can end with (a run of dots: ".")
    )


class FastSplit:
    """spaCy's tokens of a whitespace chunk, from spaCy's own tables without running spaCy.

    spaCy tokenises a chunk `c` (spacy/tokenizer.pyx, `_split_affixes` then `_attach_tokens`) by
    peeling prefixes (`prefix_search`) and suffixes (`suffix_search`) off until none matches, then
    cutting what is left at its infixes (`infix_finditer`) unless `url_match` takes it whole; its
    special cases (`tokenizer.rules`: contractions with and without apostrophe such as "don't",
    "dont", "cannot", "gonna", abbreviations, emoticons) interrupt that at any step, and its
    special-case matcher (`_apply_special_cases`) then merges token runs whose text is a rule key.
    `split` walks the same steps with the same regexes and gives up (returns None: spaCy decides)
    wherever a special case could take part:
    - the tokenizer has a `token_match` (the blank English one has none);
    - `c`, or any string the walk reaches, is a key of the rules;
    - the text of any run of consecutive result tokens is a key of the rules (a matcher span in
      the chunk). A span across chunks holds a space and the only keys with whitespace are
      whitespace alone, so no context outside the chunk can change a claimed result.
    IS_PUNCT is spaCy's own lexeme attribute function (`vocab.lex_attr_getters[IS_PUNCT]`, which
    `Vocab._new_lexeme` applies), called on the token string. tests/data_pipeline/test_taggers.py
    checks every claim against spaCy on every distinct chunk of the bundled samples (13 languages)
    and on a list of tricky chunks."""

    def __init__(self, nlp, is_punct_attr: int) -> None:
        tk = nlp.tokenizer
        self.enabled = tk.token_match is None
        self.rules = frozenset(tk.rules)
        self.prefix = tk.prefix_search or (lambda s: None)
        self.suffix = tk.suffix_search or (lambda s: None)
        self.infix = tk.infix_finditer or (lambda s: iter(()))
        self.url = tk.url_match or (lambda s: None)
        self.is_punct = nlp.vocab.lex_attr_getters[is_punct_attr]
        # a chunk whose last character no suffix can end with has no suffix, one without a
        # character any infix can start with has no infix: two quick tests before the regexes
        # (spaCy's suffix and infix searches try every position of the string)
        self._suffix_end = _edge_class(getattr(tk.suffix_search, "__self__", None), last=True)
        self._infix_start = _edge_class(getattr(tk.infix_finditer, "__self__", None), last=False)
        self._window = _suffix_window(nlp)
        # the first and last characters as sets: a chunk whose first character no prefix can
        # start with has no prefix (prefix_search is anchored at the start)
        self._prefix_chars = _edge_chars(getattr(tk.prefix_search, "__self__", None), last=False)
        self._suffix_chars = _edge_chars(getattr(tk.suffix_search, "__self__", None), last=True)
        self._infix_chars = _edge_chars(getattr(tk.infix_finditer, "__self__", None), last=False)

    def _no_infix_char(self, string: str) -> bool:
        ic = self._infix_chars
        if ic is not None:
            return ic.isdisjoint(string)
        return self._infix_start is not None and self._infix_start.search(string) is None

    def _prefix_len(self, string: str) -> int:
        """find_prefix: the length of the prefix match at the start."""
        pc = self._prefix_chars
        if not string or (pc is not None and string[0] not in pc):
            return 0
        m = self.prefix(string)
        return m.end() - m.start() if m is not None else 0

    def _suffix_len(self, string: str) -> int:
        """find_suffix: the length of the leftmost suffix match (every alternative ends at `$`)."""
        sc, n = self._suffix_chars, len(string)
        if not n:
            return 0
        if sc is not None:
            if string[-1] not in sc:
                return 0
        elif self._suffix_end is not None and self._suffix_end.match(string, n - 1) is None:
            return 0
        if self._window is None:
            m = self.suffix(string)
            return m.end() - m.start() if m is not None else 0
        # alternatives of at most `width` characters start in the last `width` positions (a
        # search from there still sees the characters before it in lookbehinds); the few of
        # unbounded width (a run of dots) are searched on the whole string
        width, bounded, unbounded, unbounded_end = self._window
        m = bounded.search(string, n - width if n > width else 0)
        start = m.start() if m is not None else n
        if unbounded is not None and (unbounded_end is None or string[-1] in unbounded_end):
            m = unbounded.search(string)
            if m is not None:
                start = min(start, m.start())
        return n - start

    def _affixes(self, string: str) -> tuple[list[str], str, list[str]] | None:
        """`_split_affixes`: (prefixes, what is left, suffixes), None on a special case."""
        rules, prefixes, suffixes = self.rules, [], []
        last = 0
        while string and len(string) != last:
            if string in rules:
                return None
            last = len(string)
            pre_len = self._prefix_len(string)
            if pre_len and string[pre_len:] in rules:
                return None
            suf_len = self._suffix_len(string[pre_len:])
            if suf_len and string[:-suf_len] in rules:
                return None
            if pre_len and suf_len and pre_len + suf_len <= len(string):
                prefixes.append(string[:pre_len])
                suffixes.append(string[-suf_len:])
                string = string[pre_len:-suf_len]
            elif pre_len:
                prefixes.append(string[:pre_len])
                string = string[pre_len:]
            elif suf_len:
                suffixes.append(string[-suf_len:])
                string = string[:-suf_len]
        if string in rules:
            return None
        return prefixes, string, suffixes

    def _infixes(self, string: str) -> list[str]:
        """`_attach_tokens` on the middle: whole if a URL or without infixes, else cut."""
        if self.url(string) is not None:
            return [string]
        if self._no_infix_char(string):
            return [string]
        out: list[str] = []
        start = 0
        for m in self.infix(string):
            i0, i1 = m.start(), m.end()
            if i0 == 0:  # an infix at the very start is skipped (start_before_infixes)
                continue
            if i0 != start:
                out.append(string[start:i0])
            if i0 != i1:
                out.append(string[i0:i1])
            start = i1
        if string[start:]:
            out.append(string[start:])
        return out

    def split(self, c: str) -> tuple[str, ...] | None:
        """The tokens of chunk `c` if spaCy's tables settle them here, else None."""
        if not self.enabled or c in self.rules:
            return None
        # the two common cases in one go: no prefix and no infix, then either no suffix (one
        # token, itself) or a one-character suffix off a word that has none ("word,")
        pc, sc, ic = self._prefix_chars, self._suffix_chars, self._infix_chars
        if pc is not None and sc is not None and ic is not None:
            if c[0] not in pc or self.prefix(c) is None:
                n = len(c)
                if ic.isdisjoint(c):
                    if c[-1] not in sc:
                        return (c,)
                    suf = self._suffix_len(c)
                    if suf == 0:
                        return (c,)
                elif n > 1 and ic.isdisjoint(c[:-1]):  # the only infix character is last
                    suf = self._suffix_len(c)
                else:
                    suf = 0
                if suf == 1 and n > 1:
                    w = c[:-1]
                    # w has no infix character: one token whether url_match takes it or not
                    if (
                        w not in self.rules
                        and (w[0] not in pc or self.prefix(w) is None)
                        and self._suffix_len(w) == 0
                    ):
                        return (w, c[-1])
        parts = self._affixes(c)
        if parts is None:
            return None
        prefixes, middle, suffixes = parts
        toks = prefixes + (self._infixes(middle) if middle else []) + suffixes[::-1]
        n = len(toks)
        if n > 1:
            rules = self.rules
            for i in range(n):  # the matcher's spans (single tokens: keys were checked, or one
                acc = toks[i]  # character, which no special case can change)
                if acc in rules and len(acc) > 1:
                    return None
                for j in range(i + 1, n):
                    acc += toks[j]
                    if acc in rules:
                        return None
        return tuple(toks)


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
        sent = _SENT_CHARS
        t.sent_punct[sl] = [tok in sent for tok in toks]
        t.is_punct[sl] = punct
        cps = code_points("".join(toks))
        lens = t.length[sl]
        token_hashes(cps, lens, t.chash[sl], t.cpow[sl])
        t.n = n

    def _store(
        self, tokens: list[str], counts: list[int], chunks: list[str], spacy_punct: dict
    ) -> None:
        """Ids for new chunks whose tokens are `tokens`, `counts[k]` for chunks[k], one after the
        other (new token strings get ids first). IS_PUNCT: as spaCy's doc said for the tokens it
        made, else spaCy's lexeme attribute function."""
        ids = self.ids
        new = [t for t in dict.fromkeys(tokens) if t not in ids]
        if new:
            is_punct = _FAST.is_punct  # type: ignore[union-attr]
            # IS_PUNCT needs every character in category P: a letter or digit first says False
            flags = [
                spacy_punct[t] if t in spacy_punct else (not t[0].isalnum() and bool(is_punct(t)))
                for t in new
            ]
            self._add_tokens(new, flags)
        k0 = len(self.chunk_ids)
        m = len(chunks)
        if k0 + m > len(self._start):
            size = max(k0 + m, 2 * len(self._start))
            self._start = np.resize(self._start, size)
            self._count = np.resize(self._count, size)
        flat = list(map(ids.__getitem__, tokens))
        n = np.array(counts, dtype=np.int64)
        f0 = self._n_flat
        if f0 + len(flat) > len(self._flat):
            self._flat = np.resize(self._flat, max(f0 + len(flat), 2 * len(self._flat)))
        self._flat[f0 : f0 + len(flat)] = flat
        self._n_flat = f0 + len(flat)
        self._count[k0 : k0 + m] = n
        self._start[k0 : k0 + m] = f0 + np.cumsum(n) - n
        self.chunk_ids.update(zip(chunks, range(k0, k0 + m)))

    def _fill(self, missing: list[str]) -> None:
        """Tokenise the unseen chunks of one document: the compiled affix walk (affixes.py) settles
        most in one call, FastSplit those it leaves (infix splits of URLs, possible special cases),
        the rest go to a single spaCy call (chunks joined by one space, which spaCy consumes as
        the previous token's trailing space), read back as arrays (offsets, lengths, IS_PUNCT).
        Chunk ids follow the order they are stored in (settled ones first)."""
        nlp = _spacy()
        fast = _FAST
        if _TABLES is not None:
            tokens, counts, settled = split_chunks(_TABLES, missing, fast.url)  # type: ignore[union-attr]
            done = [c for c, ok in zip(missing, settled) if ok]
            counts = [n for n in counts if n]
            left = [c for c, ok in zip(missing, settled) if not ok]
        else:
            tokens, counts, done, left = [], [], [], missing
        rest = []
        for c in left:
            toks = fast.split(c)  # type: ignore[union-attr]
            if toks is None:
                rest.append(c)
            else:
                done.append(c)
                tokens.extend(toks)
                counts.append(len(toks))
        punct: dict[str, bool] = {}
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
                    punct[tok] = bool(p)
            for c, toks in zip(rest, per):
                done.append(c)
                tokens.extend(toks)
                counts.append(len(toks))
        self._store(tokens, counts, done, punct)

    def chunk_index(self, chunks: list[str]) -> np.ndarray:
        """Chunk ids of `chunks`, tokenising the unseen ones first."""
        ids = self.chunk_ids
        cids = np.fromiter(map(ids.get, chunks, repeat(-1)), dtype=np.int64, count=len(chunks))
        unseen = np.flatnonzero(cids < 0).tolist()
        if unseen:  # look up again only where the memo had nothing
            self._fill(list(dict.fromkeys([chunks[i] for i in unseen])))
            cids[unseen] = [ids[chunks[i]] for i in unseen]
        return cids

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


def sentence_counts(
    vocab: ChunkVocab,
    lines: list[str],
    words_of: list[list[str]] | None = None,
    cids: np.ndarray | None = None,
) -> tuple[int, int]:
    """(sentences, spaCy tokens) of the stripped `lines`, each its own doc: the sentences spaCy's
    Sentencizer (spacy/pipeline/sentencizer.pyx, `predict`) finds, summed; a new sentence starts
    at the first token that is neither punctuation nor sentence-final after a sentence-final
    token. Between two chunks spaCy makes a whitespace token (not punctuation) of any gap other
    than one single space, so it can start a sentence too. The lines' `split()` may come in
    `words_of`, their chunk ids in `cids` (else looked up, all chunks in one call); one compiled
    loop walks them."""
    chunks: list[str] = []
    sizes: list[int] = []
    gaps: list[tuple[int, list[bool]]] = []  # (first chunk, whitespace token after each chunk)
    for k, line in enumerate(lines):
        words = words_of[k] if words_of is not None else line.split()
        if " ".join(words) != line:  # not single spaces only: some gap is a token
            gaps.append((len(chunks), [g != " " for g in _GAPS.findall(line)]))
        chunks.extend(words)
        sizes.append(len(words))
    if not chunks:
        return 0, 0
    if cids is None:
        cids = vocab.chunk_index(chunks)
    ws_after = np.zeros(len(chunks), dtype=np.bool_)
    for first, flags in gaps:
        ws_after[first : first + len(flags)] = flags
    t = vocab.table
    sentences = int(
        line_sentence_starts(
            cids,
            ws_after,
            np.array(sizes, dtype=np.int64),
            vocab._start,
            vocab._count,
            vocab._flat,
            t.is_punct,
            t.sent_punct,
        )
    )
    return sentences, int(vocab._count[cids].sum())


_GAPS = re.compile(r"\s+")
