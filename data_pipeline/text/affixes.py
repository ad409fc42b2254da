"""spaCy's affix patterns read into fixed-width programs for the compiled walk (chunk_memo.py).

`FastSplit` (words.py) walks spaCy's `_split_affixes` with spaCy's own regexes, one Python call per
chunk (about 5 us). Here each pattern is read once into linear *programs* (its alternatives with
every branch expanded, in the pattern's order): a fixed sequence of character classes, maybe a
trailing run of one class (`\\.\\.+`), and lookbehind / lookahead checks at fixed offsets. That is
the whole subset spaCy's affix lists use (literals, classes of literals and ranges, fixed lookbehinds
and lookaheads, `(?!...)`, one `+`); a pattern holding anything else (`\\w`, a negated class, a
lazy repeat, flags) is not compiled and every chunk then goes the Python way. `build_tables` packs
the programs, per-character candidate lists and the hashes of the special-case keys into
`chunk_memo.Tables`.

The kernel (`chunk_memo._walk`, `split_chunks`) gives, per chunk, spaCy's tokens or "undecided"
where the Python path must look: a special case could take part (any string the walk reaches, any
run of two or more result tokens, or a single token whose rule is not the token itself, is a key of
`tokenizer.rules`, compared by a 64-bit hash: a collision only sends a chunk to the Python path),
or a middle with an infix split could be a URL (spaCy's `url_match` decides there). The semantics
follow Python's `re` on the substring the walk holds: a prefix is the first alternative matching
at the start, a suffix the leftmost-starting match ending at the end, the infix scan finditer's
left-to-right first matches; lookarounds never see past the substring.
tests/data_pipeline/test_taggers.py checks every decided chunk against spaCy itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import product

try:  # the stdlib's regex parser (Python 3.11+ names; 3.10 below)
    from re import _constants as _C
    from re import _parser
except ImportError:  # Python 3.10
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

import numpy as np

from .chunk_memo import (
    _BASE,
    _H_N_RULES,
    _HEADER,
    _ROW,
    _SMALL,
    Tables,
)

_REPEATS = tuple(
    getattr(_C, n) for n in ("MAX_REPEAT", "POSSESSIVE_REPEAT") if hasattr(_C, n)
)  # greedy; MIN_REPEAT (lazy) is not read
_MASK64 = (1 << 64) - 1


class Unsupported(Exception):
    """A pattern element outside the compiled subset: the pattern stays with Python's re."""


@dataclass
class Program:
    """One alternative: `classes` consumed in order, then (if `run`) a greedy run of at least
    `run_min` characters of class `run`; `checks` are (offset from the match start, class)
    lookaround characters that must be there; `forbid` groups of such checks that must not all
    hold (a negative lookaround)."""

    classes: list[int] = field(default_factory=list)
    run: int = -1
    run_min: int = 0
    checks: list[tuple[int, int]] = field(default_factory=list)
    forbid: list[list[tuple[int, int]]] = field(default_factory=list)
    begins: bool = False  # anchored at the start (^ before anything consumed)
    ends: bool = False  # anchored at the end ($ after everything consumed)


class _Reader:
    """Parse trees -> programs; classes are interned as sorted, merged code point ranges."""

    def __init__(self) -> None:
        self.classes: list[tuple[tuple[int, int], ...]] = []
        self._ids: dict[tuple[tuple[int, int], ...], int] = {}

    def cls(self, ranges: list[tuple[int, int]]) -> int:
        merged: list[list[int]] = []
        for a, b in sorted(ranges):
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        key = tuple((a, b) for a, b in merged)
        if key not in self._ids:
            self._ids[key] = len(self.classes)
            self.classes.append(key)
        return self._ids[key]

    def char_class(self, op, av) -> int:
        if op is _C.LITERAL:
            return self.cls([(av, av)])
        if op is _C.IN:
            ranges = []
            for kind, val in av:
                if kind is _C.LITERAL:
                    ranges.append((val, val))
                elif kind is _C.RANGE:
                    ranges.append(val)
                else:  # NEGATE, CATEGORY (\w, \d): not compiled
                    raise Unsupported(str(kind))
            return self.cls(ranges)
        raise Unsupported(str(op))

    def fixed(self, seq) -> list[list[int]]:
        """A lookaround body: every expansion as a list of classes (fixed width, no runs)."""
        out: list[list[int]] = [[]]
        for op, av in seq:
            if op in (_C.LITERAL, _C.IN):
                c = self.char_class(op, av)
                out = [o + [c] for o in out]
            elif op is _C.BRANCH:
                alts = [a for b in av[1] for a in self.fixed(b)]
                out = [o + a for o, a in product(out, alts)]
            elif op is _C.SUBPATTERN and not av[1] and not av[2]:
                out = [o + a for o, a in product(out, self.fixed(av[3]))]
            elif op in _REPEATS and av[0] == av[1]:
                inner = self.fixed(av[2])
                for _ in range(av[0]):
                    out = [o + a for o, a in product(out, inner)]
            else:
                raise Unsupported(str(op))
        return out

    def programs(self, seq, anchor) -> list[Program]:
        """Every expansion of a sequence, in the order re tries them."""
        progs = [Program()]
        items = list(seq)
        for i, (op, av) in enumerate(items):
            if op is _C.AT:
                if av is not anchor:
                    raise Unsupported(f"anchor {av}")
                for p in progs:
                    if av is _C.AT_BEGINNING:
                        if p.classes or p.run >= 0:
                            raise Unsupported("^ after characters")
                        p.begins = True
                    else:
                        p.ends = True
                continue
            if op in (_C.LITERAL, _C.IN):
                c = self.char_class(op, av)
                for p in progs:
                    if p.run >= 0 or p.ends:
                        raise Unsupported("characters after a run or $")
                    p.classes.append(c)
            elif op is _C.BRANCH:
                out = []
                for p in progs:
                    for b in av[1]:
                        for q in self.programs(b, anchor):
                            out.append(_join(p, q))
                progs = out
            elif op is _C.SUBPATTERN:
                if av[1] or av[2]:
                    raise Unsupported("inline flags")
                progs = [_join(p, q) for p in progs for q in self.programs(av[3], anchor)]
            elif op in (_C.ASSERT, _C.ASSERT_NOT):
                direction, body = av
                bodies = self.fixed(body)
                for p in progs:
                    if p.run >= 0:
                        raise Unsupported("lookaround after a run")
                    at = len(p.classes)
                    groups = [
                        [(at - len(b) + k if direction < 0 else at + k, c) for k, c in enumerate(b)]
                        for b in bodies
                    ]
                    if op is _C.ASSERT_NOT:  # none of the bodies may match
                        p.forbid.extend(groups)
                    elif len(groups) == 1:
                        p.checks.extend(groups[0])
                    else:  # (?<=a|b) inside one program: expand like a branch
                        raise Unsupported("branching positive lookaround")
            elif op in _REPEATS:
                lo, hi, inner = av
                body = self.fixed(inner)
                if lo == hi:
                    for _ in range(lo):
                        progs = [_append(p, b) for p in progs for b in body]
                elif hi >= _C.MAXREPEAT and len(body) == 1 and len(body[0]) == 1:
                    if i != len(items) - 1 and not all(o is _C.AT for o, _ in items[i + 1 :]):
                        raise Unsupported("run not at the end")
                    for p in progs:
                        if p.ends:
                            raise Unsupported("a run after $")
                        for _ in range(lo - 1):
                            p.classes.append(body[0][0])
                        p.run, p.run_min = body[0][0], 1 if lo >= 1 else 0
                else:
                    raise Unsupported("bounded repeat")
            else:
                raise Unsupported(str(op))
        return progs


def _join(p: Program, q: Program) -> Program:
    if (p.run >= 0 or p.ends) and (q.classes or q.run >= 0 or q.checks or q.forbid):
        raise Unsupported("characters after a run or $")
    if q.begins and (p.classes or p.run >= 0):
        raise Unsupported("^ after characters")
    at = len(p.classes)
    return Program(
        p.classes + q.classes,
        q.run if q.run >= 0 else p.run,
        q.run_min if q.run >= 0 else p.run_min,
        p.checks + [(o + at, c) for o, c in q.checks],
        p.forbid + [[(o + at, c) for o, c in g] for g in q.forbid],
        p.begins or q.begins,
        p.ends or q.ends,
    )


def _append(p: Program, body: list[int]) -> Program:
    if p.run >= 0 or p.ends:
        raise Unsupported("characters after a run or $")
    return Program(
        p.classes + body, p.run, p.run_min, list(p.checks), [list(g) for g in p.forbid], p.begins
    )


def _required(seq) -> set[int]:
    """Code points every match of a parsed sequence contains (a sequence needs what each of its
    elements needs; a branch what all its alternatives need; a class of one character that one)."""
    need: set[int] = set()
    for op, av in seq:
        if op is _C.LITERAL:
            need.add(av)
        elif op is _C.IN and len(av) == 1 and av[0][0] is _C.LITERAL:
            need.add(av[0][1])
        elif op is _C.BRANCH:
            alts = [_required(b) for b in av[1]]
            need |= set.intersection(*alts) if alts else set()
        elif op is _C.SUBPATTERN:
            need |= _required(av[3])
        elif op in _REPEATS + (_C.MIN_REPEAT,) and av[0] >= 1:
            need |= _required(av[2])
    return need


def required_chars(compiled: re.Pattern | None) -> frozenset[str]:
    """Characters any match of `compiled` must contain (spaCy's url_match: "."): a string without
    one of them cannot match, so the regex is not run. Empty if unknown (IGNORECASE and the like)."""
    if compiled is None or compiled.flags & ~re.UNICODE:
        return frozenset()
    return frozenset(map(chr, _required(_parser.parse(compiled.pattern, compiled.flags))))


def read_programs(compiled: re.Pattern | None, reader: _Reader, anchor) -> list[Program] | None:
    """The programs of one spaCy affix pattern, or None if it holds an element outside the subset
    (or carries flags other than the str default)."""
    if compiled is None or compiled.flags & ~re.UNICODE:
        return None
    try:
        progs = reader.programs(_parser.parse(compiled.pattern, compiled.flags), anchor)
    except Unsupported:
        return None
    for p in progs:
        if not p.classes and p.run_min == 0:  # may match the empty string: re's rules on empty
            return None  # matches are not modelled
        if (anchor is _C.AT_BEGINNING and not p.begins) or (anchor is _C.AT_END and not p.ends):
            return None  # an alternative without the anchor the kernel assumes
    return progs


def _edge(p: Program, last: bool) -> list[int]:
    """The classes the first (or last) character of a match of `p` is in."""
    if last:
        return ([p.run] if p.run >= 0 else []) + (p.classes[-1:] if p.run_min == 0 else [])
    return p.classes[:1] or [p.run]


def _gate(reader: _Reader, progs: list[Program], last: bool) -> np.ndarray:
    """Characters a match can start with (or end with, `last`): a quick test before the programs."""
    g = np.zeros(0x110000, dtype=np.bool_)
    for p in progs:
        for k in _edge(p, last):
            for a, b in reader.classes[k]:
                g[a : b + 1] = True
    return g


def _candidates(reader: _Reader, progs: list[list[Program]], first: list[int]):
    """Per kind and code point below _SMALL, the programs whose edge class holds it, in order."""
    off = np.zeros((3, _SMALL + 1), dtype=np.int64)
    flat: list[int] = []
    for kind, plist in enumerate(progs):
        per: list[list[int]] = [[] for _ in range(_SMALL)]
        for r, p in enumerate(plist):
            hit = np.zeros(_SMALL, dtype=np.bool_)
            for k in _edge(p, last=kind == 1):
                for a, b in reader.classes[k]:
                    if a < _SMALL:
                        hit[a : min(b, _SMALL - 1) + 1] = True
            for c in np.flatnonzero(hit).tolist():
                per[c].append(first[kind] + r)
        for c in range(_SMALL):
            off[kind, c] = len(flat)
            flat += per[c]
        off[kind, _SMALL] = len(flat)
    return off.ravel(), np.array(flat, dtype=np.int64)


def text_hash(text: str) -> int:
    h = 0
    for ch in text:
        h = (h * _BASE + ord(ch)) & _MASK64
    return h


def build_tables(nlp) -> Tables | None:
    """Tables of a spaCy tokenizer's prefix, suffix and infix patterns; None if one of them is
    outside the subset or the tokenizer has a token_match (checked before every affix step)."""
    tk = nlp.tokenizer
    if tk.token_match is not None:
        return None
    reader = _Reader()
    read = [
        read_programs(getattr(tk.prefix_search, "__self__", None), reader, _C.AT_BEGINNING),
        read_programs(getattr(tk.suffix_search, "__self__", None), reader, _C.AT_END),
        read_programs(getattr(tk.infix_finditer, "__self__", None), reader, None),
    ]
    if any(r is None for r in read):
        return None
    progs: list[list[Program]] = read  # type: ignore[assignment]
    n_cls = len(reader.classes)
    bits = np.zeros((n_cls, _SMALL), dtype=np.bool_)
    cls_off, ranges = [0], []
    for k, rs in enumerate(reader.classes):
        for lo, hi in rs:
            if lo < _SMALL:
                bits[k, lo : min(hi, _SMALL - 1) + 1] = True
            ranges += [lo, hi]
        cls_off.append(len(ranges) // 2)
    rows, seq, chk, grp, starts = [], [], [], [], []
    for plist in progs:
        starts += [len(rows) // _ROW, len(plist)]
        for p in plist:
            c0 = len(chk) // 2
            chk += [x for c in p.checks for x in c]
            g0 = len(grp) // 2
            for g in p.forbid:
                grp += [len(chk) // 2, len(chk) // 2 + len(g)]
                chk += [x for c in g for x in c]
            rows += [len(p.classes), p.run, p.run_min, len(seq), c0, c0 + len(p.checks)]
            rows += [g0, len(grp) // 2]
            seq += p.classes
    cand_off, cand = _candidates(reader, progs, starts[::2])
    parts = [cls_off, ranges, rows, seq, chk, grp, starts, cand_off, cand]
    ints, at = list(range(_HEADER)), _HEADER
    for i, part in enumerate(parts):
        ints[i] = at
        at += len(part)
    ints[_H_N_RULES] = len({text_hash(k) for k in tk.rules})
    flat = np.concatenate(
        [np.array(ints, dtype=np.int64)] + [np.asarray(x, np.int64) for x in parts]
    )
    gate = np.stack(
        [
            _gate(reader, progs[0], False),
            _gate(reader, progs[1], True),
            _gate(reader, progs[2], False),
        ]
    )
    from spacy.symbols import ORTH  # spaCy is loaded: nlp is a spaCy pipeline

    every = sorted({text_hash(k) for k in tk.rules})
    # "'s" -> ["'s"] (its NORM differs, its text does not): the matcher leaves such a token as is
    changing = sorted(
        {text_hash(k) for k, v in tk.rules.items() if [t.get(ORTH) for t in v] != [k]}
    )
    rules = np.array(every + changing, dtype=np.uint64)
    url = getattr(tk.url_match, "__self__", None)
    return Tables(flat, bits, gate, rules, required_chars(url))
