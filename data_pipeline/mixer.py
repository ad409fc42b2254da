"""Mixer rules over attributes: filters (with a removal reason and a step), span replacements, sampling.

Rules are small expressions (`langid__ft__lang__en < 0.5`, `frac(content__pii__email) > 0.1`) rather
than Dolma's JSONPath, because every attribute here is a list of [start, end, score] spans and the
four aggregates below cover what the Dolma/FineWeb/C4 rules need; the parser is in config.py so the
YAML is checked before any work starts.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import operator
from dataclasses import dataclass

from configcore import ConfigError

from .config import (
    VALIDATORS,
    FilterRule,
    MixerConfig,
    PipelineConfig,
    Replacement,
    SourceConfig,
    parse_expr,
)
from .dedup import emitted_attributes as dedup_attributes
from .taggers import attribute_declared, emitted_attributes

OPS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass
class Expr:
    agg: str
    attr: str
    op: str
    value: float
    text: str

    @classmethod
    def parse(cls, text: str) -> Expr:
        agg, attr, op, value = parse_expr(text)
        return cls(agg, attr, op, value, text)

    def measure(self, attrs: dict, doc_len: int) -> float:
        spans = attrs.get(self.attr)
        if not spans:
            return 0.0
        if self.agg == "max":
            return max(s[2] for s in spans)
        if self.agg == "sum":
            return float(sum(s[2] for s in spans))
        if self.agg == "count":
            return float(len(spans))
        covered = sum(max(0, s[1] - s[0]) for s in spans)  # frac
        return covered / max(1, doc_len)

    def holds(self, attrs: dict, doc_len: int) -> bool:
        return OPS[self.op](self.measure(attrs, doc_len), self.value)


@dataclass
class CompiledFilter:
    name: str
    step: str
    expr: Expr
    exclude: bool

    def removes(self, attrs: dict, doc_len: int) -> bool:
        hit = self.expr.holds(attrs, doc_len)
        return hit if self.exclude else not hit


def compile_filters(rules: list[FilterRule]) -> list[CompiledFilter]:
    return [
        CompiledFilter(r.name, r.step, Expr.parse(r.exclude or r.include), bool(r.exclude))
        for r in rules
    ]


STEP_ORDER = {"language": 0, "quality": 1, "content": 2, "dedup": 3}


class Mixer:
    def __init__(self, cfg: MixerConfig):
        self.cfg = cfg
        # evaluate in the order of the six steps, so a removal is charged to the earliest step
        self.filters = sorted(compile_filters(list(cfg.filters)), key=lambda f: STEP_ORDER[f.step])
        self.source_rules = [
            (s, [Expr.parse(e) for e in s.include], [Expr.parse(e) for e in s.exclude])
            for s in cfg.sources
        ]

    def source_of(self, doc: dict) -> SourceConfig | None:
        for s, _, _ in self.source_rules:
            if fnmatch.fnmatchcase(doc.get("source", ""), s.match):
                return s
        return None

    def decide(self, doc: dict, attrs: dict) -> tuple[SourceConfig | None, str, str, list[str]]:
        """(source, step, reason, every rule that fired); reason '' = kept."""
        n = len(doc["text"])
        src = self.source_of(doc)
        fired = [f for f in self.filters if f.removes(attrs, n)]
        names = [f.name for f in fired]
        if src is None:
            return None, "mix", "no_matching_source", names
        if fired:
            return src, fired[0].step, fired[0].name, names
        for s, inc, exc in self.source_rules:
            if s is src:
                for e in inc:
                    if not e.holds(attrs, n):
                        return src, "mix", f"{src.name}:include:{e.text}", names
                for e in exc:
                    if e.holds(attrs, n):
                        return src, "mix", f"{src.name}:exclude:{e.text}", names
        return src, "", "", names


def apply_replacements(
    text: str, attrs: dict, reps: list[Replacement]
) -> tuple[str, dict[str, int]]:
    """Replace spans (PII masks, duplicate paragraphs). Overlapping spans: the earlier-starting wins."""
    spans = []
    counts: dict[str, int] = {}
    for r in reps:
        for s in attrs.get(r.attribute, ()):
            if s[2] >= r.min_score and s[1] > s[0]:
                spans.append((int(s[0]), int(s[1]), r.text, r.name))
    if not spans:
        return text, counts
    spans.sort(key=lambda x: (x[0], -x[1]))
    out, pos = [], 0
    for start, end, rep, name in spans:
        if start < pos:
            continue
        out.append(text[pos:start])
        out.append(rep)
        pos = end
        counts[name] = counts.get(name, 0) + 1
    out.append(text[pos:])
    return "".join(out), counts


def copies(rate: float, u: float) -> int:
    """Epochs of one document for a sampling rate: floor(rate), plus one more with probability frac(rate),
    decided by the document's own random attribute u so reruns choose the same documents."""
    whole = math.floor(rate)
    return whole + (1 if u < rate - whole else 0)


def _rule_attributes(cfg: MixerConfig) -> list[tuple[str, str]]:
    """(where, attribute) of every attribute a rule of the mixer names."""
    out = []
    for r in cfg.filters:
        out.append((f"mixer.filters[{r.name}]", parse_expr(r.exclude or r.include)[1]))
    for s in cfg.sources:
        for e in [*s.include, *s.exclude]:
            out.append((f"mixer.sources[{s.name}]", parse_expr(e)[1]))
    for rep in cfg.replacements:
        out.append((f"mixer.replacements[{rep.name}]", rep.attribute))
    return out


def check_rule_attributes(pc: PipelineConfig) -> None:
    """A rule naming an attribute no enabled tagger or dedup part writes would silently compare 0
    (a missing attribute counts as 0): reject it before any work starts, naming the closest names."""
    declared = emitted_attributes(pc.taggers) + dedup_attributes(pc.dedup)
    for where, attr in _rule_attributes(pc.mixer):
        if attribute_declared(attr, declared):
            continue
        close = difflib.get_close_matches(attr, declared, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "no enabled tagger writes it"
        raise ConfigError(
            f"{where} names attribute {attr!r}, which no enabled tagger or dedup part writes; "
            f"{hint} (enable the tagger that writes it, or fix the name)"
        )


VALIDATORS.append(check_rule_attributes)
