"""Deduplication primitives: exact/URL hashes, MinHash LSH across shards, a Bloom filter for paragraphs.

MinHash is written here rather than taken from datasketch because the work is split across tasks:
signatures are computed per shard and stored as one (docs x hashes) uint32 array, band keys are
partitioned by hash among bucket tasks, and clustering runs on the union of their duplicate pairs.
datasketch's `MinHash` hashes shingles one at a time with SHA-1 in Python and keeps one object per
document; here every step is a numpy array operation over all shingles x all permutations.
Connected components use scipy.sparse.csgraph (a well-kept C implementation).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import xxhash

from .text.punctuation import PUNCTUATION
from .text.words import ChunkVocab

MERSENNE = np.uint64((1 << 61) - 1)
_PUNCT_TRANS = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))  # datatrove text.py:182
_WORDS = re.compile(r"\w+", re.UNICODE)


def emitted_attributes(cfg) -> list[str]:
    """The attributes the dedup stage writes for a `DedupConfig` (the mixer rules may name them)."""
    if not cfg.enabled:
        return []
    out = []
    if cfg.exact:
        out.append("dedup__exact__duplicate")
    if cfg.url:
        out.append("dedup__url__duplicate")
    if cfg.minhash.enabled:
        out += ["dedup__minhash__duplicate", "dedup__minhash__cluster_size"]
    if cfg.paragraph.enabled:
        out.append("dedup__paragraph__duplicate")
    return out


def normalize_words(text: str) -> list[str]:
    """FineWeb-style normalisation for shingling: lower case, words only (punctuation and spacing ignored)."""
    return _WORDS.findall(text.lower())


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs x bands*rows) signatures -> (docs x bands) uint64: each band's `rows` values folded
    into one 64-bit key (FNV-style multiply, xor-shift), seeded with the band number so equal values
    in different bands are different keys. Both MinHashers' band keys."""
    n = sigs.shape[0]
    s = sigs.reshape(n, bands, rows).astype(np.uint64, copy=False)
    h = np.broadcast_to(
        np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15), (n, bands)
    ).copy()
    with np.errstate(over="ignore"):
        for r in range(rows):
            h = (h ^ s[:, :, r]) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
    return h


class MinHasher:
    dtype = np.uint32

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        self.ngram, self.bands, self.rows = ngram, bands, rows
        self.num_perm = bands * rows
        rng = np.random.default_rng(seed)
        # (a * x + b) mod (2^61 - 1) with x, a, b < 2^32: a * x + b < 2^64, so uint64 never overflows
        self.a = rng.integers(1, 2**32, size=self.num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 2**32, size=self.num_perm, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        words = normalize_words(text)
        if not words:
            return np.zeros(0, dtype=np.uint64)
        ids = np.fromiter(
            (xxhash.xxh64_intdigest(w.encode("utf-8", "surrogatepass")) for w in words),
            dtype=np.uint64,
            count=len(words),
        )
        n = min(self.ngram, len(ids))  # a short document is one shingle of all its words
        m = len(ids) - n + 1
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(n):
                h = (h * np.uint64(0x100000001B3)) ^ ids[j : j + m]
            # finalise (splitmix64) and keep 32 bits
            h ^= h >> np.uint64(31)
            h *= np.uint64(0x7FB5D329728EA185)
            h ^= h >> np.uint64(27)
        return np.unique(h & np.uint64(0xFFFFFFFF))

    def signature(self, text: str) -> np.ndarray:
        sh = self.shingles(text)
        sig = np.full(self.num_perm, np.uint32(0xFFFFFFFF), dtype=np.uint32)
        for i in range(0, len(sh), 4096):  # bounded memory on huge documents
            block = sh[i : i + 4096, None]
            hv = (block * self.a[None, :] + self.b[None, :]) % MERSENNE
            sig = np.minimum(sig, (hv & np.uint64(0xFFFFFFFF)).min(axis=0).astype(np.uint32))
        return sig

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(docs x hashes) uint32 -> (docs x bands) uint64 key per band (the band number is mixed in)."""
        return band_hashes(sigs, self.bands, self.rows)


# datatrove/utils/text.py:201-204 (with re: for str patterns \d is any Unicode decimal digit, Nd)
_NUMBERS = re.compile(r"\d+([.,\u060c\u066b\u2396\u2397\u2398]{1}\d+)?")
_SPACES = re.compile(r"\s+")


def simplify_text(text: str) -> str:
    """datatrove's simplify_text with its default TextNormConfig (utils/text.py:213-258): lower
    case, numbers -> 0, punctuation -> spaces, whitespace runs -> one space, diacritics dropped."""
    text = _NUMBERS.sub("0", text.lower())
    text = text.translate(_PUNCT_TRANS)
    text = _SPACES.sub(" ", text.strip())
    if not text.isascii():  # ASCII has no combining marks and is its own NFD
        text = unicodedata.normalize("NFD", text).translate(_combining_marks())
    return text.strip()


@lru_cache(maxsize=1)
def _combining_marks() -> dict[int, None]:
    """str.translate table deleting every code point of category Mn (what the reference's
    per-character unicodedata.category(c) != "Mn" test keeps out)."""
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Mn"}


class DatatroveMinHasher:
    """FineWeb's MinHash signature as datatrove's MinhashDedupSignature computes it
    (pipeline/dedup/minhash.py:163-210): spaCy words of the simplified text, 64-bit xxhash of each
    " "-joined 5-gram's UTF-8 (what xxhash 3, datatrove's pin, does with a str), permutations (a * h + b) mod (2^61 - 1) with numpy's wrapping uint64
    product, parameters from np.random.RandomState(seed); a document with fewer words than the
    n-gram size has no signature (minhash.py:250) and is never a duplicate. Same signatures, so the
    same buckets and the same clusters; words come from the taggers' spaCy memo (words.py)."""

    dtype = np.uint64

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        self.ngram, self.bands, self.rows = ngram, bands, rows
        self.num_perm = bands * rows
        gen = np.random.RandomState(seed)
        self.a = gen.randint(1, MERSENNE, dtype=np.uint64, size=(1, self.num_perm))
        self.b = gen.randint(0, MERSENNE, dtype=np.uint64, size=(1, self.num_perm))
        self.vocab = ChunkVocab()

    def shingles(self, text: str) -> np.ndarray:
        ids = self.vocab.words(simplify_text(text).split())
        n = self.ngram
        if len(ids) < n:
            return np.zeros(0, dtype=np.uint64)
        strings = self.vocab.strings
        toks = [strings[i] for i in ids.tolist()]
        return np.fromiter(
            (
                xxhash.xxh64_intdigest(" ".join(toks[i : i + n]).encode("utf-8", "surrogatepass"))
                for i in range(len(toks) - n + 1)
            ),
            dtype=np.uint64,
            count=len(toks) - n + 1,
        )

    def signature(self, text: str) -> np.ndarray:
        """112 uint64 minima; all 2^64 - 1 (no bucket will match) for a document without shingles."""
        sh = self.shingles(text)
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i in range(0, len(sh), 4096):  # bounded memory on huge documents
                phv = (sh[i : i + 4096, None] * self.a + self.b) % MERSENNE
                sig = np.minimum(sig, phv.min(axis=0))
        self.vocab.maybe_reset()  # bounded memo
        return sig

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(docs x bands) 64-bit key of each band's 8 values; a document without shingles gets
        key 0, which bucket_pairs skips (datatrove writes no signature for it)."""
        h = band_hashes(sigs, self.bands, self.rows)
        empty = (sigs == np.iinfo(np.uint64).max).all(axis=1)
        h[h == 0] = 1  # 0 is reserved for "no signature"
        h[empty] = 0
        return h


def make_hasher(cfg) -> MinHasher | DatatroveMinHasher:
    """The MinHasher of a MinHashConfig's reading."""
    cls = DatatroveMinHasher if cfg.reading == "datatrove" else MinHasher
    return cls(cfg.ngram, cfg.bands, cfg.rows, cfg.seed)


def bucket_pairs(keys: np.ndarray, gids: np.ndarray) -> np.ndarray:
    """Given band keys and the global ids of their documents, return (E x 2) pairs linking each
    bucket's members to its first member (enough for connected components)."""
    real = keys != 0  # key 0: a document without a signature (DatatroveMinHasher)
    if not real.all():
        keys, gids = keys[real], gids[real]
    if len(keys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((gids, keys))
    k, g = keys[order], gids[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = k[1:] != k[:-1]
    head = np.maximum.accumulate(np.where(new, np.arange(len(k)), 0))
    mask = ~new & (g != g[head])
    return np.stack([g[head][mask], g[mask]], axis=1)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label per document (scipy's C implementation)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(pairs) == 0:
        return np.arange(n)
    m = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(m, directed=False)
    return labels


def duplicates_from_labels(labels: np.ndarray) -> np.ndarray:
    """True for every document that is not the first (lowest global id) of its component."""
    n = len(labels)
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels] != np.arange(n)


def first_occurrence_dups(hashes: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """True where a hash was already seen earlier in global order (exact and URL dedup)."""
    dup = np.zeros(len(hashes), dtype=bool)
    idx = np.arange(len(hashes)) if valid is None else np.nonzero(valid)[0]
    if len(idx) == 0:
        return dup
    _, first = np.unique(hashes[idx], return_index=True)
    keep = np.zeros(len(idx), dtype=bool)
    keep[first] = True
    dup[idx[~keep]] = True
    return dup


def text_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


class BloomFilter:
    """Bit-array Bloom filter (numpy), k indices from two 64-bit hashes (Kirsch-Mitzenmacher)."""

    def __init__(self, bits: int, k: int):
        self.m = np.uint64(bits)
        self.k = k
        self.bits = np.zeros(bits // 8, dtype=np.uint8)
        self.steps = np.arange(k, dtype=np.uint64)

    def _indices(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (h1[:, None] + self.steps[None, :] * (h2[:, None] | np.uint64(1))) % self.m

    def check_and_add(self, keys: Iterable[bytes]) -> np.ndarray:
        """For each key in order: was it (probably) present before? Then add all of them.
        Repeats inside the same call count as present from their second occurrence on."""
        keys = list(keys)
        if not keys:
            return np.zeros(0, dtype=bool)
        hh = np.frombuffer(
            b"".join(xxhash.xxh3_128_digest(k) for k in keys), dtype=np.uint64
        ).reshape(-1, 2)
        h1, h2 = hh[:, 0].copy(), hh[:, 1].copy()
        idx = self._indices(h1, h2)
        byte, bit = idx >> np.uint64(3), (idx & np.uint64(7)).astype(np.uint8)
        present = np.all((self.bits[byte] >> bit) & 1, axis=1)
        # repeats within this batch
        _, first = np.unique(hh, axis=0, return_index=True)
        later = np.ones(len(keys), dtype=bool)
        later[first] = False
        np.bitwise_or.at(self.bits, byte.ravel(), (np.uint8(1) << bit).ravel())
        return present | later
