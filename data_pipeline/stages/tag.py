"""The tag stage: every enabled tagger over a shard, one attributes file per group."""

from __future__ import annotations

from ..io import AtomicJsonlWriter, read_docs
from ..taggers import TaggerSet
from .base import Run, shard, stage


@stage("tag", after=("ingest",), config=lambda run, cfg: cfg["taggers"])
def task_tag(run: Run, i: int, prog) -> dict:
    tags = TaggerSet(run.cfg.taggers)
    writers = {
        g: AtomicJsonlWriter(run.p("attributes", g, shard(i) + ".jsonl.gz")) for g in tags.groups
    }
    n = 0
    for doc in read_docs(run.p("documents", shard(i) + ".jsonl.gz")):
        out = tags(doc)
        for g, w in writers.items():
            w.write({"id": doc["id"], "source": doc["source"], "attributes": out.get(g, {})})
        n += 1
        prog(1, len(doc["text"].encode("utf-8")))
    for w in writers.values():
        w.close()
    return {"docs": n, "groups": tags.groups}
