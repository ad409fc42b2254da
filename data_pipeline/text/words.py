"""Words of a document, split once and shared by every tagger.

Two tokenisations are needed because the references disagree on what a word is:

- datatrove (FineWeb) splits with spaCy's blank English tokenizer (`datatrove/utils/text.py:308`,
  `split_into_words` -> `utils/word_tokenizers.py:151` `SpaCyTokenizer.word_tokenize`), so
  punctuation marks and clitics ("n't") are words of their own;
- Dolma's Gopher tagger uses `text.split()` (`dolma/taggers/gopher.py:146`).

spaCy's tokenizer cuts the text at whitespace first and tokenises every whitespace-free chunk on its
own (prefixes, suffixes, infixes, special cases: `spacy/tokenizer.pyx`, `_tokenize_affixes`), so the
tokens of a document are the concatenation of the tokens of its chunks. `ChunkVocab` memoises that:
each distinct chunk is tokenised once, by spaCy's affix walk compiled from spaCy's own patterns
(affixes.py, chunk_memo.py), else by `FastSplit` (the same walk in Python, with `url_match`), else
by spaCy itself (special cases; many chunks of a document in one call); every later occurrence is a
lookup in the compiled memo. The result is exactly spaCy's token list (checked against datatrove's
own `split_into_words` in tests/data_pipeline/test_agreement.py) at a fraction of the cost, because
datatrove runs the whole spaCy pipeline three times per document.

Tokens become integer ids with per-id properties in numpy arrays (length, "has a non-punctuation
character", "has a letter", stop word, sentencizer flags, a hash of the characters), so the
per-word and n-gram statistics are compiled loops over ids (kernels.py).
"""

from __future__ import annotations

import re

try:  # the stdlib's regex parser: which characters an affix can start or end with, read off
    from re import _constants as _C  # spaCy's own compiled patterns (Python 3.11+ names)
    from re import _parser
except ImportError:  # Python 3.10
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

import numpy as np

from .affixes import build_tables
from .chunk_memo import MemoState, Tables, add_chunks, char_flags, chunk_spans, index_chunks
from .kernels import code_points, line_sentence_starts
from .punctuation import PUNCTUATION_SET, TERMINAL_PUNCTUATION

# spaCy is the reference's tokenizer; importing it costs ~1 s, so it loads on first use (taggers
# that need no spaCy words, e.g. the Dolma reading, never pay for it)
_NLP = None
IDX = LENGTH = IS_PUNCT = 0  # spacy.attrs ids, set with _NLP
_FAST: FastSplit | None = None
_TABLES: Tables | None = None  # spaCy's affix patterns compiled (affixes.py); None: FastSplit only
_SENT_CHARS: frozenset[str] = frozenset()  # spaCy Sentencizer.default_punct_chars
# what the compiled memo reads (chunk_memo.py): the walk's tables, per code point flags, the stop
# words and the characters a URL needs, as arrays; set with _NLP
_MEMO_ARGS: tuple = ()

# datatrove/utils/text.py:13-181: TERMINAL_PUNCTUATION (FineWeb's line_punct rule), set with _NLP
_TERMINAL: tuple[str, ...] | None = None
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

# Bound on the memo (distinct chunks). Past it the memo and the ids start afresh between two
# documents: memory stays bounded on any corpus (about 200 bytes per entry: ~200 MB at 1M).
MAX_CHUNKS = 1_000_000
# room the memo's arrays get ahead of a document (chunks, code points): more only as it fills them
SLACK = (1 << 14, 1 << 16)


def _spacy():
    global _NLP, _TERMINAL, IDX, LENGTH, IS_PUNCT, _FAST, _SENT_CHARS, _TABLES
    global _MEMO_ARGS
    if _NLP is None:
        import spacy  # heavy optional import (see above)
        from spacy import attrs
        from spacy.lang.lex_attrs import is_punct
        from spacy.pipeline.sentencizer import Sentencizer

        _NLP = spacy.blank("en")
        IDX, LENGTH, IS_PUNCT = attrs.IDX, attrs.LENGTH, attrs.IS_PUNCT
        _TERMINAL = tuple(sorted(TERMINAL_PUNCTUATION))
        # built once per process (it reads spaCy's compiled patterns), kept across memo resets
        _FAST = FastSplit(_NLP, IS_PUNCT)
        _TABLES = build_tables(_NLP)
        _SENT_CHARS = frozenset(Sentencizer.default_punct_chars)
        # the memo computes IS_PUNCT and the sentencizer flag per code point: spaCy's own rules
        if _NLP.vocab.lex_attr_getters[IS_PUNCT] is not is_punct or any(
            len(c) != 1 for c in _SENT_CHARS
        ):
            raise RuntimeError(
                "this spaCy's IS_PUNCT getter or Sentencizer punctuation differs from the one the "
                "word memo reproduces (spacy/lang/lex_attrs.py is_punct, single characters)"
            )
        t = _TABLES
        walk = (t.ints, t.bits, t.gate, t.rules) if t is not None else _NO_WALK
        stop = sorted(STOP_WORDS)
        _MEMO_ARGS = (
            walk,
            t is not None,
            char_flags(PUNCTUATION_SET, _SENT_CHARS),
            code_points("".join(stop)).copy(),
            np.cumsum([0] + [len(w) for w in stop], dtype=np.int64),
            np.array(sorted(map(ord, t.url_needs if t is not None else ())), dtype=np.uint32),
        )
    return _NLP


# typed placeholders where spaCy's patterns are not compiled (every unseen chunk goes to Python)
_NO_WALK = (
    np.zeros(16, np.int64),
    np.zeros((1, 1), np.bool_),
    np.zeros((3, 1), np.bool_),
    np.zeros(0, np.uint64),
)


def terminal_punctuation() -> tuple[str, ...]:
    _spacy()
    return _TERMINAL  # type: ignore[return-value]


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
    """Memo of whitespace chunk -> spaCy token ids, token id -> properties and string.

    The tables are compiled (chunk_memo.py): a document's chunks are looked up, and the unseen
    ones the affix walk settles are tokenised and stored, in one call; the rest (FastSplit, then
    one spaCy call) are stored after. A chunk's tokens are a slice of one flat id array
    (`_flat[_start[k] : _start[k] + _count[k]]` for chunk id k), so the words of a document are
    one numpy gather over its chunk ids; `table` holds the per-token property arrays."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.state = MemoState.empty()
        self._strings: list[str] = []

    @property
    def table(self) -> MemoState:
        return self.state

    @property
    def _start(self) -> np.ndarray:
        return self.state.start

    @property
    def _count(self) -> np.ndarray:
        return self.state.count

    @property
    def _flat(self) -> np.ndarray:
        return self.state.flat

    @property
    def n_chunks(self) -> int:
        return int(self.state.n[0])

    @property
    def strings(self) -> list[str]:
        """id -> token string, decoded from the stored code points on demand."""
        st, have = self.state, len(self._strings)
        n = int(st.n[1])
        if have < n:
            at, ln = st.tok_at[have:n], st.length[have:n]
            pos = np.repeat(at - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()))
            text = st.ccp[pos].tobytes().decode("utf-32-le", "surrogatepass")
            ends = np.cumsum(ln).tolist()
            self._strings += [text[a:b] for a, b in zip([0, *ends[:-1]], ends)]
        return self._strings

    def index_text(self, text: str) -> np.ndarray:
        """Chunk ids of text.split(), tokenising the unseen chunks first."""
        nlp = _spacy()
        cp = code_points(text)
        st = self.state
        walk, on, flags, stop_cp, stop_off, url_need = _MEMO_ARGS
        spans = chunk_spans(cp, flags)
        cids = np.full(len(spans), -1, dtype=np.int64)
        k = 0
        while k < len(spans):  # the kernel stops where the memo's arrays are full: grow, go on
            st.reserve(min(len(spans) - k, SLACK[0]), min(len(cp) - int(spans[k, 0]), SLACK[1]))
            st.reserve(1, int(spans[k, 1] - spans[k, 0]))
            k = index_chunks(
                cp, spans, k, cids, st.as_tuple(), walk, on, flags, stop_cp, stop_off, url_need
            )
        unseen = np.flatnonzero(cids < 0).tolist()
        if unseen:
            chunks = [text[a:b] for a, b in spans[unseen].tolist()]
            ids = self._tokenise(nlp, list(dict.fromkeys(chunks)))
            cids[unseen] = [ids[c] for c in chunks]
        return cids

    def _tokenise(self, nlp, chunks: list[str]) -> dict[str, int]:
        """Store chunks the compiled walk left: FastSplit's tokens, else one spaCy call over all
        (chunks joined by one space, which spaCy consumes as the previous token's trailing space,
        read back as arrays of offsets and lengths). Their ids."""
        settled = [_FAST.split(c) for c in chunks]  # type: ignore[union-attr]
        rest = [c for c, toks in zip(chunks, settled) if toks is None]
        if rest:
            joined = " ".join(rest)
            arr = nlp.tokenizer(joined).to_array([IDX, LENGTH])
            lens = np.fromiter(map(len, rest), dtype=np.int64, count=len(rest))
            ends = np.cumsum(lens + 1) - 1  # end offset of each chunk in `joined`
            owner = np.searchsorted(ends, arr[:, 0], side="right").tolist()
            per: list[list[str]] = [[] for _ in rest]
            for (idx, n), k in zip(arr.tolist(), owner):
                tok = joined[idx : idx + n].strip()
                if tok:  # datatrove's strip_strings drops whitespace tokens
                    per[k].append(tok)
            it = iter(per)
            settled = [tuple(next(it)) if toks is None else toks for toks in settled]
        for c, toks in zip(chunks, settled):
            if "".join(toks) != c:  # type: ignore[arg-type]
                raise RuntimeError(f"spaCy's tokens of {c!r} do not spell it: {toks}")
        tokens = [t for toks in settled for t in toks]  # type: ignore[union-attr]
        st = self.state
        st.reserve(len(chunks), sum(map(len, chunks)))
        _, _, flags, stop_cp, stop_off, _ = _MEMO_ARGS
        ids = add_chunks(
            code_points("".join(chunks)),
            np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks)),
            np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)),
            np.fromiter(map(len, settled), dtype=np.int64, count=len(chunks)),  # type: ignore[arg-type]
            st.as_tuple(),
            flags,
            stop_cp,
            stop_off,
        )
        return dict(zip(chunks, ids.tolist()))

    def chunk_index(self, chunks: list[str]) -> np.ndarray:
        """Chunk ids of `chunks` (whitespace-free strings), tokenising the unseen ones first."""
        cids = self.index_text(" ".join(chunks))
        if len(cids) != len(chunks):
            raise ValueError("chunk_index takes whitespace-free chunks (text.split())")
        return cids

    def gather(self, cids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, tokens per chunk) of a chunk id sequence."""
        st = self.state
        counts = st.count[cids]
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64), counts
        offsets = np.cumsum(counts) - counts
        pos = np.repeat(st.start[cids] - offsets, counts) + np.arange(total, dtype=np.int64)
        return st.flat[pos], counts

    def words(self, chunks: list[str]) -> np.ndarray:
        """spaCy token ids of a text given its whitespace chunks (`text.split()`)."""
        if not chunks:
            return np.zeros(0, dtype=np.int64)
        return self.gather(self.chunk_index(chunks))[0]

    def word_count(self, chunks: list[str]) -> int:
        """How many spaCy tokens the chunks make."""
        if not chunks:
            return 0
        return int(self.state.count[self.chunk_index(chunks)].sum())

    def chunk_tokens(self, chunk: str) -> np.ndarray:
        """Token ids of one chunk."""
        k = int(self.chunk_index([chunk])[0])
        s = self.state.start[k]
        return self.state.flat[s : s + self.state.count[k]]

    def maybe_reset(self) -> None:
        if self.n_chunks > MAX_CHUNKS:
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
    return sentence_counts_of(vocab, cids, ws_after, np.array(sizes, dtype=np.int64))


def sentence_counts_of(
    vocab: ChunkVocab, cids: np.ndarray, ws_after: np.ndarray, sizes: np.ndarray
) -> tuple[int, int]:
    """sentence_counts from the lines' chunk ids (line l: the next sizes[l]) and, per chunk,
    whether a gap other than one space follows it inside its line."""
    st = vocab.state
    sentences = line_sentence_starts(
        cids, ws_after, sizes, st.start, st.count, st.flat, st.is_punct, st.sent_punct
    )
    return int(sentences), int(st.count[cids].sum())


_GAPS = re.compile(r"\s+")
