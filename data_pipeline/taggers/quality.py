"""Quality statistics in two readings, each following its reference line by line.

- `reading=datatrove`: FineWeb's filters as datatrove 0.10.1 implements them
  (datatrove/pipeline/filters/gopher_repetition_filter.py, gopher_quality_filter.py,
  c4_filters.py, fineweb_quality_filter.py), spaCy words (words.py). The C4 filter rewrites the text
  to its kept lines (c4_filters.py:135) before FineWeb's filter reads it, so the `fineweb__*`
  statistics are measured on that text, as in FineWeb's pipeline order.
- `reading=dolma`: Dolma's `gopher_v2` and `c4_v1` taggers (dolma/taggers/gopher.py:139-201,
  dolma/taggers/c4.py:44-76), whitespace words.

Each function returns measurements; the thresholds are mixer rules in the preset YAML
(configs/pipeline/fineweb.yaml, dolma.yaml), so changing one re-runs only the mixer. Where a
reference stops at the first failing rule, the statistics it never computed are still written (the
decision is the same: the document fails either way).
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np

from ..config import QualityTaggerConfig
from ..text.kernels import (
    alpha_table,
    datatrove_c4_lines,
    datatrove_gopher_stats,
    dolma_c4_flags,
    dolma_c4_lines,
    dolma_gopher_stats,
    phrase_index,
    space_table,
    token_tables,
    warm_up,
    word_set,
    word_table,
)
from ..text.words import sentence_counts, terminal_punctuation
from .base import Attrs, DocView, Tagger, as_view, register, whole
from .content import RESOURCES  # the bundled LDNOOBW lists

# ---------------------------------------------------------------- datatrove (FineWeb)

# gopher_repetition_filter.py:106 splits at "\\n{2,}"; "\\n\\n+" gives the same pieces, scanned faster
_PARA_SPLIT = re.compile(r"\n\n+")
# gopher_repetition_filter.py:107 splits lines with re.split("\\n+"): _newline_runs_split below
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


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """find_duplicates (gopher_repetition_filter.py:35-46): repeats and their characters (every
    occurrence after a part's first)."""
    counts = Counter(parts)
    if len(counts) == len(parts):
        return 0, 0
    return len(parts) - len(counts), sum(len(p) * (c - 1) for p, c in counts.items() if c > 1)


def _newline_runs_split(text: str) -> list[str]:
    """re.split("\\n+", text) with str.split: the empty pieces between newlines dropped, the
    first and last kept (empty when the text starts or ends with a newline)."""
    parts = text.split("\n")
    if len(parts) < 3:
        return parts
    return [parts[0], *filter(None, parts[1:-1]), parts[-1]]


def gopher_word_stats(view: DocView) -> np.ndarray:
    """kernels.datatrove_gopher_stats of the document (spaCy words, splitlines' lines)."""
    t, line_at, words = view.vocab.table, view.lines[0], view.lines[1]
    return datatrove_gopher_stats(
        view.spacy_ids, t.length, t.non_symbol, t.alpha, t.stop, t.chash, t.cpow, view.cps,
        line_at, words,
    )  # fmt: skip


def datatrove_repetition(view: DocView, stats: np.ndarray | None = None) -> dict[str, float]:
    """GopherRepetitionFilter.filter (gopher_repetition_filter.py:110-144), every ratio it tests
    (`stats`: gopher_word_stats, if the caller has them)."""
    text = view.text
    n = max(1, len(text))  # an empty text fails the filter ("empty"): see `empty`
    paras = _PARA_SPLIT.split(text.strip())
    p_dup, p_chars = _duplicates(paras)
    lines = _newline_runs_split(text)
    l_dup, l_chars = _duplicates(lines)
    out = {
        "empty": float(not text),
        "dup_para_frac": p_dup / len(paras),
        "dup_para_char_frac": p_chars / n,
        "dup_line_frac": l_dup / len(lines),
        "dup_line_char_frac": l_chars / n,
    }
    st = (gopher_word_stats(view) if stats is None else stats).tolist()
    for k in (2, 3, 4):  # gopher_repetition_filter.py:49-54, top n-gram characters x count
        top = st[2 + k]
        # overlapping occurrences are counted (:49-54), so the reference's ratio can pass 1 (1.78
        # on one word repeated); a fraction is clipped at 1, which decides the same below 1
        out[f"top_{k}gram_char_frac"] = min(1.0, top / n) if top >= 0 else 0.0
    for k in range(5, 11):  # :57-70, find_all_duplicate
        out[f"dup_{k}gram_char_frac"] = st[2 + k] / n
    return out


def datatrove_quality(view: DocView, stats: np.ndarray | None = None) -> dict[str, float]:
    """GopherQualityFilter.filter (gopher_quality_filter.py:61-125)."""
    text, n_words = view.text, len(view.spacy_ids)
    st = (gopher_word_stats(view) if stats is None else stats).tolist()
    n_non_symbol, len_non_symbol, n_alpha, n_stop = st[:4]
    n_lines = max(1, len(view.lines[0]))
    denom = max(1, n_words)
    return {
        # gopher_quality_filter.py:75-82: words with a non-punctuation character
        "word_count": float(n_non_symbol),
        # np.mean of integer lengths is their exact sum over the count (as the reference computes)
        "mean_word_length": len_non_symbol / n_non_symbol if n_non_symbol else 0.0,
        # :92-95: "#" and the ellipsis are two separate rules, not a sum
        "hash_word_ratio": text.count("#") / denom,
        "ellipsis_word_ratio": (text.count("...") + text.count("\u2026")) / denom,
        # :100-111 on str.splitlines()'s stripped lines, bullets "•" and "-" only
        "bullet_line_frac": st[13] / n_lines,
        "ellipsis_line_frac": st[14] / n_lines,
        # :114-119: over all spaCy words, punctuation included
        "alpha_word_frac": n_alpha / denom,
        # :122: distinct stop words (a set intersection), case-sensitive
        "stop_word_count": float(n_stop),
    }


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


def datatrove_fineweb(
    view: DocView,
    text: str,
    cfg: QualityTaggerConfig,
    n_words: int | None = None,
    kept: tuple[list[str], np.ndarray] | None = None,
) -> dict[str, float]:
    """FineWebQualityFilter.filter (fineweb_quality_filter.py:33-56) on `text` (after C4; its
    lines and their offsets in `kept` when C4 gave them)."""
    if kept is not None and n_words is not None:
        return _fineweb_on_kept(view, cfg, n_words, *kept)
    lines = [line for line in text.split("\n") if line.strip() != ""]  # :34-35
    n = len(lines)
    if n == 0:
        return {"empty": 1.0}
    stop = terminal_punctuation()
    body = len(text) - text.count("\n")  # len(text.replace("\n", "")) (:46)
    if n_words is not None:  # the caller counted them (C4's kept lines)
        words = n_words
    elif text is view.text:
        words = len(view.spacy_ids)
    else:
        words = view.vocab.word_count(text.split())
    return {
        "empty": 0.0,
        "line_punct_frac": sum(1 for line in lines if line.endswith(stop)) / n,  # :38
        "short_line_frac": sum(1 for line in lines if len(line) <= cfg.fineweb_short_line_chars)
        / n,  # :42
        "dup_line_char_frac": _duplicates(lines)[1] / max(1, body),  # :46
        "newline_word_ratio": text.count("\n") / max(1, words),  # :51-53, the "list" rule
    }


_TERMINAL_CP: np.ndarray | None = None


def _fineweb_on_kept(
    view: DocView, cfg: QualityTaggerConfig, n_words: int, lines: list[str], at: np.ndarray
) -> dict[str, float]:
    """datatrove_fineweb on the text C4 kept, read off its lines (`lines`, their offsets `at` in
    the document): the text is those lines joined by newlines, none empty nor holding a newline,
    so its non-empty lines are `lines` and its newlines one fewer; every terminal punctuation mark
    is one character, so a line ends with one when its last character is one."""
    global _TERMINAL_CP
    n = len(lines)
    if n == 0:
        return {"empty": 1.0}
    if _TERMINAL_CP is None:
        table = np.zeros(0x110000, dtype=np.bool_)
        table[[ord(c) for c in terminal_punctuation()]] = True
        _TERMINAL_CP = table
    a, b = at[:, 0], at[:, 1]
    return {
        "empty": 0.0,
        "line_punct_frac": int(np.count_nonzero(_TERMINAL_CP[view.cps[b - 1]])) / n,  # :38
        "short_line_frac": int(np.count_nonzero(b - a <= cfg.fineweb_short_line_chars)) / n,
        "dup_line_char_frac": _duplicates(lines)[1] / max(1, int((b - a).sum())),  # :46
        "newline_word_ratio": (n - 1) / max(1, n_words),  # :51-53, the "list" rule
    }


# ---------------------------------------------------------------- dolma

# the kernel's bullets "*" "-" and symbols "#" "\u2026": dolma/taggers/gopher.py:14-15
_REQUIRED = ("the", "be", "to", "of", "and", "that", "have", "with")  # gopher.py:13
_REQUIRED_TABLE = word_table(list(_REQUIRED))


def dolma_gopher(view: DocView) -> dict[str, float]:
    """get_attributes of dolma's gopher_v2 tagger (dolma/taggers/gopher.py:139-201, 228-233):
    whitespace words, lines split at runs of newlines, one compiled pass over the code points."""
    text = view.text
    if not text:
        return {"character_count": 0.0}
    counts = np.zeros(10, dtype=np.int64)
    top, dup = np.full(11, -1.0), np.full(11, -1.0)
    median = dolma_gopher_stats(
        view.cps, space_table(), alpha_table(), *_REQUIRED_TABLE, counts, top, dup
    )
    n, char_count, symbols, alphas, required, n_lines, bullets, ellipses, dup_lines, dup_chars = (
        counts.tolist()
    )
    out = {
        "character_count": float(len(text)),
        "word_count": float(n),
        "median_word_length": median,
        "symbol_to_word_ratio": symbols / max(n, 1),
        "fraction_of_words_with_alpha_character": alphas / max(n, 1),
        "required_word_count": float(required),  # occurrences (gopher.py:158)
    }
    for k, v in zip((2, 3, 4), top[2:5].tolist()):
        if v >= 0:
            # overlapping occurrences: can pass 1 in dolma too; clipped (same decisions below 1)
            out[f"fraction_of_characters_in_most_common_{k}grams"] = min(1.0, v)
    for k, v in zip(range(5, 11), dup[5:11].tolist()):
        if v >= 0:
            out[f"fraction_of_characters_in_duplicate_{k}grams"] = v
    # gopher_v2 (gopher.py:228-233): ignore_empty_lines=True, lines split at runs of newlines
    # (gopher.py:178). gopher_v1 splits at every newline, so each blank line counts as a duplicate
    # line: on the English man pages it removed 105 of 120 documents for duplicate lines.
    n_lines = max(n_lines, 1)
    out["fraction_of_lines_starting_with_bullet_point"] = bullets / n_lines
    out["fraction_of_lines_ending_with_ellipsis"] = ellipses / n_lines
    out["fraction_of_duplicate_lines"] = dup_lines / n_lines
    out["fraction_of_characters_in_duplicate_lines"] = dup_chars / max(char_count, 1)
    return out


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


# ---------------------------------------------------------------- the tagger

_DT_REP = (
    ["empty", "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac"]
    + [f"top_{k}gram_char_frac" for k in (2, 3, 4)]
    + [f"dup_{k}gram_char_frac" for k in range(5, 11)]
)
_DT_QUAL = [
    "word_count",
    "mean_word_length",
    "hash_word_ratio",
    "ellipsis_word_ratio",
    "bullet_line_frac",
    "ellipsis_line_frac",
    "alpha_word_frac",
    "stop_word_count",
]
_DT_C4 = ["kept_sentences", "lorem_ipsum", "curly_bracket", "kept_line_frac", "drop_line"]
_DT_FW = ["empty", "line_punct_frac", "short_line_frac", "dup_line_char_frac", "newline_word_ratio"]
_DOLMA_GOPHER = (
    [
        "character_count",
        "word_count",
        "median_word_length",
        "symbol_to_word_ratio",
        "fraction_of_words_with_alpha_character",
        "required_word_count",
        "fraction_of_lines_starting_with_bullet_point",
        "fraction_of_lines_ending_with_ellipsis",
        "fraction_of_duplicate_lines",
        "fraction_of_characters_in_duplicate_lines",
    ]
    + [f"fraction_of_characters_in_most_common_{k}grams" for k in (2, 3, 4)]
    + [f"fraction_of_characters_in_duplicate_{k}grams" for k in range(5, 11)]
)
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
        entries = json.loads((RESOURCES / "badwords" / "en.json").read_text(encoding="utf-8"))
        words = frozenset(w for w in entries if " " not in w)
        phrases = sorted(w for w in entries if " " in w)
    # every dolma phrase holds a space (c4.py:13): find_phrases anchors on spaces
    return DolmaNaughty(words, [p for p in phrases if " " in p])


@register("quality")
class QualityTagger(Tagger):
    config_type = QualityTaggerConfig

    def __init__(self, cfg: QualityTaggerConfig):
        self.cfg = cfg
        warm_up()
        self._naughty = _dolma_naughty() if cfg.reading == "dolma" and cfg.c4 else None

    @staticmethod
    def emits(cfg: QualityTaggerConfig) -> list[str]:
        keys: list[tuple[str, list[str]]] = []
        if cfg.reading == "dolma":
            keys += [("gopher", _DOLMA_GOPHER)] if cfg.gopher else []
            keys += [("c4", _DOLMA_C4)] if cfg.c4 else []
        else:
            keys += [("gopher", _DT_REP + _DT_QUAL)] if cfg.gopher else []
            keys += [("c4", _DT_C4)] if cfg.c4 else []
            keys += [("fineweb", _DT_FW)] if cfg.fineweb else []
        return [f"{cfg.name}__{group}__{k}" for group, ks in keys for k in ks]

    def __call__(self, view: DocView, context: dict | None = None) -> Attrs:
        view = as_view(view)
        cfg, text = self.cfg, view.text
        pre = cfg.name
        out: Attrs = {}

        def put(group: str, stats: dict[str, float]) -> None:
            for k, v in stats.items():
                out[f"{pre}__{group}__{k}"] = whole(text, v)

        if cfg.reading == "dolma":
            if cfg.gopher:
                put("gopher", dolma_gopher(view))
            if cfg.c4:
                for k, v in dolma_c4(view, self._naughty).items():  # type: ignore[arg-type]
                    out[f"{pre}__c4__{k}"] = v
            return out
        if cfg.gopher:
            stats = gopher_word_stats(view)
            put("gopher", datatrove_repetition(view, stats))
            put("gopher", datatrove_quality(view, stats))
        after_c4, after_c4_words, kept = text, None, None
        if cfg.c4:
            stats, spans, after_c4, after_c4_words, kept = datatrove_c4(view, cfg)
            put("c4", stats)
            out[f"{pre}__c4__drop_line"] = spans["drop_line"]
        if cfg.fineweb:
            if cfg.fineweb_after_c4:
                put("fineweb", datatrove_fineweb(view, after_c4, cfg, after_c4_words, kept))
            else:
                put("fineweb", datatrove_fineweb(view, text, cfg))
        return out
