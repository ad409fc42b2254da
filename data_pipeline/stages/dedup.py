"""The dedup group's exact, URL and MinHash stages: signatures per shard (dedup-hash), band keys
split among bucket tasks (dedup-bucket), connected components over the pairs (dedup-cluster)."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np

from ..dedup import (
    bucket_pairs,
    components,
    duplicates_from_labels,
    first_occurrence_dups,
    make_hasher,
    text_hash,
)
from ..io import AtomicJsonlWriter, doc_url, read_docs
from .base import Run, dedup_enabled, one_task, shard, stage


def _hasher(run: Run):
    return make_hasher(run.cfg.dedup.minhash)  # dedup.minhash.reading picks the signature


@stage(
    "dedup-hash",
    "dedup",
    after=("ingest",),
    config=lambda run, cfg: [cfg["dedup"], cfg["taggers"]["content"]["url_fields"]],
    enabled=dedup_enabled,
)
def task_dedup_hash(run: Run, i: int, prog) -> dict:
    hasher = _hasher(run)
    exact, url, url_ok, lengths, sigs, ids = [], [], [], [], [], []
    fields = list(run.cfg.taggers.content.url_fields)
    for doc in read_docs(run.p("documents", shard(i) + ".jsonl.gz")):
        t = doc["text"]
        exact.append(text_hash(t))
        u = doc_url(doc, fields)
        url.append(text_hash(u) if u else 0)
        url_ok.append(bool(u))
        lengths.append(len(t))
        sigs.append(
            hasher.signature(t)
            if run.cfg.dedup.minhash.enabled
            else np.zeros(hasher.num_perm, hasher.dtype)
        )
        ids.append([doc["id"], doc["source"]])
        prog(1, len(t.encode("utf-8")))
    d = run.p("_work", "dedup")
    d.mkdir(parents=True, exist_ok=True)
    sig = np.stack(sigs) if sigs else np.zeros((0, hasher.num_perm), hasher.dtype)
    np.save(d / f"{shard(i)}.sig.tmp.npy", sig)
    os.replace(d / f"{shard(i)}.sig.tmp.npy", d / f"{shard(i)}.sig.npy")
    np.savez(
        d / f"{shard(i)}.hash.tmp.npz",
        exact=np.array(exact, np.uint64),
        url=np.array(url, np.uint64),
        url_ok=np.array(url_ok, bool),
        lengths=np.array(lengths, np.int64),
    )
    os.replace(d / f"{shard(i)}.hash.tmp.npz", d / f"{shard(i)}.hash.npz")
    with gzip.open(d / f"{shard(i)}.ids.json.gz.tmp", "wt") as fh:
        json.dump(ids, fh)
    os.replace(d / f"{shard(i)}.ids.json.gz.tmp", d / f"{shard(i)}.ids.json.gz")
    return {"docs": len(ids)}


@stage(
    "dedup-bucket",
    "dedup",
    count=lambda run: run.cfg.dedup.minhash.partitions,
    after=("dedup-hash",),
    enabled=dedup_enabled,
    counts_documents=False,
)
def task_dedup_bucket(run: Run, p: int, prog) -> dict:
    """Bucket task p of P: the band keys with key % P == p from every shard -> duplicate pairs."""

    hasher = _hasher(run)
    P = run.cfg.dedup.minhash.partitions
    keys, gids = [], []
    offset = 0
    for i in range(run.n):
        sig = np.load(run.p("_work", "dedup", f"{shard(i)}.sig.npy"))
        if len(sig):
            k = hasher.band_keys(sig)
            mask = (k % np.uint64(P)) == np.uint64(p)
            rows = np.nonzero(mask)[0]
            keys.append(k[mask])
            gids.append(rows + offset)
        offset += len(sig)
        prog(len(sig), sig.nbytes)
    if keys:
        pairs = bucket_pairs(np.concatenate(keys), np.concatenate(gids).astype(np.int64))
    else:
        pairs = np.zeros((0, 2), np.int64)
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
    d = run.p("_work", "dedup")
    np.save(d / f"pairs-{p:04d}.tmp.npy", pairs)
    os.replace(d / f"pairs-{p:04d}.tmp.npy", d / f"pairs-{p:04d}.npy")
    return {"pairs": int(len(pairs))}


@stage("dedup-cluster", "dedup", count=one_task, after=("dedup-bucket",), enabled=dedup_enabled)
def task_dedup_cluster(run: Run, _: int, prog) -> dict:
    dd = run.cfg.dedup
    d = run.p("_work", "dedup")
    hashes = [np.load(d / f"{shard(i)}.hash.npz") for i in range(run.n)]
    sizes = [len(h["exact"]) for h in hashes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    N = int(offsets[-1])
    exact = np.concatenate([h["exact"] for h in hashes]) if N else np.zeros(0, np.uint64)
    url = np.concatenate([h["url"] for h in hashes]) if N else np.zeros(0, np.uint64)
    url_ok = np.concatenate([h["url_ok"] for h in hashes]) if N else np.zeros(0, bool)
    exact_dup = first_occurrence_dups(exact) if dd.exact else np.zeros(N, bool)
    url_dup = first_occurrence_dups(url, url_ok) if dd.url else np.zeros(N, bool)
    mh_dup = np.zeros(N, bool)
    cluster_size = np.ones(N, np.int64)
    n_pairs = 0
    if dd.minhash.enabled and N:
        parts = [np.load(d / f"pairs-{p:04d}.npy") for p in range(dd.minhash.partitions)]
        pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        if len(pairs) and dd.minhash.verify_threshold > 0:
            sig = np.concatenate(
                [np.load(d / f"{shard(i)}.sig.npy", mmap_mode="r") for i in range(run.n)]
            )
            sim = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)
            pairs = pairs[sim >= dd.minhash.verify_threshold]
        n_pairs = int(len(pairs))
        labels = components(N, pairs)
        mh_dup = duplicates_from_labels(labels)
        cluster_size = np.bincount(labels)[labels]
    stats = {
        "docs": N,
        "exact_duplicates": int(exact_dup.sum()),
        "url_duplicates": int(url_dup.sum()),
        "minhash_duplicates": int(mh_dup.sum()),
        "minhash_pairs": n_pairs,
        "minhash_clusters": int(((cluster_size > 1) & ~mh_dup).sum()),
    }
    for i in range(run.n):
        with gzip.open(d / f"{shard(i)}.ids.json.gz", "rt") as fh:
            ids = json.load(fh)
        lengths = hashes[i]["lengths"]
        with AtomicJsonlWriter(run.p("attributes", "dedup", shard(i) + ".jsonl.gz")) as w:
            for j, (did, src) in enumerate(ids):
                g = offsets[i] + j
                n = int(lengths[j])
                a = {}
                if exact_dup[g]:
                    a["dedup__exact__duplicate"] = [[0, n, 1.0]]
                if url_dup[g]:
                    a["dedup__url__duplicate"] = [[0, n, 1.0]]
                if mh_dup[g]:
                    a["dedup__minhash__duplicate"] = [[0, n, 1.0]]
                if cluster_size[g] > 1:
                    a["dedup__minhash__cluster_size"] = [[0, n, float(cluster_size[g])]]
                w.write({"id": did, "source": src, "attributes": a})
                prog(1, 0)
    return stats
