"""The ingest stage: input files (or pieces of big ones) into documents/ and quarantine/."""

from __future__ import annotations

import os

from ..io import AtomicJsonlWriter, read_input
from .base import Run, crash_hook, shard, stage


def _file_id(path: str) -> list:
    try:
        st = os.stat(path)
        return [st.st_size, int(st.st_mtime)]
    except OSError:
        return [0, 0]


@stage(
    "ingest",
    config=lambda run, cfg: [
        cfg["input"],
        run.inputs,
        run.pieces,
        [_file_id(p) for p in run.inputs],
    ],
    counts_documents=False,
)
def task_ingest(run: Run, i: int, prog) -> dict:
    """One input file, or one piece of a split file, into documents/ and quarantine/. Every input
    record is counted where it went; a record a reader could not read (a cut in a gzip stream, a
    corrupt Parquet row group) is a quarantine entry standing for the records it cost."""
    src = run.inputs[i]
    counts: dict[str, int] = {}
    records = docs = nbytes = 0
    last = [0]

    def tell(pos: int) -> None:
        prog(0, pos - last[0])
        last[0] = pos

    def quarantine(reason: str, where: str, excerpt: str, nb: int, n: int) -> None:
        counts[reason] = counts.get(reason, 0) + n
        entry = {"where": where, "reason": reason, "excerpt": excerpt, "bytes": nb}
        qw.write(entry if n == 1 else {**entry, "records": n})

    with (
        AtomicJsonlWriter(run.p("documents", shard(i) + ".jsonl.gz")) as dw,
        AtomicJsonlWriter(run.p("quarantine", shard(i) + ".jsonl.gz")) as qw,
    ):
        for rec in read_input(src, run.cfg.input, tell, run.piece(i)):
            records += rec.records
            if rec.doc is None:
                quarantine(rec.reason, rec.where, rec.excerpt, rec.nbytes, rec.records)
            else:
                try:
                    dw.write(rec.doc)
                except (TypeError, ValueError) as err:  # a value JSON cannot hold (bytes, a date)
                    quarantine(
                        "unwritable_document", rec.where, f"{type(err).__name__}: {err}"[:300], 0, 1
                    )
                    continue
                except OSError as err:  # disk full, I/O error: this task's output is lost
                    raise OSError(
                        f"writing {dw.path} failed after {records - 1} of the records of {src} "
                        f"({docs} documents): {err}; the task is not marked done, rerun to redo it"
                    ) from err
                docs += 1
                nbytes += len(rec.doc["text"])
                if docs == 3:
                    crash_hook("ingest", i)
            prog(1, 0)
    return {
        "input": src,
        "piece": run.piece(i),
        "records": records,
        "docs": docs,
        "text_bytes": nbytes,
        "quarantined": counts,
        "quarantined_total": sum(counts.values()),
    }
