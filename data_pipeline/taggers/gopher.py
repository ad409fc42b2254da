"""Gopher's statistics (Rae et al. 2021), the quality tagger's `gopher__*` attributes, in two readings.

- `DatatroveGopher`: datatrove 0.10.1's GopherRepetitionFilter and GopherQualityFilter
  (datatrove/pipeline/filters/gopher_repetition_filter.py, gopher_quality_filter.py) on spaCy
  words, both from one compiled pass over the document's words (`gopher_word_stats`).
- `DolmaGopher`: dolma's `gopher_v2` tagger (dolma/taggers/gopher.py:139-201, 228-233) on
  whitespace words.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from ..text.kernels import (
    alpha_table,
    datatrove_gopher_stats,
    dolma_gopher_stats,
    space_table,
    word_table,
)
from .base import Attrs, DocView, Reading, whole

# ---------------------------------------------------------------- datatrove

# gopher_repetition_filter.py:106 splits at "\\n{2,}"; "\\n\\n+" gives the same pieces, scanned faster
_PARA_SPLIT = re.compile(r"\n\n+")
# gopher_repetition_filter.py:107 splits lines with re.split("\\n+"): _newline_runs_split below


def find_duplicates(parts: list[str]) -> tuple[int, int]:
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
    p_dup, p_chars = find_duplicates(paras)
    lines = _newline_runs_split(text)
    l_dup, l_chars = find_duplicates(lines)
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


class DatatroveGopher(Reading):
    """GopherRepetitionFilter's ratios, then GopherQualityFilter's, from one word pass."""

    group = "gopher"
    keys = _DT_REP + _DT_QUAL

    def __call__(self, view: DocView, passed: dict) -> Attrs:
        stats = gopher_word_stats(view)
        measured = {**datatrove_repetition(view, stats), **datatrove_quality(view, stats)}
        return {k: whole(view.text, v) for k, v in measured.items()}


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


class DolmaGopher(Reading):
    """gopher_v2's attributes under dolma's own names."""

    group = "gopher"
    keys = _DOLMA_GOPHER

    def __call__(self, view: DocView, passed: dict) -> Attrs:
        return {k: whole(view.text, v) for k, v in dolma_gopher(view).items()}
