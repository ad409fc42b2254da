"""C4's line and page rules (Raffel et al. 2020), the quality tagger's `c4__*` attributes, in two
readings.

- `DatatroveC4`: datatrove 0.10.1's C4QualityFilter (datatrove/pipeline/filters/c4_filters.py)
  with the line rules applied at tagging time: the dropped lines are spans, and the text the
  filter hands on (its kept lines, c4_filters.py:135) is passed to the FineWeb reading.
- `DolmaC4`: dolma's `c4_v1` tagger (dolma/taggers/c4.py:44-76): line spans and page flags.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ..config import QualityTaggerConfig
from ..text.kernels import (
    datatrove_c4_lines,
    dolma_c4_flags,
    dolma_c4_lines,
    phrase_index,
    space_table,
    token_tables,
    word_set,
)
from ..text.words import sentence_counts
from .badwords import BADWORDS_DIR  # the bundled LDNOOBW lists
from .base import Attrs, DocView, Reading, whole

# ---------------------------------------------------------------- datatrove

# c4_filters.py:14-24
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_C4_END = (".", "?", "!", '"', "'")
_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_POLICY_ANY = re.compile("|".join(map(re.escape, _POLICY)))  # "some substring occurs"


def datatrove_c4(
    view: DocView, cfg: QualityTaggerConfig
) -> tuple[dict[str, float], Attrs, str, int, tuple[list[str], np.ndarray] | None]:
    """C4QualityFilter.filter (c4_filters.py:88-136) with the line rules fixed at tagging time:
    the page measurements, the dropped lines as spans, the text the filter hands on and its
    number of spaCy words (the kept lines' words: the text is those lines joined), and the kept
    lines with their offsets where the compiled way ran."""
    text = view.text
    low = text.lower()
    if not (
        cfg.c4_filter_no_terminal_punct
        or (cfg.c4_remove_citations and "[" in text and _CITATION.search(text))
        or any(w in low for w in _C4_PAGE_WORDS)
    ):
        return _c4_lines_compiled(view, cfg)
    kept: list[str] = []
    kept_words: list[list[str]] = []
    drop: list[list] = []
    lorem = curly = 0.0
    pos = 0
    # a line's words are the document's chunks from `chunk` on (str.splitlines() breaks lines only
    # at whitespace): the kept lines' chunk ids are slices of the document's, unless a citation
    # was cut out of one
    chunk, kept_at, kept_len, cut_any = 0, [], [], False
    # str.splitlines() as the reference (:89); offsets advance over each line and its break
    for raw in text.splitlines(keepends=True):
        start, pos = pos, pos + len(raw)
        line = raw.strip()
        words = line.split()
        first, chunk = chunk, chunk + len(words)
        # :99 (no word is longer than its line)
        if len(line) > cfg.c4_max_word_length and max(map(len, words)) > cfg.c4_max_word_length:
            drop.append([start, pos, 1.0])
            continue
        line_words = words
        if cfg.c4_remove_citations and "[" in line:  # :103 (every pattern starts with "[")
            cut = _CITATION.sub("", line)
            if cut != line:
                line, line_words, cut_any = cut, cut.split(), True
        if cfg.c4_filter_no_terminal_punct and (  # :106
            not line.endswith(_C4_END) or line.endswith("...")
        ):
            drop.append([start, pos, 1.0])
            continue
        if len(words) < cfg.c4_min_words_per_line:  # :110
            drop.append([start, pos, 1.0])
            continue
        low = line.lower()
        if "lorem ipsum" in low:  # :115: the page is dropped, the reference stops here
            lorem = 1.0
            break
        if "javascript" in low:  # :118
            drop.append([start, pos, 1.0])
            continue
        if "{" in line:  # :122: the page is dropped, the reference stops here
            curly = 1.0
            break
        if _POLICY_ANY.search(low) is not None:  # :125, `any(p in line_l for p in ...)`
            drop.append([start, pos, 1.0])
            continue
        kept.append(line)
        kept_words.append(line_words)
        kept_at.append(first)
        kept_len.append(len(words))
    n_lines = len(kept) + len(drop)
    cids = None
    if kept and not cut_any:
        at, n = np.array(kept_at, dtype=np.int64), np.array(kept_len, dtype=np.int64)
        idx = np.repeat(at - (np.cumsum(n) - n), n) + np.arange(int(n.sum()), dtype=np.int64)
        cids = view.chunk_cids[idx]
    # :129, spaCy's sentencizer on each kept line, all lines in one compiled pass
    sentences, kept_tokens = sentence_counts(view.vocab, kept, kept_words, cids)
    stats = {
        "kept_sentences": float(sentences),
        "lorem_ipsum": lorem,
        "curly_bracket": curly,
        "kept_line_frac": len(kept) / max(1, n_lines),
    }
    return stats, {"drop_line": drop}, "\n".join(kept).strip(), kept_tokens, None  # :135


# a line holding one of these (lower-cased) goes a way of its own in C4 (:115-126); a page without
# any goes the compiled way. None spans a line break, so "some line has it" implies the whole
# lower-cased text has it.
_C4_PAGE_WORDS = ("lorem ipsum", "javascript", *_POLICY)


def _c4_lines_compiled(
    view: DocView, cfg: QualityTaggerConfig
) -> tuple[dict[str, float], Attrs, str, int, tuple[list[str], np.ndarray]]:
    """datatrove_c4 on a page without citations, "lorem ipsum", "javascript" or a policy phrase
    and with the terminal-punctuation rule off (FineWeb's settings): then a line is dropped for a
    word longer than c4_max_word_length or fewer than c4_min_words_per_line words, else kept,
    and the first kept-to-be line holding "{" drops the page and ends the walk. Per-line facts
    from one compiled pass (kernels.splitlines_words, str.splitlines() and str.strip() as the
    reference)."""
    text = view.text
    line_at, words, longest, curly, gap_token = view.lines
    st = view.vocab.state
    end, hit, keep, sentences, kept_tokens = datatrove_c4_lines(
        words, longest, curly, cfg.c4_max_word_length, cfg.c4_min_words_per_line,
        view.chunk_cids, gap_token, st.start, st.count, st.flat, st.is_punct, st.sent_punct,
    )  # fmt: skip
    walked = line_at[:end]
    kept_at = walked[keep, 2:]
    kept = [text[a:b] for a, b in kept_at.tolist()]
    stats = {
        "kept_sentences": float(sentences),
        "lorem_ipsum": 0.0,
        "curly_bracket": float(hit),
        "kept_line_frac": len(kept) / max(1, end),
    }
    spans = [[a, b, 1.0] for a, b in walked[~keep, :2].tolist()]
    return stats, {"drop_line": spans}, "\n".join(kept), kept_tokens, (kept, kept_at)


_DT_C4 = ["kept_sentences", "lorem_ipsum", "curly_bracket", "kept_line_frac", "drop_line"]


class DatatroveC4(Reading):
    """C4QualityFilter's page measurements and dropped lines; `passed["c4"]` is what the filter
    hands on: (the kept text, its number of spaCy words, the kept lines with their offsets where
    the compiled walk gave them)."""

    group = "c4"
    keys = _DT_C4

    def __call__(self, view: DocView, passed: dict) -> Attrs:
        stats, spans, after_c4, after_c4_words, kept = datatrove_c4(view, self.cfg)
        passed["c4"] = (after_c4, after_c4_words, kept)
        out = {k: whole(view.text, v) for k, v in stats.items()}
        out["drop_line"] = spans["drop_line"]
        return out


# ---------------------------------------------------------------- dolma


def dolma_c4(view: DocView, naughty: DolmaNaughty) -> Attrs:
    """get_attributes of c4_v1 (dolma/taggers/c4.py:44-76): line spans and page flags.

    The reference tests every line; its page flags are "some line has ...", and no word or phrase
    it looks for contains a newline, so they are tested once on the whole lower-cased text (the
    words of all lines are the whitespace words of the text): one compiled pass lower-cases it
    and tests them all, unless a character needs Python's lower() (token_tables)."""
    text = view.text
    cp = view.cps
    flags = dolma_c4_flags(
        cp, token_tables()[2], space_table(), naughty.words, naughty.word_bits, naughty.phrases
    )
    if flags < 0:
        flags = naughty.python_flags(text)
    out: Attrs = {
        "has_naughty_word": whole(text, float(flags & 1)),
        "has_javascript": whole(text, float(flags >> 1 & 1)),
        "has_lorem_ipsum": whole(text, float(flags >> 2 & 1)),
        "has_curly_brace": whole(text, float(flags >> 3 & 1)),
    }
    # per line (text.split("\n")): the spans of the lines without ending punctuation and of the
    # lines with too few words, from one compiled pass
    lines, punct_s, punct_e, few_s, few_e = dolma_c4_lines(cp, space_table())
    out["lines_with_no_ending_punctuation"] = [
        [a, b, 1.0] for a, b in zip(punct_s.tolist(), punct_e.tolist())
    ]
    out["lines_with_too_few_words"] = [[a, b, 1.0] for a, b in zip(few_s.tolist(), few_e.tolist())]
    out["line_count"] = whole(text, float(lines))
    return out


_DOLMA_C4 = [
    "has_naughty_word",
    "has_javascript",
    "has_lorem_ipsum",
    "has_curly_brace",
    "lines_with_no_ending_punctuation",
    "lines_with_too_few_words",
    "line_count",
]


class DolmaNaughty:
    """What c4_v1's page flags look for (c4.py:63-70), as `dolma_c4_flags` reads it: a word set of
    the naughty words and "javascript" with each word's flag bits (1 naughty, 2 javascript) and a
    phrase index of the naughty phrases (bit 1) and "lorem ipsum" (bit 4)."""

    def __init__(self, words: frozenset[str], phrases: list[str]):
        self.words_set, self.phrase_list = words, phrases
        listed = sorted(words - {"javascript"}) + ["javascript"]
        self.words = word_set(listed)
        self.word_bits = np.array([1] * (len(listed) - 1) + [2 | ("javascript" in words)])
        self.phrases = phrase_index(phrases + ["lorem ipsum"], [1] * len(phrases) + [4])

    def python_flags(self, text: str) -> int:
        """The same flags from str.lower() and str.split() in Python."""
        low = text.lower()
        low_words = low.split()
        naughty = not self.words_set.isdisjoint(low_words) or any(
            p in low for p in self.phrase_list
        )
        return (
            naughty
            | ("javascript" in low_words) << 1
            | ("lorem ipsum" in low) << 2
            | ("{" in low) << 3
        )


def _dolma_naughty() -> DolmaNaughty:
    """The English list dolma's c4 tagger reads (dolma/taggers/c4.py:11-13), from the installed
    dolma package when it is there, else the bundled LDNOOBW English list."""
    try:
        import dolma.taggers.c4 as dc4  # optional: only for the exact list dolma ships

        words, phrases = frozenset(dc4.NAUGHTY_WORDS), sorted(dc4.NAUGHTY_PHRASES)
    except Exception:  # dolma not installed (or its fastText import fails): the same LDNOOBW list
        entries = json.loads((BADWORDS_DIR / "en.json").read_text(encoding="utf-8"))
        words = frozenset(w for w in entries if " " not in w)
        phrases = sorted(w for w in entries if " " in w)
    # every dolma phrase holds a space (c4.py:13): find_phrases anchors on spaces
    return DolmaNaughty(words, [p for p in phrases if " " in p])


class DolmaC4(Reading):
    """c4_v1's attributes under dolma's own names (the naughty-word list is read once)."""

    group = "c4"
    keys = _DOLMA_C4

    def __init__(self, cfg: QualityTaggerConfig):
        super().__init__(cfg)
        self.naughty = _dolma_naughty()

    def __call__(self, view: DocView, passed: dict) -> Attrs:
        return dolma_c4(view, self.naughty)
