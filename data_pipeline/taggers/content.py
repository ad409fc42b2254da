"""The content tagger: PII spans (pii.py, one class per reading), bad words per language
(badwords.py), URL blocklists (blocklist.py), over one compiled pass of the text (scan.py).
"""

from __future__ import annotations

from ..config import ContentTaggerConfig
from ..io import doc_url
from .badwords import BADWORDS_DIR, badwords_for
from .base import Attrs, Tagger, as_view, register, whole
from .blocklist import blocked_host, load_blocklist
from .pii import READINGS
from .scan import NO_WORDS, scan


@register("content")
class ContentTagger(Tagger):
    config_type = ContentTaggerConfig

    def __init__(self, cfg: ContentTaggerConfig):
        self.cfg = cfg
        self.bw_dir = cfg.badwords_dir or str(BADWORDS_DIR)
        self._lang_name = ""

    @staticmethod
    def emits(cfg: ContentTaggerConfig) -> list[str]:
        pre, out = cfg.name, []
        if cfg.pii:
            for k in READINGS[cfg.pii_reading].kinds:
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
            words = bw.table if bw is not None and bw.regex is None else NO_WORDS
            scanned = scan(text, words, view.cps)
            n_words, _, starts, ends, cand, exact, _ = scanned
        if cfg.pii:
            for kind, spans in READINGS[cfg.pii_reading].spans(text, scanned).items():
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
