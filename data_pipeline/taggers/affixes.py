"""spaCy's affix walk compiled: its prefix, suffix and infix patterns as fixed-width programs that
one numba loop runs over every unseen chunk of a batch.

`FastSplit` (words.py) walks spaCy's `_split_affixes` with spaCy's own regexes, one Python call per
chunk (about 5 us). Here each pattern is read once into linear *programs* (its alternatives with
every branch expanded, in the pattern's order): a fixed sequence of character classes, maybe a
trailing run of one class (`\\.\\.+`), and lookbehind / lookahead checks at fixed offsets. That is
the whole subset spaCy's affix lists use (literals, classes of literals and ranges, fixed lookbehinds
and lookaheads, `(?!...)`, one `+`); a pattern holding anything else (`\\w`, a negated class, a
lazy repeat, flags) is not compiled and every chunk then goes the Python way.

`split_batch` gives, per chunk, spaCy's tokens as end offsets, or "undecided" where the Python path
must look: a special case could take part (any string the walk reaches, or any run of result
tokens, is a key of `tokenizer.rules`, compared by a 64-bit hash: a collision only sends a chunk
to the Python path), or the middle has an infix match past its start (spaCy's `url_match` decides
there). The semantics follow Python's `re` on the substring the walk holds: a prefix is the first
alternative matching at the start, a suffix the leftmost-starting match ending at the end, the
infix scan finditer's left-to-right first matches; lookarounds never see past the substring.
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

import numba
import numpy as np

_REPEATS = tuple(
    getattr(_C, n) for n in ("MAX_REPEAT", "POSSESSIVE_REPEAT") if hasattr(_C, n)
)  # greedy; MIN_REPEAT (lazy) is not read
_SMALL = (
    0x3100  # classes as a bitmap below this code point (Latin to CJK punctuation), ranges above
)
_MASK64 = (1 << 64) - 1
_BASE = 0x100000001B3  # polynomial hash base (mod 2^64), as kernels.token_hashes


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


@dataclass
class Tables:
    """The programs of the three patterns, packed for the kernel: numba passes every array
    argument with a reference count update (~11 ns each, measured), so the integer tables are one
    array `ints` whose header holds where each part starts (see _H_* below)."""

    ints: np.ndarray  # int64: header, then the parts
    bits: np.ndarray  # [class, code point < _SMALL] membership
    gate: np.ndarray  # [3, 0x110000] bool: can start (prefix, infix) / end (suffix) a match
    rules: np.ndarray  # sorted hashes of tokenizer.rules keys
    url_needs: frozenset[str]  # characters every url_match match contains


# ints header: where each part starts. Parts: class k's ranges are (lo, hi) pairs
# RANGES[2 * CLS_OFF[k] :: 2] up to CLS_OFF[k + 1]; program r is the row
# PROG[_ROW * r :] = width, run class (-1: none), run min, first of its classes in SEQ, its
# checks CHK[c0:c1) as (offset, class) pairs, its forbid groups GRP[g0:g1) as CHK ranges;
# STARTS[2 * kind] = first program of the kind, number of programs; a match starting (prefix,
# infix) or ending (suffix) with c < _SMALL can only come from the programs
# CAND[CAND_OFF[kind * (_SMALL + 1) + c] : ... + c + 1]
_H_CLS_OFF, _H_RANGES, _H_PROG, _H_SEQ, _H_CHK, _H_GRP, _H_STARTS, _H_CAND_OFF, _H_CAND = range(9)
_HEADER = 9
_ROW = 8


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
    rules = np.array(sorted({text_hash(k) for k in tk.rules}), dtype=np.uint64)
    url = getattr(tk.url_match, "__self__", None)
    return Tables(flat, bits, gate, rules, required_chars(url))


# ---------------------------------------------------------------- the kernel
# Helpers take the packed arrays (I: Tables.ints, bits, gate) and scalars: few array arguments
# per call (see Tables).


@numba.njit(cache=True)
def _in_big(I, k, c):
    """Whether code point c >= _SMALL is in class k: binary search over its sorted ranges."""
    rng = I[_H_RANGES]
    a, b = I[I[_H_CLS_OFF] + k], I[I[_H_CLS_OFF] + k + 1]
    while a < b:
        m = (a + b) // 2
        if I[rng + 2 * m + 1] < c:
            a = m + 1
        elif I[rng + 2 * m] > c:
            b = m
        else:
            return True
    return False


@numba.njit(cache=True)
def _match(I, bits, cp, lo, hi, p, r):
    """End of program r's match starting at p inside cp[lo:hi], or -1."""
    row = I[_H_PROG] + _ROW * r
    w, run, run_min = I[row], I[row + 1], I[row + 2]
    if p + w > hi:
        return -1
    seq = I[_H_SEQ] + I[row + 3]
    for k in range(w):
        cls, c = I[seq + k], cp[p + k]
        if not (bits[cls, c] if c < _SMALL else _in_big(I, cls, c)):
            return -1
    chk = I[_H_CHK]
    for j in range(I[row + 4], I[row + 5]):  # lookarounds that must hold
        q, cls = p + I[chk + 2 * j], I[chk + 2 * j + 1]
        if q < lo or q >= hi:
            return -1
        c = cp[q]
        if not (bits[cls, c] if c < _SMALL else _in_big(I, cls, c)):
            return -1
    grp = I[_H_GRP]
    for g in range(I[row + 6], I[row + 7]):  # negative lookarounds: none may hold
        hit = True
        for j in range(I[grp + 2 * g], I[grp + 2 * g + 1]):
            q, cls = p + I[chk + 2 * j], I[chk + 2 * j + 1]
            if q < lo or q >= hi:
                hit = False
                break
            c = cp[q]
            if not (bits[cls, c] if c < _SMALL else _in_big(I, cls, c)):
                hit = False
                break
        if hit:
            return -1
    e = p + w
    if run >= 0:
        n = 0
        while e < hi and (bits[run, cp[e]] if cp[e] < _SMALL else _in_big(I, run, cp[e])):
            e += 1
            n += 1
        if n < run_min:
            return -1
    return e


@numba.njit(cache=True)
def _cands(I, kind, c):
    """Candidate range for a match with edge character c: into CAND below _SMALL (then
    `_prog_at` reads the program id there), else every program of the kind."""
    if c < _SMALL:
        at = I[_H_CAND_OFF] + kind * (_SMALL + 1) + c
        return I[at], I[at + 1]
    first = I[I[_H_STARTS] + 2 * kind]
    return first, first + I[I[_H_STARTS] + 2 * kind + 1]


@numba.njit(cache=True)
def _prefix_len(I, bits, gate, cp, lo, hi):
    """find_prefix: the first alternative (in order) matching at the start."""
    if lo >= hi or not gate[0, cp[lo]]:
        return 0
    c = cp[lo]
    a, b = _cands(I, 0, c)
    for i in range(a, b):
        e = _match(I, bits, cp, lo, hi, lo, I[I[_H_CAND] + i] if c < _SMALL else i)
        if e >= 0:
            return e - lo
    return 0


@numba.njit(cache=True)
def _suffix_len(I, bits, gate, cp, lo, hi):
    """find_suffix: the leftmost-starting match ending at the end."""
    if lo >= hi or not gate[1, cp[hi - 1]]:
        return 0
    c = cp[hi - 1]
    best = hi
    a, b = _cands(I, 1, c)
    for i in range(a, b):
        r = I[I[_H_CAND] + i] if c < _SMALL else i
        row = I[_H_PROG] + _ROW * r
        w = I[row]
        if I[row + 1] < 0:
            p = hi - w
            if lo <= p < best and _match(I, bits, cp, lo, hi, p, r) == hi:
                best = p
        else:  # a run: the leftmost start whose greedy run reaches the end
            p = lo
            while p + w + I[row + 2] <= hi and p < best:
                if _match(I, bits, cp, lo, hi, p, r) == hi:
                    best = p
                    break
                p += 1
    return hi - best


@numba.njit(cache=True)
def _infix_split(I, bits, gate, cp, lo, hi, ends, t):
    """_attach_tokens' infix split of cp[lo:hi] as finditer gives it: token ends (relative to
    ends' chunk base, as ends[t:] holds them) written from ends[t]; returns the new token count. A
    match at the very start is consumed and skipped (spaCy's start_before_infixes); the scan
    resumes at each match's end (no program matches the empty string)."""
    base = ends[0]  # caller's chunk start
    start, p = lo, lo
    while p < hi:
        c = cp[p]
        e = -1
        if gate[2, c]:
            a, b = _cands(I, 2, c)
            for i in range(a, b):
                e = _match(I, bits, cp, lo, hi, p, I[I[_H_CAND] + i] if c < _SMALL else i)
                if e >= 0:
                    break
        if e < 0:
            p += 1
            continue
        if p != lo:
            if p != start:
                ends[t] = p - base
                t += 1
            ends[t] = e - base
            t += 1
            start = e
        p = e
    if start < hi:
        ends[t] = hi - base
        t += 1
    return t


@numba.njit(cache=True)
def _in_rules(rules, hsh, pw, a, b):
    """Whether the chunk's characters [a, b) hash to a key of tokenizer.rules."""
    h = hsh[b] - hsh[a] * pw[b - a]
    i = np.searchsorted(rules, h)
    return i < len(rules) and rules[i] == h


@numba.njit(cache=True)
def _matcher_hit(rules, hsh, pw, toks, t):
    """spaCy's special-case matcher could change tokens toks[1 : t + 1] (their end offsets,
    toks[0] the chunk start 0): some run of them (a single one of two or more characters) spells
    a rule key."""
    for i in range(t if t > 1 else 0):
        for j in range(i, t):
            s_i, e_j = toks[i], toks[j + 1]
            if (j > i or e_j - s_i > 1) and _in_rules(rules, hsh, pw, s_i, e_j):
                return True
    return False


@numba.njit(cache=True)
def _walk(I, bits, gate, rules, cp, c0, c1, hsh, pw, bounds, toks, url_toks):
    """_split_affixes then _attach_tokens on chunk cp[c0:c1]. Returns the number of tokens t (their
    end offsets in toks[1 : t + 1], toks[0] = 0) and, where the middle has an infix split, the
    middle's bounds (else -1, -1): spaCy keeps the middle whole if url_match takes it, which the
    caller decides. -1 tokens: a special case could take part. `bounds` is scratch (prefix ends
    from the front, suffix starts from the back), `url_toks` the tokens with the middle whole."""
    a, b, last = c0, c1, -1
    n_pre, n_suf = 0, 0
    while b > a and b - a != last:
        if _in_rules(rules, hsh, pw, a - c0, b - c0):
            return -1, -1, -1
        last = b - a
        pre = _prefix_len(I, bits, gate, cp, a, b)
        if pre and _in_rules(rules, hsh, pw, a + pre - c0, b - c0):
            return -1, -1, -1
        suf = _suffix_len(I, bits, gate, cp, a + pre, b)
        if suf and _in_rules(rules, hsh, pw, a - c0, b - suf - c0):
            return -1, -1, -1
        if pre:
            a += pre
            bounds[n_pre] = a
            n_pre += 1
        if suf:  # computed on what follows the prefix, so both always fit
            b -= suf
            n_suf += 1
            bounds[len(bounds) - n_suf] = b
    if b > a and _in_rules(rules, hsh, pw, a - c0, b - c0):
        return -1, -1, -1
    # tokens (offsets from c0): the prefixes, the middle (cut at its infixes), the suffixes
    # innermost first; suffix j (0: outermost) ends where suffix j - 1 starts
    toks[0] = c0  # _infix_split reads the base here
    t = 1
    for j in range(n_pre):
        toks[t] = bounds[j] - c0
        t += 1
    t_mid = t
    if b > a:
        t = _infix_split(I, bits, gate, cp, a, b, toks, t)
    split = t - t_mid > 1
    for j in range(n_suf - 1, -1, -1):
        toks[t] = (bounds[len(bounds) - j] if j > 0 else c1) - c0
        t += 1
    toks[0] = 0
    t -= 1
    if _matcher_hit(rules, hsh, pw, toks, t):
        return -1, -1, -1
    if not split:
        return t, -1, -1
    u = 0  # the same with the middle whole (url_match), checked by the matcher too
    for j in range(t_mid):
        url_toks[u] = toks[j]
        u += 1
    url_toks[u] = b - c0
    u += 1
    for j in range(t + 1):
        if toks[j] > b - c0:
            url_toks[u] = toks[j]
            u += 1
    if _matcher_hit(rules, hsh, pw, url_toks, u - 1):
        return -1, -1, -1
    return t, a - c0, b - c0


@numba.njit(cache=True)
def split_batch(I, bits, gate, rules, cp, offsets):
    """Chunk k is cp[offsets[k]:offsets[k + 1]]. Returns tokens per chunk (-1: undecided), token
    end offsets within the chunk (chunk k's at ends[offsets[k]:]) and, per chunk, the middle's
    bounds where it has an infix split (-1 else; url_match keeps it whole)."""
    n_chunks = len(offsets) - 1
    ntok = np.full(n_chunks, -1, dtype=np.int64)
    ends = np.zeros(len(cp), dtype=np.int64)
    mid = np.full((n_chunks, 2), -1, dtype=np.int64)
    base = np.uint64(_BASE)
    longest = 0
    for k in range(n_chunks):
        longest = max(longest, offsets[k + 1] - offsets[k])
    hsh = np.zeros(longest + 1, dtype=np.uint64)  # polynomial hashes of the chunk's prefixes
    pw = np.ones(longest + 1, dtype=np.uint64)
    for i in range(longest):
        pw[i + 1] = pw[i] * base
    bounds = np.zeros(2 * longest + 2, dtype=np.int64)
    toks = np.zeros(longest + 2, dtype=np.int64)
    url_toks = np.zeros(longest + 2, dtype=np.int64)
    for k in range(n_chunks):
        c0, c1 = offsets[k], offsets[k + 1]
        for i in range(c1 - c0):
            hsh[i + 1] = hsh[i] * base + np.uint64(cp[c0 + i])
        t, m0, m1 = _walk(I, bits, gate, rules, cp, c0, c1, hsh, pw, bounds, toks, url_toks)
        ntok[k] = t
        for j in range(t if t > 0 else 0):
            ends[c0 + j] = toks[j + 1]
        mid[k, 0], mid[k, 1] = m0, m1
    return ntok, ends, mid


def split_chunks(
    tables: Tables, chunks: list[str], url_match
) -> tuple[list[str], list[int], list[bool]]:
    """spaCy's tokens of the chunks the walk settles: (their tokens one after the other, tokens
    per chunk, 0 for the others; whether chunk k is settled). `url_match` is the tokenizer's: a
    middle with an infix split that it matches stays whole in spaCy, so that chunk is left to the
    caller (rare: a URL with a hyphen)."""
    joined = "".join(chunks)
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks)), out=offsets[1:])
    t = tables
    ntok, ends, mid = split_batch(t.ints, t.bits, t.gate, t.rules, cp, offsets)
    at = offsets[:-1]
    need = t.url_needs
    split_mids = np.flatnonzero(mid[:, 0] >= 0)
    for k, a, b in zip(split_mids.tolist(), *(at[split_mids] + mid[split_mids].T).tolist()):
        middle = joined[a:b]
        if need.issubset(middle) and url_match(middle) is not None:
            ntok[k] = -1
    n = np.maximum(ntok, 0)
    first = np.cumsum(n) - n  # each chunk's first token in the flat order
    total = int(n.sum())
    slot = np.repeat(at - first, n) + np.arange(total, dtype=np.int64)  # token i: ends[slot[i]]
    tok_end = np.repeat(at, n) + ends[slot]
    tok_start = np.empty(total, dtype=np.int64)
    tok_start[1:] = tok_end[:-1]
    has = n > 0
    tok_start[first[has]] = at[has]
    tokens = [joined[a:b] for a, b in zip(tok_start.tolist(), tok_end.tolist())]
    return tokens, n.tolist(), has.tolist()
