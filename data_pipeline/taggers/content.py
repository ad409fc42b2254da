"""Content: PII spans, bad words per language, URL blocklists.

PII has two readings: `pii_reading=dolma` (the e-mail / phone / IPv4 patterns of Dolma's PII
tagger, plus +CC international numbers) and `pii_reading=datatrove` (the e-mail and IP patterns of
datatrove's PIIFormatter, datatrove/pipeline/formatters/pii.py:76-87, public IPs only as its
`only_remove_public_ips=True` default); the spans are replaced by mixer replacements.
Bad words: the LDNOOBW lists (CC-BY-4.0, as packaged in the npm `naughty-words` 1.2.0), shipped in
resources/badwords/ with their licence.
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from itertools import islice
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ..config import ContentTaggerConfig
from ..io import doc_url
from ..text.kernels import code_points, content_scan, space_table, token_tables, word_set
from .base import Attrs, Tagger, as_view, register, whole

Spans = list[list]
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
_WORD = re.compile(r"\S+")

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# North-American style numbers as in Dolma's PII tagger, plus +CC international numbers
PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[ .\-]?)?\(?\d{3}\)?[ .\-]?\d{3}[ .\-]\d{4}(?!\w|\.\d)"
    r"|(?<![\w.])\+\d{1,3}(?:[ .\-]\d{2,4}){2,4}(?!\w|\.\d)"
)
IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)"
)


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
        return self.scanned_spans(text, *scan(text, self)[2:6])

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


_NO_WORDS = (
    np.zeros(0, np.uint64),
    np.zeros(0, np.int64),
    np.zeros(0, np.uint32),
    np.zeros(1, np.int64),
)


def scan(text: str, bw: BadWords | None = None, cps: np.ndarray | None = None):
    """content_scan of `text` (`cps`: its code points, if known) with the word set of `bw` (none:
    PII flags and word count only)."""
    table = bw.table if bw is not None and bw.regex is None else _NO_WORDS
    cps = code_points(text) if cps is None else cps
    return content_scan(cps, space_table(), *token_tables(), *table)


@lru_cache(maxsize=64)
def badwords_for(folder: str, lang: str) -> BadWords | None:
    path = Path(folder) / f"{lang}.json"
    if not path.exists():
        return None
    return BadWords(json.loads(path.read_text(encoding="utf-8")), lang)


@lru_cache(maxsize=16)
def load_blocklist(paths: tuple[str, ...]) -> frozenset[str]:
    out: set[str] = set()
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip().lower()
            if not line:
                continue
            host = urlsplit(line).hostname if "://" in line else line.split("/")[0]
            if host:
                out.add(host.lstrip("."))
    return frozenset(out)


def blocked_host(url: str, blocklist: frozenset[str]) -> bool:
    try:
        host = (urlsplit(url if "://" in url else "http://" + url).hostname or "").lower()
    except ValueError:
        return False
    parts = host.split(".")
    return any(".".join(parts[i:]) in blocklist for i in range(len(parts)))


# datatrove/pipeline/formatters/pii.py:77-85
DT_EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:(?:[A-Za-z0-9](?:["
    r"A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\[(?:(?:25[0-5]|2[0-4][0-9]|["
    r"01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|[A-Za-z0-9-]*[A-Za-z0-9]:)])"
)
DT_IP = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
)


def _public_ip(s: str) -> bool:
    """public_ip_validator (pii.py:34-39) with public_only=True."""
    try:
        return ipaddress.ip_address(s).is_global
    except ValueError:
        return False


# Necessary conditions, found by content_scan in its one pass over the text (a pattern that opens
# with a lookbehind is tried at every position): a text without it has no match. PHONE's first
# branch ends in \d{3}[ .-]\d{4} (flag bit 0), its second starts with "+" and a digit (bit 2); an
# IPv4 address (both readings: four 1-3 digit groups) holds \d\.\d{1,3}\.\d{1,3}\.\d (bit 1).
MAY_PHONE, MAY_IPV4, MAY_PHONE_INTL = 1, 2, 4


def _spans(rx: re.Pattern, text: str, may: bool) -> Spans:
    return [[m.start(), m.end(), 1.0] for m in rx.finditer(text)] if may else []


def _email_spans(text: str) -> Spans:
    """EMAIL.finditer's matches, the pattern tried once per "@": a match holds one "@" (neither
    part's characters include it) and, as its local part runs up to the "@", it matches from
    every start in that run or from none; finditer's leftmost start is the run's first character
    (or where its scan resumed, after the previous match)."""
    out: Spans = []
    pos, at = 0, text.find("@")
    while at >= 0:
        start = at
        while start > pos and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        m = EMAIL.match(text, start) if start < at else None
        if m is not None:
            out.append([start, m.end(), 1.0])
            pos = m.end()
        at = text.find("@", max(at + 1, pos))
    return out


_EMAIL_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")


def _phone_spans(text: str, may_start) -> Spans:
    """PHONE.finditer's matches, the pattern tried only at content_scan's phone starts (where a
    match can begin), from the left, going on after each match as finditer does."""
    out: Spans = []
    pos, match = 0, PHONE.match
    for p in may_start.tolist():
        if p >= pos and (m := match(text, p)) is not None:
            out.append([p, m.end(), 1.0])
            pos = m.end()
    return out


def pii_spans(text: str, reading: str, scanned: tuple | None = None) -> dict[str, Spans]:
    """The PII spans of a reading; `scanned`: content_scan's result for the text, if known."""
    if scanned is None:
        scanned = scan(text)
    flags = scanned[1]
    has_at = "@" in text  # every e-mail pattern needs one
    may_ip = bool(flags & MAY_IPV4)
    if reading == "datatrove":
        return {
            "email": _spans(DT_EMAIL, text, has_at),
            "ip": [s for s in _spans(DT_IP, text, may_ip) if _public_ip(text[s[0] : s[1]])],
        }
    return {
        "email": _email_spans(text) if has_at else [],
        "phone": _phone_spans(text, scanned[6]) if flags & (MAY_PHONE | MAY_PHONE_INTL) else [],
        "ip": _spans(IPV4, text, may_ip),
    }


@register("content")
class ContentTagger(Tagger):
    config_type = ContentTaggerConfig

    def __init__(self, cfg: ContentTaggerConfig):
        self.cfg = cfg
        self.bw_dir = cfg.badwords_dir or str(RESOURCES / "badwords")
        self._lang_name = ""

    @staticmethod
    def emits(cfg: ContentTaggerConfig) -> list[str]:
        pre, out = cfg.name, []
        if cfg.pii:
            kinds = ("email", "ip") if cfg.pii_reading == "datatrove" else ("email", "phone", "ip")
            for k in kinds:
                out += [f"{pre}__pii__{k}", f"{pre}__pii__{k}_count"]
        if cfg.badwords:
            out += [f"{pre}__badwords__{k}" for k in ("match", "count", "word_frac")]
        # always written (0 without lists), so a preset's blocklist rule is valid before any list
        out.append(f"{pre}__url__blocked")
        return out

    def __call__(self, view, context: dict | None = None, lang: str | None = None) -> Attrs:
        view = as_view(view)
        if lang is None and context:
            lang = context.get("language")
        cfg, text = self.cfg, view.text
        pre = cfg.name
        out: Attrs = {}
        bw = None
        if cfg.badwords:
            bw = badwords_for(self.bw_dir, lang or cfg.badwords_default_lang) or badwords_for(
                self.bw_dir, cfg.badwords_default_lang
            )
        if cfg.pii or cfg.badwords:  # one pass: word count, PII flags, bad-word candidates
            scanned = scan(text, bw, view.cps)
            n_words, _, starts, ends, cand, exact, _ = scanned
        if cfg.pii:
            for kind, spans in pii_spans(text, cfg.pii_reading, scanned).items():
                if spans:
                    out[f"{pre}__pii__{kind}"] = spans
                out[f"{pre}__pii__{kind}_count"] = whole(text, float(len(spans)))
        if cfg.badwords:
            if bw is None:
                spans = []
            elif bw.regex is not None:
                spans = bw.spans(text)
            else:
                spans = bw.scanned_spans(text, starts, ends, cand, exact)
            if spans:
                out[f"{pre}__badwords__match"] = spans
            n_words = max(1, n_words)  # text.split()
            out[f"{pre}__badwords__count"] = whole(text, float(len(spans)))
            out[f"{pre}__badwords__word_frac"] = whole(text, len(spans) / n_words)
        blocked = False
        if cfg.url_blocklists:
            url = doc_url(view.doc, list(cfg.url_fields))
            blocked = bool(url) and blocked_host(url, load_blocklist(tuple(cfg.url_blocklists)))
        out[f"{pre}__url__blocked"] = whole(text, float(blocked))
        return out
