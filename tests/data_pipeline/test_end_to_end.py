"""The six steps end to end: report.json accounting, attributes layout, and Megatron shards checked
with megatron-core's own reader against re-tokenising every mixed document."""

from __future__ import annotations

import gzip
import json

import numpy as np

from data_pipeline.tokenize import Tok, read_back


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(l) for l in fh]


def test_report_accounts_for_every_document(full_run):
    rep = json.loads((full_run["out"] / "report.json").read_text())
    n_input = 120 + 10 + 10 + 2  # English pages + planted copies + French pages + 2 bad lines
    assert rep["input_docs"] == n_input
    assert rep["quarantined_docs"] == 2
    assert rep["quarantined_by_reason"] == {"malformed_json": 1, "missing_text": 1}
    total_removed = sum(rep["removed_docs"].values())
    assert rep["kept_docs"] + total_removed + rep["quarantined_docs"] == n_input
    assert rep["accounting"]["balanced"] is True
    # the French pages go at the language step
    assert rep["removed_docs"].get("language:not_english", 0) >= 9
    assert rep["removed_by_step"]["language"] == rep["removed_docs"]["language:not_english"]
    assert rep["tokens"] > 0 and rep["token_dtype"] == "uint16"
    assert (full_run["out"] / "report.png").stat().st_size > 1000
    assert "accounting" in (full_run["out"] / "report.txt").read_text()
    # every removed document is listed with its reason
    removed = [
        r for p in sorted((full_run["out"] / "removed").glob("*.jsonl.gz")) for r in _read(p)
    ]
    assert len(removed) == total_removed
    assert all(r["reason"] and r["step"] for r in removed)


def test_attributes_rows_match_documents(full_run):
    out = full_run["out"]
    for shard in sorted((out / "documents").glob("*.jsonl.gz")):
        ids = [d["id"] for d in _read(shard)]
        for group in ("lang", "quality", "content", "random", "dedup", "paragraph"):
            rows = _read(out / "attributes" / group / shard.name)
            assert [r["id"] for r in rows] == ids, group
    docs = _read(out / "documents" / "part-00000.jsonl.gz")
    lang = _read(out / "attributes" / "lang" / "part-00000.jsonl.gz")
    confident = 0
    for d, row in zip(docs, lang):
        span = row["attributes"]["langid__ft__lang__en"][0]  # English is among the top languages
        assert span[:2] == [0, len(d["text"])]
        confident += span[2] > 0.5
    # a few pages are mostly option names and code, where fastText is unsure
    assert confident >= 0.9 * len(docs)
    fr_rows = _read(out / "attributes" / "lang" / "part-00002.jsonl.gz")
    assert sum("langid__ft__lang__fr" in r["attributes"] for r in fr_rows) >= 9


def test_pii_is_masked_and_counted(full_run):
    out = full_run["out"]
    rep = json.loads((out / "report.json").read_text())
    mixed = [d for p in sorted((out / "mixed").glob("*.jsonl.gz")) for d in _read(p)]
    text = "\n".join(d["text"] for d in mixed)
    assert "jane.doe@example.org" not in text and "192.168.10.20" not in text
    kept_ids = {d["id"] for d in mixed}
    masked = 0
    if full_run["docs"][23]["id"] in kept_ids:
        assert "|||EMAIL_ADDRESS|||" in text and "|||PHONE_NUMBER|||" in text
        masked += 1
    if full_run["docs"][24]["id"] in kept_ids:
        assert "|||IP_ADDRESS|||" in text
        masked += 1
    assert masked >= 1, "both planted PII documents were removed; the test cannot check masking"
    assert rep["replacements"].get("pii_email", 0) + rep["replacements"].get("pii_ip", 0) >= 1


def test_megatron_shards_match_retokenised_documents(full_run):
    out = full_run["out"]
    tok = Tok(str(out / "tokenizer" / "tokenizer.json"))
    mixed = [d for p in sorted((out / "mixed").glob("*.jsonl.gz")) for d in _read(p)]
    prefixes = sorted(str(p)[:-4] for p in (out / "tokens").glob("*.idx"))
    assert prefixes, "no token shards"
    got = []
    for prefix in prefixes:
        ds = read_back(prefix)
        assert ds.index.dtype == np.uint16
        got.extend(np.asarray(ds[i]).tolist() for i in range(len(ds)))
    assert len(got) == len(mixed)
    for doc, ids in zip(mixed, got):
        assert ids == tok.encode(doc["text"]) + [tok.eos_id], doc["id"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["tokens"] == sum(len(x) for x in got)


def test_trained_tokenizer_is_described_beside_the_shards(full_run):
    """The dolma preset trains its BPE: tokens/ holds a copy and metadata.json describes it."""
    out = full_run["out"]
    meta = json.loads((out / "tokens" / "metadata.json").read_text())
    trained = out / "tokenizer" / "tokenizer.json"
    copy = out / "tokens" / "tokenizer" / "tokenizer.json"
    assert copy.read_bytes() == trained.read_bytes()
    tok = Tok(str(copy))
    assert meta["tokenizer"]["kind"] == "hf-tokenizer-json"
    assert meta["tokenizer"]["vocab_size"] == tok.vocab_size == 2000
    assert meta["tokenizer"]["eos_id"] == tok.eos_id == tok.tk.token_to_id("<|endoftext|>")
    rep = json.loads((out / "report.json").read_text())
    assert meta["tokens"] == rep["tokens"] and meta["documents"] == rep["output_docs"]
    assert sorted(s["path"] for s in meta["shards"]) == rep["token_shards"]
    assert meta["token_dtype"] == rep["token_dtype"] == "uint16"


def test_planted_near_duplicates_are_removed(full_run):
    out = full_run["out"]
    removed = {r["id"]: r for p in (out / "removed").glob("*.jsonl.gz") for r in _read(p)}
    planted = [p["id"] for p in full_run["planted"]]
    # dedup marks the later copy whatever the filters decide; LSH at 14 bands x 8 rows finds a pair
    # of Jaccard ~0.75 with probability ~0.8, and these copies differ in ~3% of their words
    found = [
        pid for pid in planted if pid in removed and "minhash_duplicate" in removed[pid]["fired"]
    ]
    assert len(found) >= 8, found
    rep = json.loads((out / "report.json").read_text())
    assert rep["dedup"]["minhash_duplicates"] >= len(found)
