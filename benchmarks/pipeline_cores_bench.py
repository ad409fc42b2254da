"""The whole `pretrain data pipeline=dolma` run on one big input file: as one ingest task (the
reference, what the pipeline did before big files were split) and split into pieces (the default),
both with two local workers, same run, same file.

    python benchmarks/pipeline_cores_bench.py [--copies 2] [--workers 2]

The corpus is every bundled man page (data_pipeline/samples/, 600 documents in 14 languages),
repeated `--copies` times with distinct ids, as one plain JSONL file. Prints, per stage, wall
seconds and cores busy for both runs, MB/s per core of the split run, the whole-run wall-time ratio,
and checks that both runs produced the same documents and tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def corpus(path: Path, copies: int) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for c in range(copies):
            for f in sorted((REPO / "data_pipeline" / "samples").glob("manpages_*.jsonl.gz")):
                with gzip.open(f, "rt", encoding="utf-8") as fh:
                    for line in fh:
                        doc = json.loads(line)
                        doc["id"] = f"{doc['id']}-copy{c}"
                        out.write(json.dumps(doc, ensure_ascii=False) + "\n")
                        n += 1
    return n


def run(inp: Path, out: Path, workers: int, *extra: str) -> float:
    from data_pipeline.cli import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the report table; report.json has it all
        rc = main(
            [
                "pipeline=dolma",
                f"input.paths=[{inp}]",
                f"output.dir={out}",
                f"executor.workers={workers}",
                "executor.progress=false",
                *extra,
            ]
        )
    if rc != 0:
        sys.exit(f"pipeline failed ({rc}) for {out}")
    return time.perf_counter() - t0


def _cat(folder: Path) -> bytes:
    return b"".join(gzip.decompress(p.read_bytes()) for p in sorted(folder.glob("*.jsonl.gz")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        inp = td / "corpus.jsonl"
        docs = corpus(inp, args.copies)
        mb = inp.stat().st_size / 1e6
        one = run(inp, td / "one", args.workers, "input.task_bytes=0", "input.min_task_bytes=0")
        split = run(inp, td / "split", args.workers)
        rep1 = json.loads((td / "one" / "report.json").read_text())
        rep2 = json.loads((td / "split" / "report.json").read_text())
        same = _cat(td / "one" / "documents") == _cat(td / "split" / "documents") and (
            rep1["tokens"] == rep2["tokens"]
        )
    print(
        f"## one {mb:.1f} MB JSONL file ({docs} documents), dolma preset, "
        f"{args.workers} workers: one ingest task vs split"
    )
    print(
        "| stage | tasks one / split | wall s one | wall s split | cores busy one | "
        "cores busy split | MB/s per busy core (split) | MB per CPU-s (split) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, b in rep2["stages"].items():
        a = rep1["stages"].get(name, {})
        print(
            f"| {name} | {a.get('tasks', '-')} / {b['tasks']} | {a.get('wall_s', 0):.2f} | "
            f"{b['wall_s']:.2f} | {a.get('cores_busy') or 0:.2f} | {b['cores_busy'] or 0:.2f} | "
            f"{b['mb_per_s_per_core'] or 0:.2f} | {b['mb_per_cpu_s'] or 0:.2f} |"
        )
    print(
        f"whole run: one task {one:.1f} s, split {split:.1f} s; ratio one / split: "
        f"{one / split:.2f}; outputs identical: {same}"
    )


if __name__ == "__main__":
    main()
