"""Helpers shared by the data pipeline tests: the bundled real text and small file writers."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_pipeline" / "samples"


def load_samples(lang: str = "en") -> list[dict]:
    with gzip.open(SAMPLES / f"manpages_{lang}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_jsonl_gz(path: Path, docs: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


def edit_words(text: str, rng: random.Random, rate: float) -> str:
    """A near-duplicate: delete, replace or duplicate about `rate` of the words (lines kept)."""
    out_lines = []
    for line in text.split("\n"):
        words = line.split(" ")
        new = []
        for w in words:
            r = rng.random()
            if r < rate / 3:
                continue
            if r < 2 * rate / 3:
                new.append(w[::-1] if w else w)
            elif r < rate:
                new.extend([w, w])
            else:
                new.append(w)
        out_lines.append(" ".join(new))
    return "\n".join(out_lines)
