"""Helpers of the data pipeline tests: small file writers (the bundled real text and its
near-duplicates are `data_pipeline.sample_text`, shared with the benchmarks)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def write_jsonl_gz(path: Path, docs: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path
