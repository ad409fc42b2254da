"""The word memo's compiled half: whitespace chunk -> spaCy token ids, in numba hash tables.

A document's chunks are found, hashed and looked up in one compiled pass over its code points;
an unseen chunk goes through the compiled affix walk (affixes.py) and its tokens are interned
(token -> id, with the per-token properties the quality statistics read) in the same pass, so
Python sees only the chunks the walk leaves (about 1%: possible special cases, URLs). Keys are
64-bit hashes, and every hit is confirmed by comparing the code points with the stored chunk or
token: a collision costs a probe, never a wrong id.

State is a set of numpy arrays owned by `words.ChunkVocab` (`MemoState`), grown by Python before
each call to what the call can add at most (a document of n code points adds at most n chunks,
n tokens and n code points), so the kernels write in place and never allocate state.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, fields

import numba
import numpy as np

from .affixes import _walk  # the compiled affix walk (same tables as split_chunks)

_BASE = 0x100000001B3  # polynomial hash base (mod 2^64), as kernels.token_hashes and affixes

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
    """splitmix64's finaliser of a polynomial hash and the length, low bit set (0: empty slot)."""
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


@numba.njit(cache=True)
def index_chunks(cp, S, W, walk, flags, stop_cp, stop_off, url_need):
    """Chunk ids of the whitespace chunks of cp (as str.split() cuts them), adding the unseen ones
    the affix walk settles (if `walk`; W = affixes Tables: ints, bits, gate, rules). Returns
    (ids, -1 where Python must tokenise; the chunks' start and end offsets)."""
    m = 0
    inside = False
    for i in range(len(cp)):  # count the chunks first
        sp = (flags[cp[i]] & SPACE) != 0
        if not sp and not inside:
            m += 1
        inside = not sp
    cids = np.full(m, -1, dtype=np.int64)
    spans = np.zeros((m, 2), dtype=np.int64)
    longest = 0
    k, i, n = 0, 0, len(cp)
    while i < n:
        if (flags[cp[i]] & SPACE) != 0:
            i += 1
            continue
        j = i
        while j < n and (flags[cp[j]] & SPACE) == 0:
            j += 1
        spans[k, 0], spans[k, 1] = i, j
        longest = max(longest, j - i)
        k += 1
        i = j
    base = np.uint64(_BASE)
    hsh = np.zeros(longest + 1, dtype=np.uint64)  # prefix hashes of the chunk (rules lookups)
    pw = np.ones(longest + 1, dtype=np.uint64)
    for i in range(longest):
        pw[i + 1] = pw[i] * base
    bounds = np.zeros(2 * longest + 2, dtype=np.int64)
    toks = np.zeros(longest + 2, dtype=np.int64)
    url_toks = np.zeros(longest + 2, dtype=np.int64)
    I, bits, gate, rules = W
    keys, vals, ccp, cp_at, cp_len = S[1], S[2], S[3], S[4], S[5]
    mask = np.uint64(len(keys) - 1)
    for k in range(m):
        a, b = spans[k, 0], spans[k, 1]
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
    return cids, spans


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
