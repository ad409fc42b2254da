"""The dedup group's paragraph stage: Dolma-style paragraph dedup through one Bloom filter."""

from __future__ import annotations

import sys

import numpy as np
import psutil

from .. import config as C
from ..dedup import BloomFilter
from ..io import AtomicJsonlWriter, read_docs
from .base import Run, one_task, shard, stage


@stage(
    "dedup-paragraph",
    "dedup",
    count=one_task,
    after=("ingest",),
    config=lambda run, cfg: cfg["dedup"],
    enabled=lambda cfg: cfg.dedup.enabled and cfg.dedup.paragraph.enabled,
)
def task_dedup_paragraph(run: Run, _: int, prog) -> dict:
    """Dolma-style paragraph dedup: newline-separated paragraphs through one Bloom filter, in shard order."""

    pc = run.cfg.dedup.paragraph
    bits, k = C.bloom_size(pc.expected_paragraphs, pc.false_positive_rate)
    need = bits // 8
    avail = psutil.virtual_memory().available
    msg = (
        f"paragraph Bloom filter: {pc.expected_paragraphs:,} expected paragraphs at false-positive rate "
        f"{pc.false_positive_rate:g} -> {bits:,} bits ({need / 2**20:,.1f} MB), {k} hashes; "
        f"{avail / 2**20:,.0f} MB available"
    )
    print(msg, file=sys.stderr)
    if need > pc.max_memory_mb * 2**20 or need > 0.8 * avail:
        raise MemoryError(
            msg + "; does not fit: lower dedup.paragraph.expected_paragraphs, raise "
            "dedup.paragraph.false_positive_rate or run on a machine with more memory"
        )
    bloom = BloomFilter(bits, k)
    total = dup = 0
    for i in range(run.n):
        with AtomicJsonlWriter(run.p("attributes", "paragraph", shard(i) + ".jsonl.gz")) as w:
            for doc in read_docs(run.p("documents", shard(i) + ".jsonl.gz")):
                t = doc["text"]
                spans, keys, pos = [], [], 0
                for line in t.split("\n"):
                    s, e = pos, pos + len(line)
                    pos = e + 1
                    if len(line.strip()) >= pc.min_paragraph_chars:
                        spans.append((s, min(e + 1, len(t))))
                        keys.append(line.strip().encode("utf-8", "surrogatepass"))
                present = bloom.check_and_add(keys)
                total += len(keys)
                hit = [[s, e, 1.0] for (s, e), p in zip(spans, present) if p]
                dup += len(hit)
                w.write(
                    {
                        "id": doc["id"],
                        "source": doc["source"],
                        "attributes": {"dedup__paragraph__duplicate": hit} if hit else {},
                    }
                )
                prog(1, len(t))
    fill = float(np.unpackbits(bloom.bits).mean()) if bits <= 2**33 else -1.0
    return {
        "paragraphs": total,
        "duplicate_paragraphs": dup,
        "bloom_bits": bits,
        "bloom_hashes": k,
        "bloom_mb": need / 2**20,
        "bloom_fill": fill,
        "expected_fp_rate_at_fill": fill**k if fill >= 0 else None,
    }
