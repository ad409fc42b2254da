"""The bundled real text (Debian man pages in 13 languages, `data_pipeline/samples/`, built by
`samples/build_samples.py`) and the near-duplicates made from it: what the pipeline's tests and
its benchmarks run on, so both read it from here (neither imports the other)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "samples"


def load_samples(lang: str = "en") -> list[dict]:
    """The Dolma documents of one language's man pages (`manpages_<lang>.jsonl.gz`)."""
    with gzip.open(SAMPLES / f"manpages_{lang}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


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
