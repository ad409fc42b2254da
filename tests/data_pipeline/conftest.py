"""Shared fixtures: real text (the bundled Debian man pages) and one full pipeline run reused by many tests."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from data_pipeline.sample_text import edit_words, load_samples
from tests.data_pipeline.helpers import write_jsonl_gz


@pytest.fixture(scope="session")
def samples_en() -> list[dict]:
    return load_samples("en")


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, samples_en):
    """The dolma pipeline over three input files: English man pages (two shards, with planted
    near-duplicates across shards and PII), and a shard of French pages plus bad lines."""
    from data_pipeline.cli import main

    d = tmp_path_factory.mktemp("full")
    inp = d / "in"
    inp.mkdir()
    docs = [dict(x) for x in samples_en[:120]]
    rng = random.Random(0)
    planted = []
    for _k, src in enumerate(docs[:10]):  # near-duplicates of shard-0 docs, placed in shard 1
        planted.append(
            {**src, "id": f"{src['id']}-neardup", "text": edit_words(src["text"], rng, 0.03)}
        )
    # PII in two pages dolma's readings keep (pages 20 and 21 fail its duplicate-5-gram rule,
    # which counts every occurrence of a repeated 5-gram: test_agreement.py runs dolma's code)
    docs[23] = {
        **docs[23],
        "text": docs[23]["text"]
        + "\nReport bugs to jane.doe@example.org or call (555) 123-4567.\n",
    }
    docs[24] = {
        **docs[24],
        "text": docs[24]["text"] + "\nThe server listens on 192.168.10.20 by default.\n",
    }
    write_jsonl_gz(inp / "a.jsonl.gz", docs[:60])
    write_jsonl_gz(inp / "b.jsonl.gz", docs[60:] + planted)
    fr = load_samples("fr")[:10]
    with gzip.open(inp / "c.jsonl.gz", "wt", encoding="utf-8") as fh:
        for x in fr:
            fh.write(json.dumps(x, ensure_ascii=False) + "\n")
        fh.write('{"id": "broken", "text": "no closing brace"\n')
        fh.write('{"id": "notext"}\n')
    out = d / "out"
    rc = main(
        [
            "pipeline=dolma",
            f"input.paths=[{inp}/*.jsonl.gz]",
            f"output.dir={out}",
            "executor.workers=2",
            "executor.progress=false",
            "tokenizer.train.vocab_size=2000",
            "dedup.minhash.partitions=3",
            "dedup.paragraph.expected_paragraphs=100000",
        ]
    )
    assert rc == 0
    return {"out": out, "docs": docs, "planted": planted, "fr": fr, "inputs": inp}
