"""Resumable tasks: a run killed mid-task resumes and ends with the same outputs as an uninterrupted
one; a changed mixer threshold re-runs only the mixer and what follows; sampling rates and weights."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import threading

from data_pipeline.cli import main
from data_pipeline.executor import pool_start_method
from tests.data_pipeline.helpers import REPO, write_jsonl_gz


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(l) for l in fh]


ARGS = [
    "executor.workers=2",
    "executor.progress=false",
    "taggers.lang.paragraphs=false",
    "tokenizer.train.vocab_size=1000",
    "dedup.paragraph.expected_paragraphs=100000",
    "dedup.minhash.partitions=2",
]


def _cli(out, inp, *extra, env=None):
    """In a subprocess: the crash hook kills the whole process, as a node failure or kill -9 would."""
    cmd = [
        sys.executable,
        "-m",
        "data_pipeline.cli",
        f"input.paths=[{inp}/*.jsonl.gz]",
        f"output.dir={out}",
        *ARGS,
        *extra,
    ]
    return subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)},
    )


def _inproc(capsys, out, inp, *extra):
    rc = main([f"input.paths=[{inp}/*.jsonl.gz]", f"output.dir={out}", *ARGS, *extra])
    return rc, capsys.readouterr().err


def _token_bytes(out):
    return {
        p.name: p.read_bytes()
        for p in sorted((out / "tokens").glob("*"))
        if p.suffix in (".bin", ".idx")
    }


@contextlib.contextmanager
def another_thread():
    """A second Python thread in this process while the block runs: the pool must not fork."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert pool_start_method() == "forkserver"
        yield
    finally:
        stop.set()
        other.join()


def test_killed_run_resumes_to_identical_outputs(tmp_path, samples_en, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    write_jsonl_gz(inp / "a.jsonl.gz", samples_en[:25])
    write_jsonl_gz(inp / "b.jsonl.gz", samples_en[25:50])
    ref = tmp_path / "ref"
    with another_thread():  # the reference's workers come from the fork server, the CLI's forked
        assert _inproc(capsys, ref, inp)[0] == 0
    out = tmp_path / "out"
    crashed = _cli(out, inp, env={"DATA_PIPELINE_CRASH": "mix:1"})
    assert crashed.returncode != 0
    assert not (out / "_work/markers/mix/00001.json").exists()
    assert not (out / "report.json").exists()
    # mix task 1 died mid-write: only a .tmp file, never a half shard under the final name
    assert list((out / "mixed").glob("part-00001-*.jsonl.gz.tmp"))
    assert not list((out / "mixed").glob("part-00001-*.jsonl.gz"))
    ingest_marker = (out / "_work/markers/ingest/00000.json").stat().st_mtime_ns
    rc, err = _inproc(capsys, out, inp)
    assert rc == 0, err
    assert "tag: all 2 tasks complete (skipped)" in err
    assert (out / "_work/markers/ingest/00000.json").stat().st_mtime_ns == ingest_marker
    assert _token_bytes(out) == _token_bytes(ref)
    r1 = json.loads((ref / "report.json").read_text())
    r2 = json.loads((out / "report.json").read_text())
    for k in ("input_docs", "kept_docs", "removed_docs", "tokens"):
        assert r1[k] == r2[k]

    # a changed threshold: ingest, tag and dedup are skipped, the mixer and tokenizer run again
    rc, err = _inproc(
        capsys,
        out,
        inp,
        "mixer.filters=[{name: few_words, step: quality, exclude: 'quality__gopher__word_count < 900'}]",
    )
    assert rc == 0, err
    for stage in ("ingest", "tag", "dedup-hash", "dedup-cluster"):
        assert f"{stage}: all" in err and "(skipped)" in err
    assert "mix: all" not in err and "tokenize: all" not in err
    r3 = json.loads((out / "report.json").read_text())
    assert list(r3["removed_docs"]) == ["quality:few_words"]
    assert r3["accounting"]["balanced"]


def test_rates_and_weights_upsample_and_downsample(tmp_path, samples_en):
    inp = tmp_path / "in"
    inp.mkdir()
    write_jsonl_gz(inp / "a.jsonl.gz", [{**d, "source": "web"} for d in samples_en[:40]])
    write_jsonl_gz(inp / "b.jsonl.gz", [{**d, "source": "books"} for d in samples_en[40:80]])
    out = tmp_path / "out"
    rc = main(
        [
            "pipeline=tokenize_only",
            f"input.paths=[{inp}/*.jsonl.gz]",
            f"output.dir={out}",
            "executor.progress=false",
            "executor.workers=1",
            "mixer.sources=[{name: web, match: web, rate: 0.5}, {name: books, match: books, rate: 2.0}]",
            "mixer.max_shard_bytes=50000",
            "tokenizer.train.vocab_size=600",
        ]
    )
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    ps = rep["per_source"]
    assert ps["books"]["output_docs"] == 80 and ps["books"]["kept"] == 40
    assert 10 <= ps["web"]["kept"] <= 30 and ps["web"]["output_docs"] == ps["web"]["kept"]
    assert rep["removed_docs"] == {"mix:downsampled": 40 - ps["web"]["kept"]}
    assert rep["accounting"]["balanced"]
    sizes = [
        sum(len(d["text"].encode()) + 200 for d in _read(p))
        for p in (out / "mixed").glob("*.jsonl.gz")
    ]
    assert len(sizes) > 4  # bounded shards (50 kB each, a larger page alone)
    # reproducible sampling: the kept web documents are exactly those whose random attribute < 0.5
    rand = {
        r["id"]: r["attributes"]["random__random__value"][0][2]
        for r in _read(out / "attributes" / "random" / "part-00000.jsonl.gz")
    }
    kept_web = {d["id"] for p in (out / "mixed").glob("part-00000-*.jsonl.gz") for d in _read(p)}
    assert kept_web == {i for i, u in rand.items() if u < 0.5}

    # weights: a 3:1 mix of a target size, rates computed from what the filters kept
    out3 = tmp_path / "out3"
    rc = main(
        [
            "pipeline=tokenize_only",
            f"input.paths=[{inp}/*.jsonl.gz]",
            f"output.dir={out3}",
            "executor.progress=false",
            "executor.workers=1",
            "mixer.total_tokens=150000",
            "mixer.sources=[{name: web, match: web, weight: 3}, {name: books, match: books, weight: 1}]",
            "tokenizer.train.vocab_size=600",
        ]
    )
    assert rc == 0
    rep = json.loads((out3 / "report.json").read_text())
    rates = json.loads((out3 / "_work/markers/mix/00000.json").read_text())["stats"]["rates"]
    ps = rep["per_source"]
    # the mixer's rate is this float64 quotient: a rounding or two of 1.1e-16 (rates are < 1)
    assert abs(rates["web"] - 150000 * 4.0 * 0.75 / ps["web"]["input_bytes"]) < 1e-9
    assert abs(rates["books"] - 150000 * 4.0 * 0.25 / ps["books"]["input_bytes"]) < 1e-9
    ratio = rep["per_source"]["web"]["tokens"] / rep["per_source"]["books"]["tokens"]
    # 3:1 asked in bytes; the two sources' tokens per byte differ (prose vs reference text) by
    # under 1.5x, so the token ratio lies in 3 / 1.5 .. 3 x 1.5
    assert 2.0 < ratio < 4.5, ratio


def test_pool_forks_only_where_no_other_thread_runs(tmp_path, samples_en, capsys, monkeypatch):
    """A pool forks its workers only from a process with one Python thread: a child forked while
    another thread holds a lock can hang or crash (pool workers did both under pytest-xdist's and
    W&B's threads). The CLI's process has one thread after its imports, so it forks. With another
    thread the fork server starts the workers (test_killed_run_resumes_to_identical_outputs: same
    outputs as the CLI's forked run), with this process's environment as it is now, though the
    server may have started before it was set: the crash hook fires. A worker's death is one line,
    not a traceback."""
    probe = (
        "import data_pipeline.cli; from data_pipeline.executor import pool_start_method; "
        "print(pool_start_method())"
    )
    cli_method = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert cli_method == "fork"
    inp = tmp_path / "in"
    inp.mkdir()
    write_jsonl_gz(inp / "a.jsonl.gz", samples_en[:25])
    write_jsonl_gz(inp / "b.jsonl.gz", samples_en[25:50])
    monkeypatch.setenv("DATA_PIPELINE_CRASH", "mix:1")
    with another_thread():
        rc, err = _inproc(capsys, tmp_path / "crashed", inp)
    assert rc == 1
    assert "mix task 1: a worker process died" in err and "Traceback" not in err
    assert not (tmp_path / "crashed/_work/markers/mix/00001.json").exists()
