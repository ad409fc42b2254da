"""One big input file is split into several ingest tasks, and the result equals the one-task run
byte for byte (documents, attributes, removals, mix, tokenizer, tokens). Failures in the middle of a
file are counted with the records they cost: a truncated gzip, a corrupt Parquet row group, a
document that cannot be written, a write that fails."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from data_pipeline.cli import main
from data_pipeline.sample_text import edit_words
from data_pipeline.tokenize import read_back
from tests.data_pipeline.helpers import write_jsonl_gz


def _cat(folder, pattern="*.jsonl.gz") -> bytes:
    """The decompressed bytes of a folder's shards, concatenated in shard order."""
    return b"".join(gzip.decompress(p.read_bytes()) for p in sorted(folder.glob(pattern)))


def _tokens(out) -> list[list[int]]:
    seqs = []
    for idx in sorted((out / "tokens").glob("*.idx")):
        ds = read_back(str(idx)[:-4])
        seqs.extend(np.asarray(ds[i]).tolist() for i in range(len(ds)))
        del ds
    return seqs


def _markers(out, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "_work/markers" / stage).glob("*"))]


def _run(out, inp, *extra: str) -> int:
    return main(
        [
            "pipeline=dolma",
            f"input.paths=[{inp}]",
            f"output.dir={out}",
            "executor.workers=2",
            "executor.progress=false",
            "tokenizer.train.vocab_size=1000",
            "dedup.minhash.partitions=2",
            "dedup.paragraph.expected_paragraphs=100000",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def split_and_whole(tmp_path_factory, samples_en):
    """One gzip JSONL file (man pages, near-duplicates planted far from their originals, lines
    quarantine must catch) run as one task and as three."""
    d = tmp_path_factory.mktemp("split")
    rng = random.Random(1)
    docs = [dict(x) for x in samples_en[:70]]
    docs += [
        {**x, "id": x["id"] + "-dup", "text": edit_words(x["text"], rng, 0.02)} for x in docs[:6]
    ]
    inp = write_jsonl_gz(d / "big.jsonl.gz", docs)
    with gzip.open(inp, "at", encoding="utf-8") as fh:
        fh.write('{"id": "broken", "text": "no closing brace"\n')
    size = inp.stat().st_size
    whole, split = d / "whole", d / "split"
    assert _run(whole, inp, "input.task_bytes=0", "input.min_task_bytes=0") == 0
    assert _run(split, inp, f"input.task_bytes={size // 3 + 1}") == 0
    return whole, split


def test_a_big_file_becomes_several_tasks_with_identical_output(split_and_whole):
    whole, split = split_and_whole
    assert len(_markers(whole, "ingest")) == 1
    assert len(_markers(split, "ingest")) == 3
    for folder in ("documents", "quarantine", "removed"):
        assert _cat(split / folder) == _cat(whole / folder), folder
    groups = sorted(p.name for p in (whole / "attributes").iterdir())
    assert {"lang", "quality", "dedup", "paragraph"} <= set(groups)
    for g in groups:
        assert _cat(split / "attributes" / g) == _cat(whole / "attributes" / g), g
    assert _cat(split / "mixed") == _cat(whole / "mixed")
    tok = "tokenizer/tokenizer.json"
    assert (split / tok).read_bytes() == (whole / tok).read_bytes()
    assert _tokens(split) == _tokens(whole) and _tokens(whole)
    rep_w = json.loads((whole / "report.json").read_text())
    rep_s = json.loads((split / "report.json").read_text())
    for key in ("input_docs", "kept_docs", "removed_docs", "quarantined_by_reason", "dedup"):
        assert rep_s[key] == rep_w[key], key
    assert rep_w["dedup"]["minhash_duplicates"] >= 3  # dedup across the pieces found them
    assert rep_s["accounting"]["balanced"]


def test_report_has_wall_time_and_mb_per_s_per_core(split_and_whole):
    _, split = split_and_whole
    stages = json.loads((split / "report.json").read_text())["stages"]
    for name in ("ingest", "tag", "dedup-hash", "mix", "tokenize"):
        st = stages[name]
        assert st["tasks"] == 3 and st["wall_s"] > 0 and st["mb"] > 0, (name, st)
        # the report rounds rates to 3 decimals (<= 5e-4 off) from mb and seconds rounded to 6
        # (a relative 1e-6 of the rate at most): abs 6e-4, whatever the machine's speed
        assert st["mb_per_s_per_core"] == pytest.approx(st["mb"] / st["task_s"], abs=6e-4)
        assert st["mb_per_cpu_s"] == pytest.approx(st["mb"] / st["cpu_s"], abs=6e-4)
        assert 0 < st["cores_busy"] <= 2.05  # two workers: never more than two cores busy
    assert "MB/s/core" in (split / "report.txt").read_text()


def _ingest(out, paths, *extra):
    return main(
        [
            "ingest",
            "pipeline=tokenize_only",
            f"input.paths=[{','.join(str(p) for p in paths)}]",
            f"output.dir={out}",
            "executor.workers=2",
            "executor.progress=false",
            *extra,
        ]
    )


def _corrupt_row_group(path, group: int) -> None:
    import pyarrow.parquet as pq

    col = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + col.total_compressed_size] = b"\xab" * col.total_compressed_size
    path.write_bytes(bytes(raw))


def test_mid_file_failures_count_the_records_they_cost(tmp_path, samples_en):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = [x["text"] for x in samples_en[:20]]
    pq.write_table(
        pa.table({"text": texts, "id": [f"p{i}" for i in range(20)]}),
        tmp_path / "rows.parquet",
        row_group_size=4,
    )
    _corrupt_row_group(tmp_path / "rows.parquet", 2)
    # a document JSON cannot hold: a binary value inside its metadata struct
    pq.write_table(
        pa.table({"text": texts[:3], "metadata": [{"blob": b"\x00\x01"}, None, None]}),
        tmp_path / "blob.parquet",
    )
    trunc = tmp_path / "trunc.jsonl.gz"
    full = gzip.compress(b"".join(json.dumps(x).encode() + b"\n" for x in samples_en[:40]))
    trunc.write_bytes(full[: len(full) // 2])
    datasets.Dataset.from_list([{"text": t} for t in texts[:9]]).save_to_disk(
        str(tmp_path / "hfds")
    )
    lines = b"".join(json.dumps(x).encode() + b"\n" for x in samples_en[40:52])
    (tmp_path / "plain.jsonl").write_bytes(lines + b'{"id": "bad", "text": \n')
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    names = (
        "rows.parquet",
        "blob.parquet",
        "trunc.jsonl.gz",
        "hfds",
        "plain.jsonl",
        "docs.jsonl.zst",
    )
    paths = [tmp_path / n for n in names]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _ingest(whole, paths, "input.task_bytes=0", "input.min_task_bytes=0") == 0
    # rows.parquet by row groups, trunc.jsonl.gz at line starts, hfds by rows
    assert _ingest(split, paths, "input.task_bytes=4000") == 0
    planned = [
        p.split("/")[-1] for p in json.loads((split / "_work/plan.json").read_text())["inputs"]
    ]
    for name in names:  # every file but the 3-row one is split
        assert planned.count(name) >= (1 if name == "blob.parquet" else 2), (name, planned)
    assert _cat(split / "documents") == _cat(whole / "documents")
    for out in (whole, split):
        stats = [m["stats"] for m in _markers(out, "ingest")]
        by_file: dict[str, dict] = {}
        for s in stats:
            agg = by_file.setdefault(s["input"].split("/")[-1], {"records": 0, "docs": 0, "q": {}})
            agg["records"] += s["records"]
            agg["docs"] += s["docs"]
            for k, v in s["quarantined"].items():
                agg["q"][k] = agg["q"].get(k, 0) + v
        rows = by_file["rows.parquet"]  # 5 row groups of 4; group 2 unreadable: its 4 rows
        assert rows == {"records": 20, "docs": 16, "q": {"truncated_or_corrupt_file": 4}}, rows
        assert by_file["blob.parquet"] == {
            "records": 3,
            "docs": 2,
            "q": {"unwritable_document": 1},
        }
        tr = by_file["trunc.jsonl.gz"]
        assert 0 < tr["docs"] < 40 and tr["q"] == {"truncated_or_corrupt_file": 1}
        assert tr["records"] == tr["docs"] + 1
        assert by_file["hfds"] == {"records": 9, "docs": 9, "q": {}}
        assert by_file["plain.jsonl"] == {"records": 13, "docs": 12, "q": {"malformed_json": 1}}
        assert by_file["docs.jsonl.zst"] == {"records": 12, "docs": 12, "q": {}}
        q = [json.loads(x) for x in _cat(out / "quarantine").splitlines()]
        lost = [r for r in q if r["where"].endswith(":rowgroup2")]
        assert len(lost) == 1 and lost[0]["records"] == 4
        assert sum(s["records"] for s in stats) == sum(s["docs"] for s in stats) + sum(
            r.get("records", 1) for r in q
        )


def test_a_failing_write_fails_the_task_naming_what_was_read(
    tmp_path, samples_en, monkeypatch, capsys
):
    from data_pipeline import io as dp_io

    inp = write_jsonl_gz(tmp_path / "in.jsonl.gz", samples_en[:10])
    real_write = dp_io.AtomicJsonlWriter.write
    calls = [0]

    def full_disk(self, obj):
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(28, "No space left on device")
        real_write(self, obj)

    monkeypatch.setattr(dp_io.AtomicJsonlWriter, "write", full_disk)
    out = tmp_path / "out"
    assert _ingest(out, [inp], "executor.workers=1") == 1
    err = capsys.readouterr().err
    assert "failed after 4 of the records" in err and "No space left on device" in err
    assert not list((out / "_work/markers/ingest").glob("*.json")), "a failed task is not done"
    assert not (out / "documents" / "part-00000.jsonl.gz").exists()
