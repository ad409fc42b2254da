"""Compiled n-gram statistics over token ids (numba, nopython, cached on disk).

Every reference counts n-grams with a Python dict or Counter of strings per document
(datatrove/pipeline/filters/gopher_repetition_filter.py:31-70, dolma/taggers/gopher.py:204). Here an
n-gram is the 64-bit hash of its n token ids (collision chance ~m^2 / 2^64 per document, nil in
practice) kept in an open-addressing table of numpy arrays, so one pass is a tight loop.
"""

from __future__ import annotations

import numba
import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True)
def _ngram_hashes(ids, n):
    m = len(ids) - n + 1
    out = np.empty(max(m, 0), dtype=np.uint64)
    for i in range(m):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(n):
            h = (h ^ np.uint64(ids[i + j] + 1)) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
        out[i] = h | np.uint64(1)  # 0 marks an empty slot
    return out


@numba.njit(cache=True)
def _slot(keys, h):
    mask = len(keys) - 1
    s = np.int64(h & np.uint64(mask))
    while keys[s] != 0 and keys[s] != h:
        s = (s + 1) & mask
    return s


@numba.njit(cache=True)
def _table(m):
    size = 16
    while size < 2 * m:
        size *= 2
    return np.zeros(size, dtype=np.uint64)


@numba.njit(cache=True)
def _counts(h):
    """count[i] = occurrences of n-gram i's hash in the document; first[i] = its first position."""
    keys = _table(len(h))
    cnt = np.zeros(len(keys), dtype=np.int64)
    first = np.zeros(len(keys), dtype=np.int64)
    slot = np.empty(len(h), dtype=np.int64)
    for i in range(len(h)):
        s = _slot(keys, h[i])
        if keys[s] == 0:
            keys[s] = h[i]
            first[s] = i
        cnt[s] += 1
        slot[i] = s
    return cnt, first, slot


@numba.njit(cache=True)
def datatrove_top_ngram_chars(ids, lens, n):
    """len(" ".join(top n-gram)) * its count, the top being Counter.most_common(1)[0]: the highest
    count, ties to the n-gram seen first (gopher_repetition_filter.py:49-54). -1: no n-gram."""
    h = _ngram_hashes(ids, n)
    if len(h) == 0:
        return -1
    cnt, first, slot = _counts(h)
    best_c, best_i = 0, 0
    for i in range(len(h)):
        c = cnt[slot[i]]
        if first[slot[i]] == i and c > best_c:  # first occurrences in order: ties keep the earlier
            best_c, best_i = c, i
    chars = n - 1
    for j in range(n):
        chars += lens[ids[best_i + j]]
    return chars * best_c


@numba.njit(cache=True)
def datatrove_dup_ngram_chars(ids, lens, n):
    """find_all_duplicate (gopher_repetition_filter.py:57-70): walk the words; an n-gram seen before
    adds its characters and jumps n words ahead (the skipped n-grams are not recorded), otherwise it
    is recorded and the walk moves one word."""
    h = _ngram_hashes(ids, n)
    keys = _table(len(h))
    total, idx = 0, 0
    while idx < len(h):
        s = _slot(keys, h[idx])
        if keys[s] != 0:
            for j in range(n):
                total += lens[ids[idx + j]]
            idx += n
        else:
            keys[s] = h[idx]
            idx += 1
    return total


@numba.njit(cache=True)
def dolma_ngram_fracs(ids, lens, n_max, out_top, out_dup, char_count):
    """dolma/taggers/gopher.py:160-175 for n = 2..n_max: most common 2/3/4-gram characters times
    count over all word characters; for n >= 5, characters of the n-grams occurring more than once
    (every occurrence) over the characters of all n-grams. Entries stay -1 where the document has
    no n-gram of that size (dolma then writes no attribute)."""
    for n in range(2, n_max + 1):
        h = _ngram_hashes(ids, n)
        if len(h) == 0:
            continue
        cnt, first, slot = _counts(h)
        chars = np.zeros(len(h), dtype=np.int64)
        for i in range(len(h)):
            c = 0
            for j in range(n):
                c += lens[ids[i + j]]
            chars[i] = c
        if n <= 4:
            best_c, best_i = 0, 0
            for i in range(len(h)):
                c = cnt[slot[i]]
                if first[slot[i]] == i and c > best_c:
                    best_c, best_i = c, i
            out_top[n] = best_c * chars[best_i] / max(char_count, 1)
        else:
            dup, tot = 0, 0
            for i in range(len(h)):
                tot += chars[i]
                if cnt[slot[i]] > 1:
                    dup += chars[i]
            out_dup[n] = dup / max(tot, 1)


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel once."""
    ids = np.arange(6, dtype=np.int64) % 3
    lens = np.ones(3, dtype=np.int64)
    datatrove_top_ngram_chars(ids, lens, 2)
    datatrove_dup_ngram_chars(ids, lens, 2)
    top, dup = np.full(11, -1.0), np.full(11, -1.0)
    dolma_ngram_fracs(ids, lens, 10, top, dup, 6)
