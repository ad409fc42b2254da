"""Compiled n-gram statistics over token ids (numba, nopython, cached on disk).

Every reference counts n-grams with a Python dict or Counter of strings per document
(datatrove/pipeline/filters/gopher_repetition_filter.py:31-70, dolma/taggers/gopher.py:204). Here an
n-gram is the 64-bit hash of its n token ids (collision chance ~m^2 / 2^64 per document, nil in
practice) kept in an open-addressing table of numpy arrays, so one pass is a tight loop.
"""

from __future__ import annotations

import re

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
        out[i] = _finish(h)
    return out


@numba.njit(cache=True)
def _finish(h):
    """splitmix64's finaliser, then the low bit set (0 marks an empty slot): without the mixing,
    two polynomial hashes one apart ("Version2", "Version3") would meet on setting that bit."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h | np.uint64(1)


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
def _concat_hashes(ids, chash, cpow, n):
    """Hash of "".join(the n words) at each position, folded from the words' own hashes."""
    m = len(ids) - n + 1
    out = np.empty(max(m, 0), dtype=np.uint64)
    for i in range(m):
        h = np.uint64(0)
        for j in range(n):
            t = ids[i + j]
            h = h * cpow[t] + chash[t]
        out[i] = _finish(h)
    return out


@numba.njit(cache=True)
def datatrove_dup_ngram_chars(ids, lens, chash, cpow, n):
    """find_all_duplicate (gopher_repetition_filter.py:57-70): walk the words; an n-gram seen before
    adds its characters and jumps n words ahead (the skipped n-grams are not recorded), otherwise it
    is recorded and the walk moves one word. N-grams are compared as "".join(words) strings (:62),
    so ("ab", "c") repeats ("a", "bc"): the key is the hash of the joined characters."""
    h = _concat_hashes(ids, chash, cpow, n)
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
def datatrove_gopher_stats(ids, length, non_symbol, alpha, stop, chash, cpow, cp, line_at, words):
    """What GopherRepetitionFilter and GopherQualityFilter read off the spaCy words (token ids
    `ids` with per-id properties) and off str.splitlines()'s lines (kernels.splitlines_words:
    `line_at` offsets, `words` per line), in one call: [words with a non-punctuation character,
    their total length, words with a letter, distinct stop words, top 2/3/4-gram characters (-1:
    no n-gram), duplicate 5..10-gram characters, lines starting with a bullet, lines ending with
    an ellipsis]."""
    out = np.zeros(15, dtype=np.int64)
    seen = np.full(8, -1, dtype=np.int64)  # the distinct stop word ids (eight stop words)
    n_seen = 0
    for t in ids:
        if non_symbol[t]:
            out[0] += 1
            out[1] += length[t]
        if alpha[t]:
            out[2] += 1
        if stop[t]:
            new = True
            for j in range(n_seen):
                if seen[j] == t:
                    new = False
                    break
            if new and n_seen < 8:
                seen[n_seen] = t
                n_seen += 1
    out[3] = n_seen
    for k in range(2, 5):
        out[2 + k] = datatrove_top_ngram_chars(ids, length, k)
    for k in range(5, 11):
        out[2 + k] = datatrove_dup_ngram_chars(ids, length, chash, cpow, k)
    for line in range(len(words)):  # gopher_quality_filter.py:100-111, stripped lines
        if words[line] == 0:
            continue
        a, b = line_at[line, 2], line_at[line, 3]
        if cp[a] == 0x2022 or cp[a] == 45:  # "•", "-"
            out[13] += 1
        if cp[b - 1] == 0x2026 or (
            b - a >= 3 and cp[b - 1] == 46 and cp[b - 2] == 46 and cp[b - 3] == 46
        ):
            out[14] += 1
    return out


@numba.njit(cache=True)
def datatrove_c4_lines(
    words, longest, curly, max_word, min_words, cids, gap_token, start, count, flat, is_punct,
    sent_punct,
):  # fmt: skip
    """C4QualityFilter's line walk (c4_filters.py:88-136) where only three rules can apply (see
    quality._c4_lines_compiled): a line is dropped for a word longer than `max_word` or fewer than
    `min_words` words, else kept, and the first line to keep holding "{" ends the walk. Per line of
    kernels.splitlines_words (`words`, `longest`, `curly`); `cids` are the document's chunk ids
    (text.split()) and `gap_token` their gaps. Returns (lines walked, whether "{" ended it, which
    of them are kept, the kept lines' sentences as spaCy's Sentencizer counts them per line,
    their spaCy tokens)."""
    n_lines = len(words)
    keep = np.zeros(n_lines, dtype=np.bool_)
    end, hit, chunk, sentences, tokens = n_lines, False, 0, 0, 0
    for line in range(n_lines):
        w = words[line]
        if longest[line] > max_word or w < min_words:
            chunk += w
            continue
        if curly[line]:
            end, hit = line, True
            break
        keep[line] = True
        for k in range(chunk, chunk + w):
            tokens += count[cids[k]]
        sentences += _line_sentences(
            cids, chunk, w, gap_token, start, count, flat, is_punct, sent_punct
        )
        chunk += w
    return end, hit, keep[:end], sentences, tokens


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel once."""
    ids = np.arange(6, dtype=np.int64) % 3
    lens = np.ones(3, dtype=np.int64)
    datatrove_top_ngram_chars(ids, lens, 2)
    datatrove_dup_ngram_chars(ids, lens, lens.astype(np.uint64), lens.astype(np.uint64), 2)
    top, dup = np.full(11, -1.0), np.full(11, -1.0)
    flags = np.zeros(3, dtype=np.bool_)
    one = np.ones(6, dtype=np.int64)
    ws = np.zeros(6, dtype=np.bool_)
    line_sentence_starts(ids, ws, np.full(2, 3, np.int64), ids, one, ids, flags, flags)
    dolma_c4_lines(code_points("a b\n c"), space_table())
    lines = splitlines_words(code_points("a  b\r\n c{"), space_table())
    u = lens.astype(np.uint64)
    datatrove_gopher_stats(
        ids, lens, flags, flags, flags, u, u, code_points("a  b\r\n c{"), *lines[:2]
    )
    datatrove_c4_lines(lens, lens, flags, 9, 1, ids, ws, ids, one, ids, flags, flags)
    counts = np.zeros(10, dtype=np.int64)
    w = word_table(["b"])
    dolma_gopher_stats(code_points("a b\n c"), space_table(), alpha_table(), *w, counts, top, dup)
    content_scan(code_points("a-b 1.2.3.4"), space_table(), *token_tables(), *word_set(["b"]))
    ph = phrase_index(["a b"], [1])
    dolma_c4_flags(code_points("a b"), token_tables()[2], space_table(), word_set(["b"]), lens, ph)


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@numba.njit(cache=True)
def _line_sentences(cids, k0, w, ws_after, start, count, flat, is_punct, sent_punct):
    """spaCy's Sentencizer (spacy/pipeline/sentencizer.pyx, `predict`) on one line, its own doc:
    the w chunk ids cids[k0:] (chunk c's tokens are `flat[start[c] : start[c] + count[c]]`), a
    chunk with `ws_after` set followed by a whitespace token (neither punctuation nor
    sentence-final). A sentence starts at the first token, and at the first token that is neither
    punctuation nor sentence-final after a sentence-final one."""
    n, seen = 0, False
    for k in range(k0, k0 + w):
        c = cids[k]
        for j in range(start[c], start[c] + count[c]):
            t = flat[j]
            if n == 0:
                n = 1
                seen = sent_punct[t]
            elif seen and not is_punct[t] and not sent_punct[t]:
                n += 1
                seen = False
            elif sent_punct[t]:
                seen = True
        if ws_after[k] and seen:
            n += 1
            seen = False
    return n


@numba.njit(cache=True)
def line_sentence_starts(cids, ws_after, line_chunks, start, count, flat, is_punct, sent_punct):
    """_line_sentences summed over lines (words.sentence_counts): line l is the next
    `line_chunks[l]` chunk ids of `cids`."""
    total, k = 0, 0
    for w in line_chunks:
        total += _line_sentences(cids, k, w, ws_after, start, count, flat, is_punct, sent_punct)
        k += w
    return total


_SPACE_TABLE: np.ndarray | None = None


def space_table() -> np.ndarray:
    """is_space[code point] for every code point, as str.isspace() (and str.split(), str.strip())
    read it: re's \\s on str patterns is the same test (Py_UNICODE_ISSPACE)."""
    global _SPACE_TABLE
    if _SPACE_TABLE is None:
        every = "".join(map(chr, range(0x110000)))
        table = np.zeros(0x110000, dtype=np.bool_)
        table[[m.start() for m in re.finditer(r"\s", every)]] = True
        _SPACE_TABLE = table
    return _SPACE_TABLE


@numba.njit(cache=True)
def _is_line_break(c):
    """str.splitlines() breaks: \n \r \v \f \x1c \x1d \x1e \x85 \u2028 \u2029 (\r\n is one)."""
    return (10 <= c <= 13) or (28 <= c <= 30) or c == 0x85 or c == 0x2028 or c == 0x2029


@numba.njit(cache=True)
def splitlines_words(cp, is_space):
    """Per line of str.splitlines(keepends=True) (code points `cp`): its start and end offsets (the
    break included), the offsets of its stripped text, its number of whitespace words, its
    longest word and whether it holds "{"; per whitespace word of the text (text.split()'s order),
    whether the gap to the next word of the same line is anything but one space (spaCy makes a
    whitespace token of such a gap)."""
    n = len(cp)
    n_lines, n_words, inside = 0, 0, False
    i = 0
    while i < n:  # count lines and words first
        c = cp[i]
        if _is_line_break(c):
            n_lines += 1
            inside = False
            i += 2 if c == 13 and i + 1 < n and cp[i + 1] == 10 else 1
            continue
        if is_space[c]:
            inside = False
        elif not inside:
            n_words += 1
            inside = True
        i += 1
    last_open = n > 0 and not _is_line_break(cp[n - 1])
    n_lines += 1 if last_open else 0
    line_at = np.zeros((n_lines, 4), dtype=np.int64)  # start, end, stripped start, stripped end
    words = np.zeros(n_lines, dtype=np.int64)
    longest = np.zeros(n_lines, dtype=np.int64)
    curly = np.zeros(n_lines, dtype=np.bool_)
    gap_token = np.zeros(n_words, dtype=np.bool_)
    line, k, i = 0, -1, 0
    inside, word_at, gap, gap_spaces = False, 0, 0, True
    while i <= n:
        c = cp[i] if i < n else 10
        brk = i == n or _is_line_break(c)
        if inside and (brk or is_space[c]):  # a word ends
            longest[line] = max(longest[line], i - word_at)
            line_at[line, 3] = i
            inside, gap, gap_spaces = False, 0, True
        if brk:
            if i == n and not last_open:
                break
            end = i + (2 if c == 13 and i + 1 < n and cp[i + 1] == 10 else 1)
            line_at[line, 1] = min(end, n)
            if words[line] == 0:
                line_at[line, 2] = line_at[line, 3] = line_at[line, 0]
            line += 1
            if line < n_lines:
                line_at[line, 0] = end
            i = end
            continue
        if is_space[c]:
            gap += 1
            gap_spaces &= c == 32
        elif not inside:
            k += 1
            if words[line] == 0:
                line_at[line, 2] = i
            else:
                gap_token[k - 1] = not (gap == 1 and gap_spaces)
            words[line] += 1
            inside, word_at = True, i
        if c == 123:
            curly[line] = True
        i += 1
    return line_at, words, longest, curly, gap_token


# ---------------------------------------------------------------- dolma reading

_ALPHA_TABLE: np.ndarray | None = None


def alpha_table() -> np.ndarray:
    """is_alpha[code point] = chr(code point).isalpha(), for every code point."""
    global _ALPHA_TABLE
    if _ALPHA_TABLE is None:
        every = "".join(map(chr, range(0x110000)))
        _ALPHA_TABLE = np.fromiter(map(str.isalpha, every), dtype=np.bool_, count=len(every))
    return _ALPHA_TABLE


def word_table(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(flat code points, start offsets) of a few words, for an exact comparison in a kernel."""
    flat = code_points("".join(words)).copy()
    starts = np.zeros(len(words) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(w) for w in words])
    return flat, starts


@numba.njit(cache=True)
def _is_word(cp, a, b, flat, starts):
    """Whether cp[a:b] is one of the words of a `word_table`."""
    for k in range(len(starts) - 1):
        if _same(cp, a, b, flat, starts[k], starts[k + 1]):
            return True
    return False


@numba.njit(cache=True)
def _same(cp, a, b, flat, s, e):
    """cp[a:b] == flat[s:e]"""
    if e - s != b - a:
        return False
    for j in range(b - a):
        if cp[a + j] != flat[s + j]:
            return False
    return True


@numba.njit(cache=True)
def _text_hash(cp, a, b):
    """Polynomial hash of cp[a:b] (code point + 1, so that NULs still change it)."""
    h = np.uint64(0)
    for j in range(a, b):
        h = h * np.uint64(0x100000001B3) + np.uint64(cp[j] + 1)
    return h


@numba.njit(cache=True)
def dolma_gopher_stats(cp, is_space, is_alpha, req_flat, req_starts, counts, top, dup):
    """dolma's gopher get_attributes (dolma/taggers/gopher.py:139-201) with ignore_empty_lines over
    the code points of a non-empty text, the whitespace words (text.split()) and the lines
    (re.split("\\n+", text)) found in one pass each instead of as strings: words and lines are
    compared by a 64-bit hash of their code points (as the n-grams are, see the module docstring).

    counts gets [words, word characters, words with "#" or "…", words with a letter, required
    words, lines, lines starting with "*" or "-", lines ending with "…", occurrences of repeated
    lines, their characters]; top[n] / dup[n] the n-gram fractions (_hashed_ngram_fracs). Returns
    the median word length (statistics.median: the middle or the mean of the two)."""
    n = len(cp)
    wh = np.empty(n // 2 + 1, dtype=np.uint64)
    wl = np.empty(n // 2 + 1, dtype=np.int64)
    m, chars, symbols, alphas, required = 0, 0, 0, 0, 0
    i = 0
    while i < n:
        if is_space[cp[i]]:
            i += 1
            continue
        a, alpha, symbol = i, False, False
        while i < n and not is_space[cp[i]]:
            c = cp[i]
            alpha = alpha or is_alpha[c]
            symbol = symbol or c == 35 or c == 0x2026
            i += 1
        wh[m] = _text_hash(cp, a, i)
        wl[m] = i - a
        chars += i - a
        alphas += alpha
        symbols += symbol
        required += _is_word(cp, a, i, req_flat, req_starts)
        m += 1
    counts[0], counts[1], counts[2], counts[3], counts[4] = m, chars, symbols, alphas, required
    median = 0.0
    if m:
        s = np.sort(wl[:m])
        median = float(s[m // 2]) if m % 2 else (s[m // 2 - 1] + s[m // 2]) / 2.0
    _hashed_ngram_fracs(wh[:m], wl[:m], top, dup, chars)
    _line_stats(cp, counts)
    return median


@numba.njit(cache=True)
def _hashed_ngram_fracs(wh, wl, top, dup, char_count):
    """dolma/taggers/gopher.py:160-175 for n = 2..10 over per-position word hashes and lengths:
    most common 2/3/4-gram characters times count over all word characters (ties: the n-gram seen
    first, as Counter.most_common); for n >= 5, characters of the n-grams occurring more than once
    (every occurrence) over the characters of all n-grams. Entries stay -1 where the document has
    no n-gram of that size (dolma then writes no attribute).

    An n-gram that repeats is made of two (n-1)-grams that repeat (at i and at i + 1), so only
    those positions are counted for n (every occurrence of a repeated n-gram is one of them); an
    n-gram elsewhere occurs once. The n-gram hash at i folds in words i..i+n-1 one after the
    other, so each n extends the (n-1)-gram's state at i by one word."""
    m1 = len(wh)
    if m1 < 2:
        return
    prefix = np.zeros(m1 + 1, dtype=np.int64)  # characters of words i..j-1: prefix[j] - prefix[i]
    for i in range(m1):
        prefix[i + 1] = prefix[i] + wl[i]
    g = np.full(m1, np.uint64(0xCBF29CE484222325))
    h = np.empty(m1, dtype=np.uint64)
    for i in range(m1):
        g[i] = (g[i] ^ wh[i]) * np.uint64(0x100000001B3)
        g[i] ^= g[i] >> np.uint64(29)
        h[i] = _finish(wh[i])
    cnt, first, slot = _counts(h)
    rep = np.zeros(m1 + 1, dtype=np.bool_)  # the (n-1)-gram at i occurs more than once
    for i in range(m1):
        rep[i] = cnt[slot[i]] > 1
    pos = np.arange(m1)
    for n in range(2, 11):
        m = m1 - n + 1
        if m <= 0:
            break
        k = 0
        for j in range(len(pos)):
            i = pos[j]
            if i < m and rep[i] and rep[i + 1]:
                pos[k] = i
                k += 1
        pos = pos[:k]
        for j in range(k):
            i = pos[j]
            x = (g[i] ^ wh[i + n - 1]) * np.uint64(0x100000001B3)
            x ^= x >> np.uint64(29)
            g[i] = x
            h[j] = _finish(x)
        cnt, first, slot = _counts(h[:k])
        rep[:] = False
        for j in range(k):
            rep[pos[j]] = cnt[slot[j]] > 1
        if n <= 4:
            best_c, best_i = 1, 0  # every n-gram once: the first
            for j in range(k):
                c = cnt[slot[j]]
                if first[slot[j]] == j and c > best_c:  # first occurrences in order
                    best_c, best_i = c, pos[j]
            chars = prefix[best_i + n] - prefix[best_i]
            top[n] = best_c * chars / max(char_count, 1)
        else:
            d = 0
            for j in range(k):
                if cnt[slot[j]] > 1:
                    d += prefix[pos[j] + n] - prefix[pos[j]]
            tot = 0  # characters of all n-grams: word i counted once per n-gram holding it
            for i in range(m):
                tot += prefix[i + n] - prefix[i]
            dup[n] = d / max(tot, 1)


@numba.njit(cache=True)
def _line_stats(cp, counts):
    """The line half of dolma_gopher_stats: re.split("\\n+") pieces (the first and the last may be
    empty), bullets, ellipses, and the Counter of lines as a hash table."""
    n = len(cp)
    hs = np.empty(n + 1, dtype=np.uint64)
    ls = np.empty(n + 1, dtype=np.int64)
    k, a, bullets, ellipses = 0, 0, 0, 0
    i = 0
    while True:
        if i == n or cp[i] == 10:
            hs[k] = _finish(_text_hash(cp, a, i) ^ np.uint64(i - a))
            ls[k] = i - a
            if i > a:
                bullets += cp[a] == 42 or cp[a] == 45
                ellipses += cp[i - 1] == 0x2026
            k += 1
            if i == n:
                break
            while i < n and cp[i] == 10:
                i += 1
            a = i
            continue
        i += 1
    cnt, first, slot = _counts(hs[:k])
    dup_lines, dup_chars = 0, 0
    for j in range(k):
        if cnt[slot[j]] > 1:
            dup_lines += 1
            dup_chars += ls[j]
    counts[5], counts[6], counts[7], counts[8], counts[9] = (
        k,
        bullets,
        ellipses,
        dup_lines,
        dup_chars,
    )


_TOKEN_TABLES: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def token_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_token_char, is_digit, lower) per code point: re's [\\w'] and \\d on str patterns, and
    str.lower() where it maps one character to one; -1 where it does not (U+0130 becomes two) and
    for capital sigma (its lower case depends on the letters around it, Final_Sigma)."""
    global _TOKEN_TABLES
    if _TOKEN_TABLES is None:
        every = "".join(map(chr, range(0x110000)))
        tok = np.zeros(len(every), dtype=np.bool_)
        tok[[m.start() for m in re.finditer(r"[\w']", every)]] = True
        digit = np.zeros(len(every), dtype=np.bool_)
        digit[[m.start() for m in re.finditer(r"\d", every)]] = True
        lower = np.full(len(every), -1, dtype=np.int32)
        for a in range(0, len(every), 4096):  # blocks whose lower case keeps their length map 1:1
            block = every[a : a + 4096]
            low = block.lower()
            if len(low) == len(block):
                lower[a : a + len(block)] = code_points(low)
            else:
                for j, c in enumerate(block):
                    if len(c.lower()) == 1:
                        lower[a + j] = ord(c.lower())
        lower[0x3A3] = -1
        _TOKEN_TABLES = tok, digit, lower
    return _TOKEN_TABLES


def word_set(words: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An open-addressing set of words for `content_scan`: (hash keys, word index per slot, flat
    code points, start offsets); the kernel compares the code points after a hash hit."""
    flat, starts = word_table(words)
    keys = np.zeros(max(16, 1 << (2 * len(words)).bit_length()), dtype=np.uint64)
    index = np.zeros(len(keys), dtype=np.int64)
    _fill_word_set(flat, starts, keys, index)
    return keys, index, flat, starts


@numba.njit(cache=True)
def _fill_word_set(flat, starts, keys, index):
    mask = len(keys) - 1
    for k in range(len(starts) - 1):
        h = _finish(_text_hash(flat, starts[k], starts[k + 1]))
        s = np.int64(h & np.uint64(mask))
        while keys[s] != 0:  # the same hash for two words: the next free slot (probed on)
            s = (s + 1) & mask
        keys[s], index[s] = h, k


@numba.njit(cache=True)
def _find_word(cp, a, b, keys, index, flat, starts):
    """The index of cp[a:b] in a `word_set`, -1 if it is none of its words."""
    h = _finish(_text_hash(cp, a, b))
    mask = len(keys) - 1
    s = np.int64(h & np.uint64(mask))
    while keys[s] != 0:
        if keys[s] == h:
            k = index[s]
            if _same(cp, a, b, flat, starts[k], starts[k + 1]):
                return k
        s = (s + 1) & mask
    return -1


@numba.njit(cache=True)
def _digits_dot(cp, q, is_digit):
    """Position after \\d{1,3}\\. at q, or -1 (four digits never make the group: the fourth is no
    dot)."""
    k = 0
    while k < 3 and q + k < len(cp) and is_digit[cp[q + k]]:
        k += 1
    if k == 0 or q + k >= len(cp) or cp[q + k] != 46:
        return -1
    return q + k + 1


@numba.njit(cache=True)
def content_scan(cp, is_space, is_tok, is_digit, lower, keys, index, flat, starts):
    """One pass of the content tagger over a text's code points.

    Returns (whitespace words, PII flags, token starts, token ends, candidate tokens, exact,
    phone starts). The tokens are re.findall("[\\w']+(?:-[\\w']+)*") of the text (maximal runs
    of [\\w'] chars, joined by single hyphens followed by one; the greedy match the pattern
    makes), the candidates the indices of those whose str.lower() is in the word set, `exact`
    False where a token holds a character without a one-to-one lower case (then the caller
    lowers in Python). PII flags: bit 0 \\d\\d\\d[ .-]\\d\\d\\d\\d occurs, bit 1
    \\d\\.\\d{1,3}\\.\\d{1,3}\\.\\d occurs, bit 2 "+" then a digit occurs (the necessary conditions
    of the phone and IPv4 patterns in taggers/pii.py). Phone starts: where a match of pii.PHONE
    can begin, in order: each "+" before a digit (its second branch starts there) and the 11 to
    19 positions before the end of each \\d\\d\\d[ .-]\\d\\d\\d\\d (every match of its first branch
    ends in one and is 11 to 19 characters long)."""
    n = len(cp)
    words, in_word, flags = 0, False, 0
    may_start = np.zeros(n + 1, dtype=np.bool_)
    for i in range(n):
        c = cp[i]
        if is_space[c]:
            in_word = False
        elif not in_word:
            words += 1
            in_word = True
        if not is_digit[c]:
            continue
        if (
            i + 7 < n
            and is_digit[cp[i + 1]]
            and is_digit[cp[i + 2]]
            and (cp[i + 3] == 32 or cp[i + 3] == 46 or cp[i + 3] == 45)
            and is_digit[cp[i + 4]]
            and is_digit[cp[i + 5]]
            and is_digit[cp[i + 6]]
            and is_digit[cp[i + 7]]
        ):
            flags |= 1
            may_start[max(0, i - 11) : max(0, i - 2)] = True  # a match ending at i + 8
        if flags & 2 == 0 and i + 1 < n and cp[i + 1] == 46:
            q = _digits_dot(cp, i + 2, is_digit)
            if q >= 0:
                q = _digits_dot(cp, q, is_digit)
            if q >= 0 and q < n and is_digit[cp[q]]:
                flags |= 2
        if i > 0 and cp[i - 1] == 43:
            flags |= 4
            may_start[i - 1] = True
    tok_start = np.empty(n // 2 + 1, dtype=np.int64)
    tok_end = np.empty(n // 2 + 1, dtype=np.int64)
    cand = np.empty(n // 2 + 1, dtype=np.int64)
    lowered = np.empty(n, dtype=np.int64)
    m, nc, exact = 0, 0, True
    i = 0
    while i < n:
        if not is_tok[cp[i]]:
            i += 1
            continue
        a = i
        while True:
            while i < n and is_tok[cp[i]]:
                i += 1
            if i + 1 < n and cp[i] == 45 and is_tok[cp[i + 1]]:
                i += 1
                continue
            break
        tok_start[m], tok_end[m] = a, i
        if len(keys):
            ok = True
            for j in range(a, i):
                lc = lower[cp[j]]
                if lc < 0:
                    ok = False
                    break
                lowered[j - a] = lc
            if not ok:
                exact = False
            elif _find_word(lowered, 0, i - a, keys, index, flat, starts) >= 0:
                cand[nc] = m
                nc += 1
        m += 1
    return words, flags, tok_start[:m], tok_end[:m], cand[:nc], exact, np.flatnonzero(may_start)


@numba.njit(cache=True)
def dolma_c4_flags(cp, lower, is_space, words, word_bits, phrases):
    """c4_v1's page flags (dolma/taggers/c4.py:63-70) over the lower-cased text: the OR of
    `word_bits[k]` for each whitespace word that is word k of the `words` word set and of the bits
    of the phrases (phrase_index) that occur, and bit 3 where "{" occurs. -1 where a character has
    no one-to-one lower case (token_tables): then the caller lowers in Python."""
    n = len(cp)
    low = np.empty(n, dtype=np.uint32)
    for i in range(n):
        c = lower[cp[i]]
        if c < 0:
            return -1
        low[i] = c
    keys, index, flat, starts = words
    flags = 0
    i = 0
    while i < n:
        if is_space[low[i]]:
            i += 1
            continue
        a = i
        while i < n and not is_space[low[i]]:
            if low[i] == 123:
                flags |= 8
            i += 1
        k = _find_word(low, a, i, keys, index, flat, starts)
        if k >= 0:
            flags |= word_bits[k]
    return flags | find_phrases(low, *phrases)


def phrase_index(phrases: list[str], bits: list[int]) -> tuple[np.ndarray, ...]:
    """Phrases that each hold a space, indexed by the two characters around their first space:
    (flat code points, start offsets, first-space index, bits of each phrase, hashed pair keys,
    bucket of each slot, bucket offsets, phrase of each bucket entry, phrases with the space at an
    edge). `find_phrases` looks up the characters around each space of a text and compares only
    the phrases of that pair."""
    flat, starts = word_table(phrases)
    spaces = np.array([p.index(" ") for p in phrases], dtype=np.int64)
    buckets: dict[tuple[int, int], list[int]] = {}
    edge = []
    for k, (p, s) in enumerate(zip(phrases, spaces.tolist())):
        if s == 0 or s + 1 == len(p):
            edge.append(k)
        else:
            buckets.setdefault((ord(p[s - 1]), ord(p[s + 1])), []).append(k)
    size = max(64, 1 << (4 * len(buckets)).bit_length())
    keys = np.zeros(size, dtype=np.int64)  # left * 0x110000 + right + 1 (0: an empty slot)
    slot_bucket = np.zeros(size, dtype=np.int64)
    offsets, members = [0], []
    for b, ((left, right), ks) in enumerate(buckets.items()):
        s = (left * 31 + right) & (size - 1)
        while keys[s]:
            s = (s + 1) & (size - 1)
        keys[s], slot_bucket[s] = left * 0x110000 + right + 1, b
        members += ks
        offsets.append(len(members))
    ints = [np.array(x, dtype=np.int64) for x in (bits, offsets, members, edge)]
    return flat, starts, spaces, ints[0], keys, slot_bucket, ints[1], ints[2], ints[3]


@numba.njit(cache=True)
def find_phrases(text, flat, starts, spaces, bits, keys, slot_bucket, offsets, members, edge):
    """The OR of the bits of the phrases of a `phrase_index` that occur in `text` (code points)
    as substrings: a match puts a phrase's first space on a space of the text, with the same
    characters on both sides."""
    n, size = len(text), len(keys)
    every, found = 0, 0
    for k in range(len(bits)):
        every |= bits[k]
    for p in range(n):
        if text[p] != 32:
            continue
        for k in edge:
            if _phrase_at(text, p, k, flat, starts, spaces):
                found |= bits[k]
        if 0 < p < n - 1:
            left, right = np.int64(text[p - 1]), np.int64(text[p + 1])
            s = (left * 31 + right) & (size - 1)
            while keys[s]:
                if keys[s] == left * 0x110000 + right + 1:
                    b = slot_bucket[s]
                    for j in range(offsets[b], offsets[b + 1]):
                        if _phrase_at(text, p, members[j], flat, starts, spaces):
                            found |= bits[members[j]]
                    break
                s = (s + 1) & (size - 1)
        if found == every:
            break
    return found


@numba.njit(cache=True)
def _phrase_at(text, p, k, flat, starts, spaces):
    """Whether phrase k occurs in `text` with its first space at position p."""
    a, b = starts[k], starts[k + 1]
    lo = p - spaces[k]
    if lo < 0 or lo + (b - a) > len(text):
        return False
    for j in range(b - a):
        if text[lo + j] != flat[a + j]:
            return False
    return True


@numba.njit(cache=True)
def dolma_c4_lines(cp, is_space):
    """c4_v1's line spans (dolma/taggers/c4.py:50-62) over the lines of text.split("\\n"), each
    with its newline: (line count, starts and ends of the lines whose last character other than
    whitespace is not one of . ? ! ", starts and ends of the lines with fewer than 3 whitespace
    words). line.lower().strip() ends with one of those four exactly when its last character
    other than whitespace is one (lower() neither makes nor removes whitespace and keeps them)."""
    n = len(cp)
    punct_s = np.empty(n + 1, dtype=np.int64)
    punct_e = np.empty(n + 1, dtype=np.int64)
    few_s = np.empty(n + 1, dtype=np.int64)
    few_e = np.empty(n + 1, dtype=np.int64)
    lines, k1, k2 = 0, 0, 0
    a, last, words, in_word = 0, -1, 0, False
    for i in range(n + 1):
        c = cp[i] if i < n else 10
        if c == 10:
            e = i + 1 if i < n else n
            if not (last == 46 or last == 63 or last == 33 or last == 34):
                punct_s[k1], punct_e[k1] = a, e
                k1 += 1
            if words < 3:
                few_s[k2], few_e[k2] = a, e
                k2 += 1
            lines += 1
            a, last, words, in_word = i + 1, -1, 0, False
        elif is_space[c]:
            in_word = False
        else:
            last = c
            if not in_word:
                words += 1
                in_word = True
    return lines, punct_s[:k1], punct_e[:k1], few_s[:k2], few_e[:k2]
