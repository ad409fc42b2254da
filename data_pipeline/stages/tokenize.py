"""The tokenize group: the mix into Megatron indexed datasets (tokenize), then
tokens/metadata.json and the tokenizer copy (tokens-metadata)."""

from __future__ import annotations

import json
import os

from ..executor import read_marker
from ..io import read_docs
from ..mixer import Mixer
from ..tokenize import (
    TOKEN_DATA_FORMAT,
    TOKEN_DATA_VERSION,
    ShardWriter,
    Tok,
    encode_docs,
    token_dtype,
)
from .base import Run, crash_hook, mixed_files, one_task, remove_files, shard, stage, tokenizer_path


@stage(
    "tokenize",
    after=("tokenizer-train",),
    config=lambda run, cfg: [cfg["tokenizer"], cfg["output"]["write_npy"]],
    preload=("data_pipeline.megatron_datasets",),  # megatron-core (~5 s): once per pool
)
def task_tokenize(run: Run, i: int, prog) -> dict:
    tc = run.cfg.tokenizer
    tok = Tok(tokenizer_path(run), tc.eos, need_eos=tc.add_eos)
    out_dir = run.p("tokens")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_files(str(out_dir / f"{shard(i)}-*"))
    w = ShardWriter(
        str(out_dir / shard(i)), tok.vocab_size, tc.max_tokens_per_shard, run.cfg.output.write_npy
    )
    per_source: dict[str, int] = {}
    batch: list[dict] = []

    mixer = Mixer(run.cfg.mixer)

    def flush() -> None:
        for doc, ids in zip(batch, encode_docs(tok, [d["text"] for d in batch], tc.add_eos)):
            w.add(ids)
            src = mixer.source_of(doc)
            name = src.name if src else "(none)"
            per_source[name] = per_source.get(name, 0) + len(ids)
            prog(1, len(doc["text"]))
        batch.clear()

    for f in mixed_files(run, i):
        for doc in read_docs(f):
            batch.append(doc)
            if len(batch) >= tc.batch_size:
                flush()
                crash_hook("tokenize", i)
    flush()
    paths = w.close()
    return {
        "docs": w.docs,
        "tokens": w.tokens,
        "shards": [os.path.basename(p) for p in paths],
        "shard_counts": [[d, t] for d, t in w.counts],  # (documents, tokens), same order
        "dtype": w.dtype.__name__,
        "vocab_size": tok.vocab_size,
        "tokens_per_source": per_source,
    }


@stage("tokens-metadata", "tokenize", count=one_task, after=("tokenize",), counts_documents=False)
def task_tokens_metadata(run: Run, _: int, prog) -> dict:
    """DIR/tokens/metadata.json and a copy of the tokenizer in DIR/tokens/tokenizer/: the token data
    describes itself (vocabulary, special ids, dtype, counts, the tokenizer's fingerprint), so a
    trainer given only DIR/tokens can size its vocabulary and find the document separator."""
    tc = run.cfg.tokenizer
    tok = Tok(tokenizer_path(run), tc.eos, need_eos=tc.add_eos)
    tokens = run.p("tokens")
    tok.copy_to(tokens / "tokenizer")
    stats = [(read_marker(run.dir, "tokenize", i) or {}).get("stats", {}) for i in range(run.n)]
    shards = [
        {"path": name, "documents": d, "tokens": t}
        for s in stats
        for name, (d, t) in zip(s.get("shards", []), s.get("shard_counts", []))
    ]
    meta = {
        "format": TOKEN_DATA_FORMAT,
        "version": TOKEN_DATA_VERSION,
        "shard_format": "megatron",  # .bin/.idx always; OLMo .npy beside them with write_npy
        "token_dtype": token_dtype(tok.vocab_size).__name__,
        "documents": sum(s["documents"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "shards": shards,
        "tokenizer": tok.metadata(),
        "source": {"pipeline": run.cfg.name, "output_dir": str(run.dir)},
    }
    tmp = tokens / "metadata.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, tokens / "metadata.json")
    return {"documents": meta["documents"], "tokens": meta["tokens"], "shards": len(shards)}
