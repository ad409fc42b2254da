"""MinHash LSH across shards (precision/recall on planted near-duplicates of real pages), exact and
URL dedup, and the paragraph Bloom filter against its configured false-positive rate."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest
import xxhash

from data_pipeline.cli import main
from data_pipeline.config import bloom_size, compose_pipeline
from data_pipeline.dedup import (
    BloomFilter,
    DatatroveMinHasher,
    MinHasher,
    bucket_pairs,
    components,
    duplicates_from_labels,
    first_occurrence_dups,
    normalize_words,
)
from data_pipeline.mixer import Mixer
from data_pipeline.sample_text import edit_words, load_samples
from data_pipeline.taggers import TaggerSet
from tests.data_pipeline.helpers import write_jsonl_gz


def _jaccard(a: str, b: str, n: int = 5) -> float:
    def sh(t):
        w = normalize_words(t)
        return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}

    x, y = sh(a), sh(b)
    return len(x & y) / max(1, len(x | y))


def test_signature_estimates_jaccard(samples_en):
    mh = MinHasher(5, 14, 8, seed=3)
    rng = random.Random(1)
    errs = []
    for d in samples_en[:30]:
        e = edit_words(d["text"], rng, 0.05)
        true = _jaccard(d["text"], e)
        est = float((mh.signature(d["text"]) == mh.signature(e)).mean())
        errs.append(abs(true - est))
    # 112 permutations: standard error about sqrt(J(1-J)/112) <= 0.047
    assert np.mean(errs) < 0.05 and max(errs) < 0.2


def test_lsh_across_shards_precision_recall(samples_en):
    """Originals in shard 0, edited copies scattered over shards 1-2, bucket work split in 3 parts."""
    rng = random.Random(7)
    originals = samples_en[:150]
    copies = [(i, edit_words(originals[i]["text"], rng, 0.02)) for i in range(0, 150, 3)]
    rng.shuffle(copies)
    shards = [
        [d["text"] for d in originals],
        [t for _, t in copies[:25]],
        [t for _, t in copies[25:]],
    ]
    truth_src = [i for i, _ in copies]
    mh = MinHasher(5, 14, 8, seed=1)
    sigs = [np.stack([mh.signature(t) for t in s]) for s in shards]
    offsets = np.cumsum([0] + [len(s) for s in sigs])
    P = 3
    pairs = []
    for p in range(P):  # what each dedup-bucket task does
        keys, gids = [], []
        for k, sig in enumerate(sigs):
            bk = mh.band_keys(sig)
            mask = (bk % np.uint64(P)) == np.uint64(p)
            keys.append(bk[mask])
            gids.append(np.nonzero(mask)[0] + offsets[k])
        pairs.append(bucket_pairs(np.concatenate(keys), np.concatenate(gids)))
    labels = components(int(offsets[-1]), np.concatenate(pairs))
    removed = set(np.nonzero(duplicates_from_labels(labels))[0].tolist())
    planted = set(range(150, 150 + len(copies)))
    tp = len(removed & planted)
    precision = tp / max(1, len(removed))
    recall = tp / len(planted)
    # each found copy is in the same cluster as its own original
    for j, src in enumerate(truth_src):
        if 150 + j in removed:
            assert labels[150 + j] == labels[src]
    # Deterministic (fixed seeds, integer hashing: any machine gets the same sets). A 2% word edit
    # breaks ~10% of the 5-gram shingles, Jaccard ~0.82, detected by 14 bands of 8 rows with
    # probability 1 - (1 - 0.82^8)^14 = 0.96: recall 0.95 fails if the banding is wrong
    assert recall >= 0.95, recall
    # the man pages themselves contain some genuinely near-identical pages (kept as false positives)
    assert precision >= 0.8, precision


def test_bucket_pairs_and_first_occurrence():
    keys = np.array([5, 7, 5, 5, 9, 7], dtype=np.uint64)
    gids = np.array([10, 11, 12, 13, 14, 15])
    pairs = {tuple(p) for p in bucket_pairs(keys, gids).tolist()}
    assert pairs == {(10, 12), (10, 13), (11, 15)}
    h = np.array([3, 1, 3, 2, 1, 3], dtype=np.uint64)
    assert first_occurrence_dups(h).tolist() == [False, False, True, False, True, True]
    valid = np.array([True, False, True, True, True, True])
    assert first_occurrence_dups(h, valid).tolist() == [False, False, True, False, False, True]


def test_bloom_filter_false_positive_rate_near_configured(samples_en):
    n, p = 8000, 0.01
    bits, k = bloom_size(n, p)
    bf = BloomFilter(bits, k)
    lines = list(
        dict.fromkeys(
            l.strip() for d in samples_en for l in d["text"].split("\n") if len(l.strip()) > 20
        )
    )
    first, rest = lines[:n], lines[n:]
    assert len(first) == n and len(rest) > 5000
    assert not bf.check_and_add([s.encode() for s in first]).any()  # distinct lines: none present
    again = bf.check_and_add([s.encode() for s in first[:1000]])
    assert again.all()
    fp = bf.check_and_add([s.encode() for s in rest]).mean()
    assert fp < 3 * p, fp
    # repeats inside one batch count from their second occurrence
    bf2 = BloomFilter(*bloom_size(100, 0.001))
    assert bf2.check_and_add([b"a", b"b", b"a"]).tolist() == [False, False, True]


def test_datatrove_reading_signatures_equal_datatrove(samples_en):
    """FineWeb's MinHash (dedup.minhash.reading=datatrove): datatrove's own MinhashDedupSignature
    gives the same 112 values for every page, so buckets and clusters are the same."""
    pytest.importorskip("datatrove", reason="the test extra installs datatrove")
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    ref = MinhashDedupSignature(output_folder="/tmp/unused-minhash", config=MinhashConfig())
    # datatrove hashes the str; xxhash 4 (installed here, datatrove pins xxhash<4) wants bytes:
    # xxhash 3 hashed a str as its UTF-8, so the reference gets exactly that
    ref._hash_func = lambda s: xxhash.xxh64_intdigest(s.encode("utf-8"))
    ours = DatatroveMinHasher()
    docs = samples_en[::10] + load_samples("de")[:5] + load_samples("ja")[:5]
    for d in docs:
        want = np.concatenate(ref.get_signature(ref.get_shingles(d["text"])))
        assert np.array_equal(ours.signature(d["text"]), want), d["id"]
    assert len(ours.shingles("too short")) == 0
    keys = ours.band_keys(np.stack([ours.signature("too short"), ours.signature(docs[0]["text"])]))
    assert (keys[0] == 0).all() and (keys[1] != 0).all()  # no signature: never in a bucket


def test_fineweb_preset_end_to_end_removes_planted_near_duplicates(tmp_path, samples_en):
    """The fineweb preset through the CLI: its 64-bit (datatrove) signatures across two shards find
    near-copies of pages its filters keep; C4's dropped lines are deleted from the mix."""
    cfg = compose_pipeline(["output.dir=/tmp/unused", "input.paths=[/dev/null]"], "fineweb")
    tags, mixer = TaggerSet(cfg.taggers), Mixer(cfg.mixer)

    def kept(d: dict) -> bool:
        attrs = {k: v for group in tags(d).values() for k, v in group.items()}
        return mixer.decide(d, attrs)[2] == ""

    pages = [d for d in samples_en if kept(d)][:12]
    assert len(pages) == 12
    rng = random.Random(3)
    copies = [
        {**d, "id": d["id"] + "-copy", "text": edit_words(d["text"], rng, 0.01)} for d in pages[:4]
    ]
    (tmp_path / "in").mkdir()
    write_jsonl_gz(tmp_path / "in" / "a.jsonl.gz", pages)
    write_jsonl_gz(tmp_path / "in" / "b.jsonl.gz", copies)
    out = tmp_path / "out"
    rc = main(
        [
            "pipeline=fineweb",
            f"input.paths=[{tmp_path}/in/*.jsonl.gz]",
            f"output.dir={out}",
            "executor.workers=1",
            "executor.progress=false",
            "tokenizer.train.vocab_size=400",
        ]
    )
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["accounting"]["balanced"] is True and rep["kept_docs"] == 12
    removed = []
    for f in sorted((out / "removed").glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            removed += [json.loads(line) for line in fh]
    assert sorted(r["id"] for r in removed) == sorted(c["id"] for c in copies)
    assert sum(r["reason"] == "minhash_duplicate" for r in removed) >= 3
    assert rep["replacements"].get("c4_dropped_line", 0) > 0
