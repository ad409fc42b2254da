"""Taggers: each turns a document into Dolma attributes
`{"<name>__<tagger>__<key>": [[start, end, score], ...]}`.

Quality taggers write *measurements* (word count, duplicate-line share, ...) as document-level spans,
never pass/fail: the thresholds are mixer rules in YAML, so changing one re-runs only the mixer.

Adding a tagger: a config dataclass as a field of `TaggersConfig` (config.py), one module in this
folder with a class decorated with `@register("<that field>")` declaring `config_type`,
`emits(cfg)` and `__call__` (base.py), and its import below; the attribute folder, the stage's
writers, the mixer's reader and the check of the mixer rules' attribute names all follow from the
registry. A tagger that follows several reference filters keeps one class per filter (`Reading`,
base.py): the quality tagger (quality.py) runs gopher.py's, c4.py's and fineweb.py's. The words and
compiled statistics they read are the text engine, data_pipeline/text/.
"""

from __future__ import annotations

from dataclasses import fields
from fnmatch import fnmatchcase

from ..config import TaggersConfig
from .badwords import badwords_for
from .base import TAGGERS, Attrs, DocView, Tagger, paragraph_spans, release_memory, whole
from .blocklist import blocked_host, load_blocklist
from .content import ContentTagger
from .fasttext_lid import fasttext_batch, fasttext_scores
from .lang import LangTagger
from .quality import QualityTagger
from .sampling import RandomTagger

__all__ = [
    "TAGGERS",
    "Attrs",
    "ContentTagger",
    "DocView",
    "LangTagger",
    "QualityTagger",
    "RandomTagger",
    "Tagger",
    "TaggerSet",
    "badwords_for",
    "blocked_host",
    "emitted_attributes",
    "enabled_groups",
    "fasttext_batch",
    "fasttext_scores",
    "load_blocklist",
    "paragraph_spans",
    "whole",
]


def enabled_groups(cfg: TaggersConfig) -> list[str]:
    """The attribute folders the enabled taggers write, in the order of TaggersConfig's fields
    (the order they run: the content tagger reads the language tagger's result)."""
    return [f.name for f in fields(cfg) if f.name in TAGGERS and getattr(cfg, f.name).enabled]


def emitted_attributes(cfg: TaggersConfig) -> list[str]:
    """Every attribute name (patterns with `*`) the enabled taggers can write."""
    return [a for g in enabled_groups(cfg) for a in TAGGERS[g].emits(getattr(cfg, g))]


def attribute_declared(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


class TaggerSet:
    """All enabled taggers; `groups` are the attribute folders they write (attributes/<group>/)."""

    def __init__(self, cfg: TaggersConfig):
        self.cfg = cfg
        self.taggers = {g: TAGGERS[g](getattr(cfg, g)) for g in enabled_groups(cfg)}

    @property
    def groups(self) -> list[str]:
        return list(self.taggers)

    def __call__(self, doc: dict) -> dict[str, Attrs]:
        view = DocView(doc)
        out: dict[str, Attrs] = {}
        context: dict = {}
        for g, tagger in self.taggers.items():
            out[g] = tagger(view, context)
            context[g] = out[g]
            provides = getattr(tagger, "provides", None)
            if provides is not None:
                context.update(provides(out[g]))
        release_memory()
        return out
