"""Bad words per language: the LDNOOBW lists (CC-BY-4.0, as packaged in the npm `naughty-words`
1.2.0), shipped in resources/badwords/ with their licence; the content tagger's `badwords` reading.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from itertools import islice
from pathlib import Path

import numpy as np

from ..text.kernels import word_set
from .scan import scan

Spans = list[list]
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BADWORDS_DIR = RESOURCES / "badwords"

_TOKEN = re.compile(r"[\w']+(?:-[\w']+)*", re.UNICODE)
_NO_SPACES = ("ja", "zh", "th", "ko")


class BadWords:
    """One language's list. Spaced languages: a set lookup per word and per phrase start (one regex
    alternation over ~400 entries with word boundaries was 20x slower), the tokens and the lookup
    of their lower case in the compiled `content_scan`; unspaced ones: a regex."""

    def __init__(self, entries: list[str], lang: str):
        words = {w.strip().lower() for w in entries if w.strip()}
        self.regex = None
        if lang in _NO_SPACES:
            alt = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            self.regex = re.compile(f"(?:{alt})", re.IGNORECASE)
            # where a match can start: a character class of the entries' first characters, with
            # the same flag (re lower-cases the text character for both and adds the same case
            # equivalents), so it accepts every position where an entry's first character does
            self.first = re.compile(f"[{''.join(sorted({re.escape(w[0]) for w in words}))}]", re.I)
            return
        self.single = {w for w in words if len(_TOKEN.findall(w)) == 1 and _TOKEN.fullmatch(w)}
        self.phrases: dict[str, list[tuple[str, ...]]] = {}
        for w in words - self.single:
            toks = tuple(_TOKEN.findall(w))
            if toks:
                self.phrases.setdefault(toks[0], []).append(toks)
        self.starts = frozenset(self.single) | frozenset(self.phrases)  # where a match can begin
        self.table = word_set(sorted(self.starts))

    def spans(self, text: str) -> Spans:
        if self.regex is not None:
            return self.regex_spans(text)
        return self.scanned_spans(text, *scan(text, self.table)[2:6])

    def regex_spans(self, text: str) -> Spans:
        """self.regex.finditer's matches, the pattern tried only where an entry can start (a
        position-by-position search tries the ~200 alternatives at every character: ~7x slower
        on Japanese man pages): finditer tries each position from the left and goes on after a
        match (never empty), as this loop does, skipping positions no entry starts at."""
        out: Spans = []
        search, match, pos = self.first.search, self.regex.match, 0
        while (c := search(text, pos)) is not None:
            m = match(text, c.start())
            if m is None:
                pos = c.start() + 1
            else:
                out.append([m.start(), m.end(), 1.0])
                pos = m.end()
        return out

    def scanned_spans(
        self, text: str, starts: np.ndarray, ends: np.ndarray, cand: np.ndarray, exact: bool
    ) -> Spans:
        """The spans from `content_scan`'s tokens and candidates (tokens whose lower case starts an
        entry): each candidate's entries compared on the lower-cased tokens that follow it."""
        if not exact:  # a token the kernel cannot lower-case (U+0130, capital sigma)
            return self.python_spans(text)
        if not len(cand):
            return []
        single, phrases, m = self.single, self.phrases, len(starts)
        starts, ends = starts.tolist(), ends.tolist()
        out: Spans = []
        for i in cand.tolist():
            w = text[starts[i] : ends[i]].lower()
            if w in single:
                out.append([starts[i], ends[i], 1.0])
            for ph in phrases.get(w, ()):
                j = i + len(ph)
                if j <= m and all(
                    text[starts[k] : ends[k]].lower() == t for k, t in zip(range(i, j), ph)
                ):
                    out.append([starts[i], ends[j - 1], 1.0])
        return out

    def python_spans(self, text: str) -> Spans:
        """The same spans from re.findall and str.lower in Python."""
        # the tokens as strings in one C call; match objects (offsets) only for the tokens a span
        # needs, reached by skipping the others inside the iterator
        low = list(map(str.lower, _TOKEN.findall(text)))
        starts, single, phrases = self.starts, self.single, self.phrases
        found: list[tuple[int, int]] = []  # (first token, last token) of each span, in order
        for i in [i for i, w in enumerate(low) if w in starts]:
            w = low[i]
            if w in single:
                found.append((i, i))
            for ph in phrases.get(w, ()):
                if tuple(low[i : i + len(ph)]) == ph:
                    found.append((i, i + len(ph) - 1))
        if not found:
            return []
        where: dict[int, tuple[int, int]] = {}
        it, prev = _TOKEN.finditer(text), -1
        for j in sorted({j for pair in found for j in pair}):
            m = next(islice(it, j - prev - 1, None))
            where[j], prev = m.span(), j
        return [[where[a][0], where[b][1], 1.0] for a, b in found]


@lru_cache(maxsize=64)
def badwords_for(folder: str, lang: str) -> BadWords | None:
    path = Path(folder) / f"{lang}.json"
    if not path.exists():
        return None
    return BadWords(json.loads(path.read_text(encoding="utf-8")), lang)
