"""The compiled half of spaCy's words: the affix walk's kernel and the word memo's hash tables.

The walk: affixes.py reads spaCy's prefix, suffix and infix patterns into fixed-width programs
packed in `Tables`; `_walk` runs them on one chunk (`split_chunks` on a list of chunks).
All numba code that calls into the walk lives in this file: numba's on-disk cache is keyed on
the file of each function only, so a kernel calling a jitted function of another module would
keep a stale copy of it after that module changes.

The memo: whitespace chunk -> spaCy token ids. A document's chunks are found, hashed and looked up in one compiled pass over its code points;
an unseen chunk goes through the compiled affix walk (affixes.py) and its tokens are interned
(token -> id, with the per-token properties the quality statistics read) in the same pass, so
Python sees only the chunks the walk leaves (about 1%: possible special cases, URLs). Keys are
64-bit hashes, and every hit is confirmed by comparing the code points with the stored chunk or
token: a collision costs a probe, never a wrong id.

State is a set of numpy arrays owned by `words.ChunkVocab` (`MemoState`) that the kernels fill in
place: a kernel stops at the first chunk the arrays have no room for, Python grows them (doubling)
and calls again from there, so memory follows what is stored, whatever the document's size.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, fields

import numba
import numpy as np

# classes as a bitmap below this code point (Latin to CJK punctuation), ranges above
_SMALL = 0x3100
_BASE = 0x100000001B3  # polynomial hash base (mod 2^64) of chunks, tokens and rule keys


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
_H_N_RULES = 9  # rules holds every key's hash (sorted), then those of keys whose rule is not
# the key itself as one token (sorted): only those can change a single token the walk made
_HEADER = 10
_ROW = 8


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
def _in_rules(rules, lo, hi, hsh, pw, a, b):
    """Whether the chunk's characters [a, b) hash to a key among rules[lo:hi] (sorted)."""
    h = hsh[b] - hsh[a] * pw[b - a]
    i = lo + np.searchsorted(rules[lo:hi], h)
    return i < hi and rules[i] == h


@numba.njit(cache=True)
def _matcher_hit(rules, n_all, hsh, pw, toks, t):
    """spaCy's special-case matcher could change tokens toks[1 : t + 1] (their end offsets,
    toks[0] the chunk start 0): some run of two or more of them spells a rule key, or a single
    one (of two or more characters) a key whose rule is not that token itself."""
    for i in range(t if t > 1 else 0):
        for j in range(i, t):
            s_i, e_j = toks[i], toks[j + 1]
            if j > i:
                if _in_rules(rules, 0, n_all, hsh, pw, s_i, e_j):
                    return True
            elif e_j - s_i > 1 and _in_rules(rules, n_all, len(rules), hsh, pw, s_i, e_j):
                return True
    return False


@numba.njit(cache=True)
def _walk(I, bits, gate, rules, cp, c0, c1, hsh, pw, bounds, toks, url_toks):
    """_split_affixes then _attach_tokens on chunk cp[c0:c1]. Returns the number of tokens t (their
    end offsets in toks[1 : t + 1], toks[0] = 0) and, where the middle has an infix split, the
    middle's bounds (else -1, -1): spaCy keeps the middle whole if url_match takes it, which the
    caller decides. -1 tokens: a special case could take part. `bounds` is scratch (prefix ends
    from the front, suffix starts from the back), `url_toks` the tokens with the middle whole."""
    n_all = I[_H_N_RULES]
    a, b, last = c0, c1, -1
    n_pre, n_suf = 0, 0
    while b > a and b - a != last:
        if _in_rules(rules, 0, n_all, hsh, pw, a - c0, b - c0):
            return -1, -1, -1
        last = b - a
        pre = _prefix_len(I, bits, gate, cp, a, b)
        if pre and _in_rules(rules, 0, n_all, hsh, pw, a + pre - c0, b - c0):
            return -1, -1, -1
        suf = _suffix_len(I, bits, gate, cp, a + pre, b)
        if suf and _in_rules(rules, 0, n_all, hsh, pw, a - c0, b - suf - c0):
            return -1, -1, -1
        if pre:
            a += pre
            bounds[n_pre] = a
            n_pre += 1
        if suf:  # computed on what follows the prefix, so both always fit
            b -= suf
            n_suf += 1
            bounds[len(bounds) - n_suf] = b
    if b > a and _in_rules(rules, 0, n_all, hsh, pw, a - c0, b - c0):
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
    if _matcher_hit(rules, n_all, hsh, pw, toks, t):
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
    if _matcher_hit(rules, n_all, hsh, pw, url_toks, u - 1):
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


# ---------------------------------------------------------------- the memo
# per code point flags (char_flags): what the token properties read
ALPHA, PUNCT_SET, CATEGORY_P, SENT_PUNCT, SPACE = 1, 2, 4, 8, 16


def char_flags(punct_set: frozenset[str], sent_chars: frozenset[str]) -> np.ndarray:
    """uint8 flags of every code point: str.isalpha(), in datatrove's PUNCTUATION_SET, Unicode
    category P* (spaCy's is_punct, spacy/lang/lex_attrs.py), a Sentencizer punct character,
    str.isspace() (what str.split() cuts at)."""
    chars = [chr(c) for c in range(0x110000)]
    flags = np.zeros(0x110000, dtype=np.uint8)
    flags[[c.isalpha() for c in chars]] |= ALPHA
    flags[[c.isspace() for c in chars]] |= SPACE
    flags[[unicodedata.category(c)[0] == "P" for c in chars]] |= CATEGORY_P
    flags[[ord(c) for c in punct_set]] |= PUNCT_SET
    flags[[ord(c) for c in sent_chars]] |= SENT_PUNCT
    return flags


@dataclass
class MemoState:
    """The memo's arrays. Chunk k: code points ccp[cp_at[k] : cp_at[k] + cp_len[k]], tokens
    flat[start[k] : start[k] + count[k]]. Token i: code points ccp[tok_at[i] : + length[i]], its
    properties below. Hash tables: keys (0: empty) and values (ids), open addressing.
    n = [chunks, tokens, code points in ccp, entries in flat]."""

    n: np.ndarray
    chunk_keys: np.ndarray
    chunk_vals: np.ndarray
    ccp: np.ndarray
    cp_at: np.ndarray
    cp_len: np.ndarray
    start: np.ndarray
    count: np.ndarray
    flat: np.ndarray
    tok_keys: np.ndarray
    tok_vals: np.ndarray
    tok_at: np.ndarray
    length: np.ndarray
    non_symbol: np.ndarray  # a character outside datatrove's PUNCTUATION_SET
    alpha: np.ndarray  # a character with str.isalpha()
    stop: np.ndarray  # one of Gopher's eight stop words (case-sensitive)
    sent_punct: np.ndarray  # a Sentencizer punct character
    is_punct: np.ndarray  # spaCy's IS_PUNCT: every character in category P
    chash: np.ndarray  # polynomial hash of the token's code points and base^length (mod 2^64)
    cpow: np.ndarray

    @classmethod
    def empty(cls) -> MemoState:
        s = cls(np.zeros(4, np.int64), *[np.zeros(0, np.int64)] * 19)
        s.chunk_keys, s.tok_keys = np.zeros(16, np.uint64), np.zeros(16, np.uint64)
        s.chunk_vals, s.tok_vals = np.zeros(16, np.int64), np.zeros(16, np.int64)
        s.ccp = np.zeros(0, np.uint32)
        for name in ("non_symbol", "alpha", "stop", "sent_punct", "is_punct"):
            setattr(s, name, np.zeros(0, np.bool_))
        s.chash, s.cpow = np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        return s

    def as_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def reserve(self, chunks: int, cps: int) -> None:
        """Room for `chunks` more chunks and `cps` more code points (and as many tokens)."""
        n_chunks, n_tokens, n_cp, n_flat = self.n.tolist()
        _grow(self, ("cp_at", "cp_len", "start", "count"), n_chunks + chunks)
        _grow(self, ("ccp",), n_cp + cps)
        _grow(self, ("flat",), n_flat + cps)
        _grow(
            self,
            ("tok_at", "length", "non_symbol", "alpha", "stop", "sent_punct", "is_punct")
            + ("chash", "cpow"),
            n_tokens + cps,
        )
        for keys, vals, need in (
            ("chunk_keys", "chunk_vals", n_chunks + chunks),
            ("tok_keys", "tok_vals", n_tokens + cps),
        ):
            size = len(getattr(self, keys))
            if 2 * need > size:  # load factor <= 1/2
                while 2 * need > size:
                    size *= 2
                k, v = rehash(getattr(self, keys), getattr(self, vals), size)
                setattr(self, keys, k)
                setattr(self, vals, v)


def _grow(state: MemoState, names: tuple[str, ...], need: int) -> None:
    for name in names:
        a = getattr(state, name)
        if len(a) < need:
            b = np.zeros(max(need, 2 * len(a), 1024), dtype=a.dtype)
            b[: len(a)] = a
            setattr(state, name, b)


@numba.njit(cache=True)
def rehash(keys, vals, size):
    new_k = np.zeros(size, dtype=np.uint64)
    new_v = np.zeros(size, dtype=np.int64)
    mask = np.uint64(size - 1)
    for i in range(len(keys)):
        if keys[i] != 0:
            s = keys[i] & mask
            while new_k[s] != 0:
                s = (s + np.uint64(1)) & mask
            new_k[s] = keys[i]
            new_v[s] = vals[i]
    return new_k, new_v


@numba.njit(cache=True)
def _key(h, n):
    """splitmix64's finaliser of a polynomial hash and the length, low bit set (0: empty slot).
    (kernels._finish mixes the same way; not imported: numba's cache would not see it change.)"""
    h ^= np.uint64(n) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h | np.uint64(1)


@numba.njit(cache=True)
def _add_chunk(S, cp, a, b, key, slot, tok_ends, n_tok, flags, stop_cp, stop_off):
    """Store chunk cp[a:b] (hash key, the empty slot of the chunk table to use) with tokens
    ending at tok_ends[1 : n_tok + 1] (offsets in the chunk; tok_ends[0] = 0), interning each
    token (added with its properties if new); returns the chunk's id. One call per new chunk:
    the token loop is written out here because numba updates the reference count of every array
    argument of a call (~11 ns each)."""
    n, ckeys, cvals, ccp, cp_at, cp_len, start, count, flat = S[:9]
    tkeys, tvals, tok_at, length, non_symbol, alpha, stop, sent_punct, is_punct = S[9:18]
    chash, cpow = S[18], S[19]
    k, c0, f0 = n[0], n[2], n[3]
    for i in range(b - a):
        ccp[c0 + i] = cp[a + i]
    n[2] += b - a
    cp_at[k], cp_len[k], start[k], count[k] = c0, b - a, f0, n_tok
    base = np.uint64(_BASE)
    tmask = np.uint64(len(tkeys) - 1)
    for j in range(n_tok):
        t0, t1 = c0 + tok_ends[j], c0 + tok_ends[j + 1]
        h = np.uint64(0)
        p = np.uint64(1)
        for i in range(t0, t1):
            h = h * base + np.uint64(ccp[i])
            p = p * base
        tkey = _key(h, t1 - t0)
        s = tkey & tmask
        tid = -1
        while tkeys[s] != 0:  # probe; a hit counts only if the code points are the same
            if tkeys[s] == tkey and length[tvals[s]] == t1 - t0:
                at = tok_at[tvals[s]]
                same = True
                for i in range(t1 - t0):
                    if ccp[at + i] != ccp[t0 + i]:
                        same = False
                        break
                if same:
                    tid = tvals[s]
                    break
            s = (s + np.uint64(1)) & tmask
        if tid < 0:  # a new token: its properties from the code point flags
            tid = n[1]
            n[1] += 1
            tkeys[s], tvals[s] = tkey, tid
            tok_at[tid], length[tid] = t0, t1 - t0
            ns, al, pu = False, False, True
            for i in range(t0, t1):
                f = flags[ccp[i]]
                ns |= (f & PUNCT_SET) == 0
                al |= (f & ALPHA) != 0
                pu &= (f & CATEGORY_P) != 0
            non_symbol[tid], alpha[tid], is_punct[tid] = ns, al, pu
            sent_punct[tid] = t1 - t0 == 1 and (flags[ccp[t0]] & SENT_PUNCT) != 0
            is_stop = False
            for w in range(len(stop_off) - 1):
                w0, w1 = stop_off[w], stop_off[w + 1]
                if w1 - w0 == t1 - t0:
                    is_stop = True
                    for i in range(t1 - t0):
                        if stop_cp[w0 + i] != ccp[t0 + i]:
                            is_stop = False
                            break
                    if is_stop:
                        break
            stop[tid] = is_stop
            chash[tid], cpow[tid] = h, p
        flat[f0 + j] = tid
    n[3] += n_tok
    ckeys[slot], cvals[slot] = key, k
    n[0] += 1
    return k


@numba.njit(cache=True)
def _find_chunk(keys, vals, ccp, cp_at, cp_len, cp, a, b, key):
    """(chunk id or -1, the slot where the search ended: the chunk's or the empty one to use)."""
    mask = np.uint64(len(keys) - 1)
    s = key & mask
    while keys[s] != 0:
        if keys[s] == key:
            k = vals[s]
            if cp_len[k] == b - a:
                at = cp_at[k]
                same = True
                for i in range(b - a):
                    if ccp[at + i] != cp[a + i]:
                        same = False
                        break
                if same:
                    return k, s
        s = (s + np.uint64(1)) & mask
    return -1, s


# a chunk longer than this goes to Python (FastSplit, spaCy): the walk's scratch stays small
MAX_WALK = 1 << 16


@numba.njit(cache=True)
def chunk_spans(cp, flags):
    """(start, end) of each whitespace chunk of cp, as str.split() cuts them."""
    m, inside = 0, False
    for i in range(len(cp)):  # count first
        sp = (flags[cp[i]] & SPACE) != 0
        if not sp and not inside:
            m += 1
        inside = not sp
    spans = np.zeros((m, 2), dtype=np.int64)
    k, i, n = 0, 0, len(cp)
    while i < n:
        if (flags[cp[i]] & SPACE) != 0:
            i += 1
            continue
        j = i
        while j < n and (flags[cp[j]] & SPACE) == 0:
            j += 1
        spans[k, 0], spans[k, 1] = i, j
        k += 1
        i = j
    return spans


@numba.njit(cache=True)
def index_chunks(cp, spans, k0, cids, S, W, walk, flags, stop_cp, stop_off, url_need):
    """Chunk ids of the chunks spans[k0:] of cp into cids, adding the unseen ones the affix walk
    settles (if `walk`; W = Tables' ints, bits, gate, rules); -1 stays where Python must
    tokenise. Returns where it stopped: len(spans), or the first chunk S has no room for (the
    caller grows S and calls again from there)."""
    m = len(spans)
    longest = 0
    for k in range(k0, m):
        longest = max(longest, min(spans[k, 1] - spans[k, 0], MAX_WALK))
    base = np.uint64(_BASE)
    hsh = np.zeros(longest + 1, dtype=np.uint64)  # prefix hashes of the chunk (rules lookups)
    pw = np.ones(longest + 1, dtype=np.uint64)
    for i in range(longest):
        pw[i + 1] = pw[i] * base
    bounds = np.zeros(2 * longest + 2, dtype=np.int64)
    toks = np.zeros(longest + 2, dtype=np.int64)
    url_toks = np.zeros(longest + 2, dtype=np.int64)
    I, bits, gate, rules = W
    n, keys, vals, ccp, cp_at, cp_len, flat, tkeys = S[0], S[1], S[2], S[3], S[4], S[5], S[8], S[9]
    mask = np.uint64(len(keys) - 1)
    for k in range(k0, m):
        a, b = spans[k, 0], spans[k, 1]
        if b - a > MAX_WALK:
            continue
        for i in range(b - a):
            hsh[i + 1] = hsh[i] * base + np.uint64(cp[a + i])
        key = _key(hsh[b - a], b - a)
        cid = -1  # _find_chunk, written out (one lookup per chunk of every document)
        slot = key & mask
        while keys[slot] != 0:
            if keys[slot] == key and cp_len[vals[slot]] == b - a:
                at = cp_at[vals[slot]]
                same = True
                for i in range(b - a):
                    if ccp[at + i] != cp[a + i]:
                        same = False
                        break
                if same:
                    cid = vals[slot]
                    break
            slot = (slot + np.uint64(1)) & mask
        if cid >= 0 or not walk:
            cids[k] = cid
            continue
        room = (
            n[0] < len(cp_at)
            and 2 * (n[0] + 1) <= len(keys)
            and n[2] + (b - a) <= len(ccp)
            and n[3] + (b - a) <= len(flat)
            and n[1] + (b - a) <= len(S[11])
            and 2 * (n[1] + (b - a)) <= len(tkeys)
        )
        if not room:
            return k
        t, m0, m1 = _walk(I, bits, gate, rules, cp, a, b, hsh, pw, bounds, toks, url_toks)
        if t > 0 and m0 >= 0:  # a middle with an infix split: spaCy's url_match may keep it
            found = 0  # whole, which needs every character of url_need (else Python decides)
            for c in url_need:
                for i in range(a + m0, a + m1):
                    if cp[i] == c:
                        found += 1
                        break
            if found == len(url_need):
                t = -1
        if t > 0:
            cids[k] = _add_chunk(S, cp, a, b, key, slot, toks, t, flags, stop_cp, stop_off)
    return m


@numba.njit(cache=True)
def add_chunks(cp, chunk_lens, tok_lens, n_toks, S, flags, stop_cp, stop_off):
    """Store chunks tokenised in Python: chunk k is the next chunk_lens[k] code points of cp and
    its n_toks[k] tokens the next token lengths (they cover the chunk). Returns their ids (a chunk
    already stored keeps its id)."""
    out = np.zeros(len(chunk_lens), dtype=np.int64)
    base = np.uint64(_BASE)
    a, t = 0, 0
    ends = np.zeros(max(1, int(n_toks.max()) + 1) if len(n_toks) else 1, dtype=np.int64)
    for k in range(len(chunk_lens)):
        b = a + chunk_lens[k]
        h = np.uint64(0)
        for i in range(a, b):
            h = h * base + np.uint64(cp[i])
        key = _key(h, b - a)
        cid, slot = _find_chunk(S[1], S[2], S[3], S[4], S[5], cp, a, b, key)
        if cid < 0:
            for j in range(n_toks[k]):
                ends[j + 1] = ends[j] + tok_lens[t + j]
            cid = _add_chunk(S, cp, a, b, key, slot, ends, n_toks[k], flags, stop_cp, stop_off)
        out[k] = cid
        t += n_toks[k]
        a = b
    return out
