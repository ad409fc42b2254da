"""Bad input is quarantined with its reason and counted, the run goes on; every input format converts."""

from __future__ import annotations

import gzip
import json

from data_pipeline.cli import main


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(l) for l in fh]


def _ingest(tmp_path, paths, *extra):
    out = tmp_path / "out"
    rc = main(
        [
            "ingest",
            "pipeline=tokenize_only",
            f"input.paths=[{','.join(str(p) for p in paths)}]",
            f"output.dir={out}",
            "executor.workers=1",
            "executor.progress=false",
            *extra,
        ]
    )
    assert rc == 0
    return out


def test_each_kind_of_bad_input_is_quarantined(tmp_path, samples_en):
    good = samples_en[:3]
    lines = [json.dumps(d).encode() for d in good]
    bad = {
        "malformed_json": b'{"id": "x1", "text": "unterminated',
        "invalid_utf8": b'{"id": "x2", "text": "caf\xe9 au lait"}',
        "missing_text": b'{"id": "x3", "body": "no text field"}',
        "non_string_text": b'{"id": "x4", "text": ["a", "list"]}',
        "empty_text": b'{"id": "x5", "text": "   \\n  "}',
        "binary_garbage": json.dumps(
            {"id": "x6", "text": "".join(chr(i % 32) for i in range(3000))}
        ).encode(),
        "not_a_json_object": b'["a", "list"]',
    }
    raw = tmp_path / "mixed.jsonl"
    raw.write_bytes(b"\n".join([lines[0], *bad.values(), lines[1]]) + b"\n")
    # a 200 MB document: one line, never held in memory whole
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as fh:
        fh.write(lines[2] + b"\n")
        fh.write(b'{"id": "huge", "text": "')
        chunk = b"a" * (1 << 20)
        for _ in range(200):
            fh.write(chunk)
        fh.write(b'"}\n')
        fh.write(lines[0] + b"\n")
    # a truncated gzip file: the documents before the cut are kept
    trunc = tmp_path / "trunc.jsonl.gz"
    full = gzip.compress(b"\n".join(json.dumps(d).encode() for d in samples_en[:40]) + b"\n")
    trunc.write_bytes(full[: len(full) // 2])
    out = _ingest(tmp_path, [raw, huge, trunc])
    q = [r for p in sorted((out / "quarantine").glob("*.jsonl.gz")) for r in _read(p)]
    reasons = {}
    for r in q:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    for reason in bad:
        assert reasons.get(reason) == 1, (reason, reasons)
    assert reasons.get("document_too_large") == 1
    assert reasons.get("truncated_or_corrupt_file") == 1
    stats = [
        json.loads(p.read_text())["stats"]
        for p in sorted((out / "_work/markers/ingest").glob("*.json"))
    ]
    assert stats[0]["docs"] == 2 and stats[0]["records"] == 2 + len(bad)
    assert stats[1]["docs"] == 2 and stats[1]["quarantined"] == {"document_too_large": 1}
    assert 0 < stats[2]["docs"] < 40  # what was readable before the cut
    big = [r for r in q if r["reason"] == "document_too_large"][0]
    assert int(big["excerpt"].split()[2]) > 200 * 2**20
    docs = [d for p in sorted((out / "documents").glob("*.jsonl.gz")) for d in _read(p)]
    assert all(d["text"].strip() for d in docs)
    assert sum(s["records"] for s in stats) == len(docs) + len(q)


def test_text_parquet_zstd_and_hf_inputs(tmp_path, samples_en):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    d = samples_en[:12]
    (tmp_path / "page.txt").write_text(d[0]["text"], encoding="utf-8")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02garbage" * 100)
    pq.write_table(
        pa.table({"text": [x["text"] for x in d[1:4]], "url": ["http://a/1", "http://a/2", None]}),
        tmp_path / "rows.parquet",
    )
    (tmp_path / "docs.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps(x) + "\n" for x in d[4:7]).encode())
    )
    datasets.Dataset.from_list([{"text": x["text"], "id": x["id"]} for x in d[7:10]]).save_to_disk(
        str(tmp_path / "hfds")
    )
    out = _ingest(
        tmp_path,
        [
            tmp_path / "page.txt",
            tmp_path / "bin.txt",
            tmp_path / "rows.parquet",
            tmp_path / "docs.jsonl.zst",
            tmp_path / "hfds",
        ],
    )
    shards = sorted((out / "documents").glob("*.jsonl.gz"))
    texts = [[x["text"] for x in _read(p)] for p in shards]
    inputs = json.loads((out / "_work" / "plan.json").read_text())["inputs"]
    by_name = {p.split("/")[-1]: t for p, t in zip(inputs, texts)}
    assert by_name["page.txt"] == [d[0]["text"]]
    assert by_name["bin.txt"] == []
    assert by_name["rows.parquet"] == [x["text"] for x in d[1:4]]
    assert by_name["docs.jsonl.zst"] == [x["text"] for x in d[4:7]]
    assert by_name["hfds"] == [x["text"] for x in d[7:10]]
    rows = _read(shards[inputs.index(str(tmp_path / "rows.parquet"))])
    assert rows[0]["metadata"]["url"] == "http://a/1" and rows[0]["source"] == "rows"
    q = [r for p in sorted((out / "quarantine").glob("*.jsonl.gz")) for r in _read(p)]
    assert [r["reason"] for r in q] == ["binary_garbage"]


def test_config_errors_name_the_problem_and_exit_2(tmp_path, capsys):
    assert main(["pipeline=nope", f"output.dir={tmp_path}"]) == 2
    assert "unknown pipeline 'nope'" in capsys.readouterr().err
    assert main([f"output.dir={tmp_path}"]) == 2
    assert "input.paths is empty" in capsys.readouterr().err
    # a key the schema lacks is refused even with Hydra's `+` (which would add it, unread)
    assert main(["+input.pathz=[x]", "+nokey=1", f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "'input.pathz' (did you mean input.paths" in err and "'nokey'" in err
    assert main([f"input.paths=[{tmp_path}/none*.gz]", f"output.dir={tmp_path}"]) == 2
    assert "matches no file" in capsys.readouterr().err
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    base = [f"input.paths=[{tmp_path}/a.jsonl]", f"output.dir={tmp_path}/o"]
    assert (
        main(
            [
                *base,
                "dedup.paragraph.expected_paragraphs=100000000000",
                "dedup.paragraph.max_memory_mb=64",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Bloom filter needs" in err and "max_memory_mb" in err
    assert main([*base, "mixer.filters=[{name: x, step: quality, exclude: 'foo ~ 3'}]"]) == 2
    assert "cannot parse rule" in capsys.readouterr().err
    assert main([*base, "executor.type=kubernetes"]) == 2
    assert "executor.type" in capsys.readouterr().err
    assert main([*base, "tokenizer.path=/no/such/tokenizer.json"]) == 2
    assert "tokenizer.path" in capsys.readouterr().err
    assert main([*base, "stage=dedupe"]) == 2  # the stage words come from the stage registry
    assert "use all or one of ingest, tag, dedup, mix" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "a config error must stop before any work"
