"""The mix group: the mixer's rules, replacements and sampling over each shard (mix-count first
when sources have weights)."""

from __future__ import annotations

from pathlib import Path

import xxhash

from ..executor import read_marker
from ..io import AtomicJsonlWriter, read_docs
from ..mixer import Mixer, apply_replacements, copies
from ..taggers import enabled_groups
from .base import Run, crash_hook, remove_files, shard, stage


def _attribute_groups(run: Run, i: int) -> list[Path]:
    """The attribute files of the taggers and dedup parts this config enables (stale files of a
    differently configured earlier run in the same folder are not read)."""
    groups = enabled_groups(run.cfg.taggers)  # the taggers' registry
    if run.cfg.dedup.enabled:
        groups.append("dedup")
        if run.cfg.dedup.paragraph.enabled:
            groups.append("paragraph")
    return [run.p("attributes", g, f"{shard(i)}.jsonl.gz") for g in sorted(groups)]


def _iter_with_attrs(run: Run, i: int):
    groups = _attribute_groups(run, i)
    readers = [read_docs(p) for p in groups]
    for doc in read_docs(run.p("documents", shard(i) + ".jsonl.gz")):
        attrs: dict = {}
        for g, r in zip(groups, readers):
            row = next(r, None)
            if row is None or row["id"] != doc["id"]:
                raise RuntimeError(
                    f"attributes {g} are out of step with documents of {shard(i)} at id "
                    f"{doc['id']!r}; re-run the stage that wrote them"
                )
            attrs.update(row["attributes"])
        yield doc, attrs


def _decisions(run: Run, i: int, prog):
    mixer = Mixer(run.cfg.mixer)
    for doc, attrs in _iter_with_attrs(run, i):
        src, step, reason, fired = mixer.decide(doc, attrs)
        prog(1, len(doc["text"].encode("utf-8")))
        yield doc, attrs, src, step, reason, fired


@stage(
    "mix-count",
    "mix",
    count=lambda run: run.n if any(s.weight > 0 for s in run.cfg.mixer.sources) else 0,
    after=("tag", "dedup-cluster", "dedup-paragraph"),
    config=lambda run, cfg: cfg["mixer"],
)
def task_mix_count(run: Run, i: int, prog) -> dict:
    kept: dict[str, int] = {}
    for doc, _, src, _, reason, _ in _decisions(run, i, prog):
        if not reason:
            kept[src.name] = kept.get(src.name, 0) + len(doc["text"].encode("utf-8"))
    return {"kept_bytes": kept}


def source_rates(run: Run) -> dict[str, float]:
    mc = run.cfg.mixer
    if not any(s.weight > 0 for s in mc.sources):
        return {s.name: s.rate for s in mc.sources}
    kept: dict[str, int] = {}
    for i in range(run.n):
        for k, v in (
            (read_marker(run.dir, "mix-count", i) or {}).get("stats", {}).get("kept_bytes", {})
        ).items():
            kept[k] = kept.get(k, 0) + v
    wsum = sum(s.weight for s in mc.sources)
    rates = {}
    for s in mc.sources:
        target = mc.total_tokens * mc.bytes_per_token * s.weight / wsum
        rates[s.name] = target / kept[s.name] if kept.get(s.name) else 0.0
    return rates


@stage("mix", after=("mix-count",))
def task_mix(run: Run, i: int, prog) -> dict:
    mc = run.cfg.mixer
    rates = source_rates(run)
    rand_key = f"{run.cfg.taggers.random.name}__random__value"
    remove_files(str(run.p("mixed", f"{shard(i)}-*.jsonl.gz")))
    removed_w = AtomicJsonlWriter(run.p("removed", shard(i) + ".jsonl.gz"))
    out_idx, out_w = 0, None
    st = {
        "input": 0,
        "kept": 0,
        "output_docs": 0,
        "removed": {},
        "removed_bytes": {},
        "fired": {},
        "replacements": {},
        "per_source": {},
        "rates": rates,
        "shards": 0,
    }

    def bump(d: dict, k: str, v: int = 1) -> None:
        d[k] = d.get(k, 0) + v

    def emit(doc: dict) -> None:
        nonlocal out_idx, out_w
        size = len(doc["text"].encode("utf-8"))
        if out_w is not None and out_w.nbytes and out_w.nbytes + size > mc.max_shard_bytes:
            out_w.close()
            out_w = None
            out_idx += 1
        if out_w is None:
            out_w = AtomicJsonlWriter(run.p("mixed", f"{shard(i)}-{out_idx:04d}.jsonl.gz"))
            st["shards"] += 1
        out_w.write(doc)

    for doc, attrs, src, step, reason, fired in _decisions(run, i, prog):
        st["input"] += 1
        nb = len(doc["text"].encode("utf-8"))
        sname = src.name if src else "(none)"
        ps = st["per_source"].setdefault(
            sname,
            {
                "input": 0,
                "kept": 0,
                "removed": 0,
                "output_docs": 0,
                "input_bytes": 0,
                "kept_bytes": 0,
            },
        )
        ps["input"] += 1
        ps["input_bytes"] += nb
        for f in fired:
            bump(st["fired"], f)
        if not reason:
            text, counts = apply_replacements(doc["text"], attrs, list(mc.replacements))
            for k, v in counts.items():
                bump(st["replacements"], k, v)
            if not text.strip():
                step, reason = "content", "empty_after_replacement"
            else:
                u = attrs.get(rand_key, [[0, 0, None]])[0][2]
                if u is None:
                    u = xxhash.xxh64_intdigest(doc["id"].encode("utf-8", "surrogatepass")) / 2.0**64
                k = copies(rates.get(sname, 1.0), u)
                if k == 0:
                    step, reason = "mix", "downsampled"
                else:
                    st["kept"] += 1
                    ps["kept"] += 1
                    ps["kept_bytes"] += nb
                    for c in range(k):
                        emit(
                            {
                                **doc,
                                "text": text,
                                "id": doc["id"] if c == 0 else f"{doc['id']}#epoch{c}",
                            }
                        )
                        st["output_docs"] += 1
                        ps["output_docs"] += 1
                        if st["output_docs"] == 2:
                            crash_hook("mix", i)
                    continue
        bump(st["removed"], f"{step}:{reason}")
        bump(st["removed_bytes"], f"{step}:{reason}", nb)
        ps["removed"] += 1
        removed_w.write(
            {
                "id": doc["id"],
                "source": doc["source"],
                "step": step,
                "reason": reason,
                "fired": fired,
            }
        )
    if out_w is not None:
        out_w.close()
    removed_w.close()
    return st
