"""The content tagger's one pass over a text: `text.kernels.content_scan`, compiled, gives the
whitespace word count, the PII readings' necessary-condition flags and phone starts (pii.py), and
the tokens that may start a bad-word entry (badwords.py), so a document is walked once for all.
"""

from __future__ import annotations

import numpy as np

from ..text.kernels import code_points, content_scan, space_table, token_tables

# Necessary conditions, found by content_scan in its one pass over the text (a pattern that opens
# with a lookbehind is tried at every position): a text without it has no match. pii.PHONE's
# first branch ends in \d{3}[ .-]\d{4} (flag bit 0), its second starts with "+" and a digit
# (bit 2); an IPv4 address (both readings: four 1-3 digit groups) holds \d\.\d{1,3}\.\d{1,3}\.\d
# (bit 1).
MAY_PHONE, MAY_IPV4, MAY_PHONE_INTL = 1, 2, 4

# An empty word set (bad words off, or a language matched by regex): PII flags and words only.
NO_WORDS = (
    np.zeros(0, np.uint64),
    np.zeros(0, np.int64),
    np.zeros(0, np.uint32),
    np.zeros(1, np.int64),
)


def scan(text: str, words: tuple = NO_WORDS, cps: np.ndarray | None = None):
    """content_scan of `text` (`cps`: its code points, if known) with a word set (`BadWords.table`;
    none: PII flags and word count only). Returns (whitespace words, PII flags, token starts,
    token ends, candidate tokens, exact, phone starts)."""
    cps = code_points(text) if cps is None else cps
    return content_scan(cps, space_table(), *token_tables(), *words)
