"""The tokenizer-train stage: byte-level BPE from the mix (skipped when tokenizer.path is set)."""

from __future__ import annotations

from ..io import read_docs
from ..tokenize import Tok, train_bpe
from .base import Run, mixed_files, one_task, stage, tokenizer_path


@stage(
    "tokenizer-train",
    count=one_task,
    after=("mix",),
    config=lambda run, cfg: [cfg["tokenizer"][k] for k in ("path", "train", "eos")],
)
def task_tokenizer_train(run: Run, _: int, prog) -> dict:
    tc = run.cfg.tokenizer
    if tc.path:
        return {"trained": False, "path": tc.path}

    def texts():
        n = 0
        for f in mixed_files(run):
            for doc in read_docs(f):
                if "#epoch" in doc["id"]:
                    continue  # upsampled copies would skew merges
                yield doc["text"]
                prog(1, len(doc["text"]))
                n += 1
                if tc.train.max_docs and n >= tc.train.max_docs:
                    return

    out = tokenizer_path(run)
    train_bpe(texts(), tc.train.vocab_size, tc.train.min_frequency, tc.eos, out)

    return {"trained": True, "path": out, "vocab_size": Tok(out, tc.eos).vocab_size}
