"""FineWeb's own quality filter (Penedo et al. 2024), the quality tagger's `fineweb__*` attributes:
datatrove 0.10.1's FineWebQualityFilter (datatrove/pipeline/filters/fineweb_quality_filter.py).
In FineWeb's pipeline it reads the text C4's filter kept (`fineweb_after_c4`, the default).
"""

from __future__ import annotations

import numpy as np

from ..config import QualityTaggerConfig
from ..text.words import terminal_punctuation
from .base import Attrs, DocView, Reading, whole
from .gopher import find_duplicates  # datatrove's FineWeb filter reuses Gopher's find_duplicates


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
        "dup_line_char_frac": find_duplicates(lines)[1] / max(1, body),  # :46
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
        "dup_line_char_frac": find_duplicates(lines)[1] / max(1, int((b - a).sum())),  # :46
        "newline_word_ratio": (n - 1) / max(1, n_words),  # :51-53, the "list" rule
    }


_DT_FW = ["empty", "line_punct_frac", "short_line_frac", "dup_line_char_frac", "newline_word_ratio"]


class DatatroveFineWeb(Reading):
    """FineWebQualityFilter's ratios, on the text the C4 reading passed on when
    `fineweb_after_c4` (the whole text when C4 is off or `fineweb_after_c4=false`)."""

    group = "fineweb"
    keys = _DT_FW

    def __call__(self, view: DocView, passed: dict) -> Attrs:
        cfg = self.cfg
        if cfg.fineweb_after_c4:
            after_c4, after_c4_words, kept = passed.get("c4", (view.text, None, None))
            stats = datatrove_fineweb(view, after_c4, cfg, after_c4_words, kept)
        else:
            stats = datatrove_fineweb(view, view.text, cfg)
        return {k: whole(view.text, v) for k, v in stats.items()}
