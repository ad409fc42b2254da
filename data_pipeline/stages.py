"""The pipeline's stages and their tasks, over the output folder layout:

    DIR/documents/part-NNNNN.jsonl.gz        Dolma documents (one shard per input file or piece)
    DIR/quarantine/part-NNNNN.jsonl.gz       bad input: {where, reason, excerpt}
    DIR/attributes/<group>/part-NNNNN.jsonl.gz   tagger/dedup attributes, same rows, same order
    DIR/removed/part-NNNNN.jsonl.gz          every document the mixer removed, with step and reason
    DIR/mixed/part-NNNNN-KKKK.jsonl.gz       the mix (bounded shards)
    DIR/tokenizer/tokenizer.json             trained BPE (when tokenizer.path is empty)
    DIR/tokens/part-NNNNN-KKKK.bin/.idx      Megatron indexed datasets
    DIR/tokens/metadata.json, tokenizer/     what the tokens are, and the tokenizer that made them
    DIR/report.json, report.txt, report.png
    DIR/_work/                               config, plan, markers, dedup signatures, Slurm scripts

Each stage is one task function registered with `@stage(...)` below; the registration order is the
run order, and the registry (`STAGES`) is the only list of stage names: the CLI's words, the
fingerprints, the executors' jobs and the Slurm worker read it. Task counts (n = number of shards:
input files, a big one split into pieces; P = dedup.minhash.partitions): ingest n, tag n,
dedup-hash n, dedup-bucket P, dedup-cluster 1, dedup-paragraph 1, [mix-count n], mix n,
tokenizer-train 1, tokenize n, tokens-metadata 1, report 1.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import psutil
import xxhash

from . import config as C
from .dedup import (
    BloomFilter,
    bucket_pairs,
    components,
    duplicates_from_labels,
    first_occurrence_dups,
    make_hasher,
    text_hash,
)
from .executor import Progress, StageJob, StageSpec, read_marker
from .io import AtomicJsonlWriter, doc_url, input_size, read_docs, read_input, split_input
from .mixer import Mixer, apply_replacements, copies
from .report import build_report
from .taggers import TaggerSet, enabled_groups
from .tokenize import (
    TOKEN_DATA_FORMAT,
    TOKEN_DATA_VERSION,
    ShardWriter,
    Tok,
    encode_docs,
    megatron_indexed,
    token_dtype,
    train_bpe,
)


def _fp(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def shard(i: int) -> str:
    return f"part-{i:05d}"


@dataclass
class Run:
    dir: Path
    cfg: C.PipelineConfig
    inputs: list[str]  # the input file of each shard (a file split into pieces repeats)
    specs: dict[str, StageSpec] = field(default_factory=dict)
    pieces: list[dict | None] = field(default_factory=list)  # each shard's piece (None: whole)

    def piece(self, i: int) -> dict | None:
        return self.pieces[i] if i < len(self.pieces) else None

    @property
    def n(self) -> int:
        return len(self.inputs)

    def spec(self, name: str) -> StageSpec:
        return self.specs[name]

    def p(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def ingest_stats(self) -> list[dict]:
        return [(read_marker(self.dir, "ingest", i) or {}).get("stats", {}) for i in range(self.n)]

    def docs_in(self, i: int) -> int:
        return int(self.ingest_stats()[i].get("docs", 0))

    def documents_after_ingest(self) -> int:
        return sum(s.get("docs", 0) for s in self.ingest_stats())

    def build_specs(self) -> None:
        """Every registered stage's task count and fingerprint: the fingerprint covers the config
        parts the stage reads and the fingerprints of the stages it reads from, so changing a mixer
        rule changes mix's fingerprint and everything after it, and nothing before."""
        cfg = C.to_container(self.cfg)
        fps: dict[str, str] = {}
        self.specs = {}
        for st in STAGES.values():
            fps[st.name] = _fp(*(fps[a] for a in st.after), st.config(self, cfg))
            self.specs[st.name] = StageSpec(st.name, st.group, st.count(self), fps[st.name])

    def selected(self, group: str) -> list[StageSpec]:
        """The stages `pretrain data GROUP` runs (all: every stage this config enables), in order."""
        names = [
            st.name
            for st in STAGES.values()
            if (group == "all" and st.enabled(self.cfg)) or group == st.group
        ]
        return [self.specs[n] for n in names if self.specs[n].n > 0]

    def job(self, name: str) -> StageJob:
        """What an executor needs to run stage `name`: its spec and a picklable task callable."""
        st = STAGES[name]
        return StageJob(
            spec=self.specs[name],
            task=partial(run_registered_task, str(self.dir), name),
            before_fork=st.before_fork,
            total=self.documents_after_ingest if st.counts_documents else None,
        )


def _file_id(path: str) -> list:
    try:
        st = os.stat(path)
        return [st.st_size, int(st.st_mtime)]
    except OSError:
        return [0, 0]


def tasks_per_file(
    sizes: list[int], task_bytes: int, min_task_bytes: int, workers: int
) -> list[int]:
    """How many ingest tasks each input file becomes: at most `task_bytes` per task, and, while
    there are fewer tasks than workers, the largest pieces split again as long as they stay at
    least `min_task_bytes`, so one big file keeps every worker busy."""
    counts = [max(1, math.ceil(s / task_bytes)) if task_bytes > 0 else 1 for s in sizes]
    while sizes and sum(counts) < workers:
        j = max(range(len(sizes)), key=lambda k: sizes[k] / counts[k])
        if min_task_bytes <= 0 or sizes[j] / (counts[j] + 1) < min_task_bytes:
            break
        counts[j] += 1
    return counts


def plan_inputs(cfg: C.PipelineConfig) -> tuple[list[str], list[dict | None]]:
    """Each shard's input file and piece of it (the plan every later stage follows)."""
    files = [str(Path(p).resolve()) for p in C.expand_inputs(list(cfg.input.paths))]
    workers = (cfg.executor.workers or os.cpu_count() or 1) if cfg.executor.type == "local" else 0
    counts = tasks_per_file(
        [input_size(f) for f in files], cfg.input.task_bytes, cfg.input.min_task_bytes, workers
    )
    inputs: list[str] = []
    pieces: list[dict | None] = []
    for f, k in zip(files, counts):
        split = split_input(f, cfg.input, k)
        if len(split) > 1:
            print(
                f"{f}: {input_size(f) / 1e6:,.1f} MB -> {len(split)} ingest tasks", file=sys.stderr
            )
        inputs += [f] * len(split)
        pieces += split
    return inputs, pieces


def prepare_run(cfg: C.PipelineConfig) -> Run:
    """Save the resolved config and the input plan under DIR/_work (workers on any node reload them)."""
    out = Path(cfg.output.dir).resolve()
    work = out / "_work"
    work.mkdir(parents=True, exist_ok=True)
    plan_path = work / "plan.json"
    if cfg.stage in ("all", "ingest") or not plan_path.exists():
        inputs, pieces = plan_inputs(cfg)
    else:  # a later stage alone: the shards the earlier run planned
        plan = json.loads(plan_path.read_text())
        inputs, pieces = plan["inputs"], plan.get("pieces", [None] * len(plan["inputs"]))
    cfg.output.dir = str(out)
    (work / "config.yaml").write_text(C.to_yaml(cfg))
    plan_path.write_text(json.dumps({"inputs": inputs, "pieces": pieces}, indent=1))
    load_run.cache_clear()
    run = Run(out, cfg, inputs, pieces=pieces)
    run.build_specs()
    (work / "specs.json").write_text(
        json.dumps({k: vars(v) for k, v in run.specs.items()}, indent=1)
    )
    return run


@lru_cache(maxsize=4)
def load_run(out: Path) -> Run:
    work = out / "_work"
    cfg = C.config_from_yaml(work / "config.yaml")
    plan = json.loads((work / "plan.json").read_text())
    run = Run(out, cfg, plan["inputs"], pieces=plan.get("pieces", []))
    specs = json.loads((work / "specs.json").read_text())
    run.specs = {k: StageSpec(**v) for k, v in specs.items()}
    return run


def run_registered_task(out_dir: str, name: str, i: int, prog: Progress) -> dict:
    """Task i of stage `name` over the run saved in out_dir (in a pool worker or a Slurm job the
    run is reloaded from DIR/_work, once per process)."""
    return STAGES[name].task(load_run(Path(out_dir)), i, prog)


def _clear(pattern: str) -> None:
    for p in glob.glob(pattern):
        os.remove(p)


def _crash_hook(stage: str, i: int) -> None:
    """Tests simulate a killed run: DATA_PIPELINE_CRASH=stage:index makes that task die mid-write."""
    if os.environ.get("DATA_PIPELINE_CRASH") == f"{stage}:{i}":
        os._exit(9)


# ---------------------------------------------------------------- the stage registry

StageTask = Callable[[Run, int, Progress], dict]


@dataclass(frozen=True)
class Stage:
    """One registered stage: its tasks and what its output depends on."""

    name: str  # internal name: marker folder, Slurm job and progress bar label (e.g. dedup-hash)
    group: str  # the user-facing stage it belongs to (`pretrain data dedup` runs the whole group)
    task: StageTask  # task(run, index, progress) -> statistics (kept in the completion marker)
    count: Callable[[Run], int]  # number of tasks (0: nothing to do in this config)
    after: tuple[str, ...]  # stages whose output it reads: their fingerprints are part of its own
    config: Callable[[Run, dict], object]  # the parts of the config (a plain dict) it reads
    enabled: Callable[[C.PipelineConfig], bool]  # part of `pretrain data run` in this config
    counts_documents: bool  # its progress bar counts the documents that ingest produced
    before_fork: Callable[[], object] | None  # called once in the parent before a pool forks


STAGES: dict[str, Stage] = {}  # in pipeline order: the order of the registrations below


def stage(
    name: str,
    group: str = "",
    *,
    count: Callable[[Run], int] = lambda run: run.n,
    after: tuple[str, ...] = (),
    config: Callable[[Run, dict], object] = lambda run, cfg: None,
    enabled: Callable[[C.PipelineConfig], bool] = lambda cfg: True,
    counts_documents: bool = True,
    before_fork: Callable[[], object] | None = None,
) -> Callable[[StageTask], StageTask]:
    """Register a stage's task function. Adding a stage is one decorated function: the CLI word,
    the run order, the fingerprints and the executors all read this registry."""

    def register(fn: StageTask) -> StageTask:
        if name in STAGES:
            raise ValueError(f"stage {name!r} is registered twice")
        unknown = [a for a in after if a not in STAGES]
        if unknown:
            raise ValueError(f"stage {name!r} reads {unknown}, which are not registered before it")
        STAGES[name] = Stage(
            name, group or name, fn, count, after, config, enabled, counts_documents, before_fork
        )
        return fn

    return register


def stage_groups() -> list[str]:
    """The user-facing stage names, in pipeline order (`pretrain data GROUP`)."""
    return list(dict.fromkeys(st.group for st in STAGES.values()))


def _one(run: Run) -> int:
    return 1


def _dedup_on(cfg: C.PipelineConfig) -> bool:
    return cfg.dedup.enabled


# ---------------------------------------------------------------- ingest


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
                    _crash_hook("ingest", i)
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


# ---------------------------------------------------------------- tag


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


# ---------------------------------------------------------------- dedup


def _hasher(run: Run):
    return make_hasher(run.cfg.dedup.minhash)  # dedup.minhash.reading picks the signature


@stage(
    "dedup-hash",
    "dedup",
    after=("ingest",),
    config=lambda run, cfg: [cfg["dedup"], cfg["taggers"]["content"]["url_fields"]],
    enabled=_dedup_on,
)
def task_dedup_hash(run: Run, i: int, prog) -> dict:
    hasher = _hasher(run)
    exact, url, url_ok, lengths, sigs, ids = [], [], [], [], [], []
    fields = list(run.cfg.taggers.content.url_fields)
    for doc in read_docs(run.p("documents", shard(i) + ".jsonl.gz")):
        t = doc["text"]
        exact.append(text_hash(t))
        u = doc_url(doc, fields)
        url.append(text_hash(u) if u else 0)
        url_ok.append(bool(u))
        lengths.append(len(t))
        sigs.append(
            hasher.signature(t)
            if run.cfg.dedup.minhash.enabled
            else np.zeros(hasher.num_perm, hasher.dtype)
        )
        ids.append([doc["id"], doc["source"]])
        prog(1, len(t.encode("utf-8")))
    d = run.p("_work", "dedup")
    d.mkdir(parents=True, exist_ok=True)
    sig = np.stack(sigs) if sigs else np.zeros((0, hasher.num_perm), hasher.dtype)
    np.save(d / f"{shard(i)}.sig.tmp.npy", sig)
    os.replace(d / f"{shard(i)}.sig.tmp.npy", d / f"{shard(i)}.sig.npy")
    np.savez(
        d / f"{shard(i)}.hash.tmp.npz",
        exact=np.array(exact, np.uint64),
        url=np.array(url, np.uint64),
        url_ok=np.array(url_ok, bool),
        lengths=np.array(lengths, np.int64),
    )
    os.replace(d / f"{shard(i)}.hash.tmp.npz", d / f"{shard(i)}.hash.npz")
    with gzip.open(d / f"{shard(i)}.ids.json.gz.tmp", "wt") as fh:
        json.dump(ids, fh)
    os.replace(d / f"{shard(i)}.ids.json.gz.tmp", d / f"{shard(i)}.ids.json.gz")
    return {"docs": len(ids)}


@stage(
    "dedup-bucket",
    "dedup",
    count=lambda run: run.cfg.dedup.minhash.partitions,
    after=("dedup-hash",),
    enabled=_dedup_on,
    counts_documents=False,
)
def task_dedup_bucket(run: Run, p: int, prog) -> dict:
    """Bucket task p of P: the band keys with key % P == p from every shard -> duplicate pairs."""

    hasher = _hasher(run)
    P = run.cfg.dedup.minhash.partitions
    keys, gids = [], []
    offset = 0
    for i in range(run.n):
        sig = np.load(run.p("_work", "dedup", f"{shard(i)}.sig.npy"))
        if len(sig):
            k = hasher.band_keys(sig)
            mask = (k % np.uint64(P)) == np.uint64(p)
            rows = np.nonzero(mask)[0]
            keys.append(k[mask])
            gids.append(rows + offset)
        offset += len(sig)
        prog(len(sig), sig.nbytes)
    if keys:
        pairs = bucket_pairs(np.concatenate(keys), np.concatenate(gids).astype(np.int64))
    else:
        pairs = np.zeros((0, 2), np.int64)
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
    d = run.p("_work", "dedup")
    np.save(d / f"pairs-{p:04d}.tmp.npy", pairs)
    os.replace(d / f"pairs-{p:04d}.tmp.npy", d / f"pairs-{p:04d}.npy")
    return {"pairs": int(len(pairs))}


@stage("dedup-cluster", "dedup", count=_one, after=("dedup-bucket",), enabled=_dedup_on)
def task_dedup_cluster(run: Run, _: int, prog) -> dict:
    dd = run.cfg.dedup
    d = run.p("_work", "dedup")
    hashes = [np.load(d / f"{shard(i)}.hash.npz") for i in range(run.n)]
    sizes = [len(h["exact"]) for h in hashes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    N = int(offsets[-1])
    exact = np.concatenate([h["exact"] for h in hashes]) if N else np.zeros(0, np.uint64)
    url = np.concatenate([h["url"] for h in hashes]) if N else np.zeros(0, np.uint64)
    url_ok = np.concatenate([h["url_ok"] for h in hashes]) if N else np.zeros(0, bool)
    exact_dup = first_occurrence_dups(exact) if dd.exact else np.zeros(N, bool)
    url_dup = first_occurrence_dups(url, url_ok) if dd.url else np.zeros(N, bool)
    mh_dup = np.zeros(N, bool)
    cluster_size = np.ones(N, np.int64)
    n_pairs = 0
    if dd.minhash.enabled and N:
        parts = [np.load(d / f"pairs-{p:04d}.npy") for p in range(dd.minhash.partitions)]
        pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        if len(pairs) and dd.minhash.verify_threshold > 0:
            sig = np.concatenate(
                [np.load(d / f"{shard(i)}.sig.npy", mmap_mode="r") for i in range(run.n)]
            )
            sim = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)
            pairs = pairs[sim >= dd.minhash.verify_threshold]
        n_pairs = int(len(pairs))
        labels = components(N, pairs)
        mh_dup = duplicates_from_labels(labels)
        cluster_size = np.bincount(labels)[labels]
    stats = {
        "docs": N,
        "exact_duplicates": int(exact_dup.sum()),
        "url_duplicates": int(url_dup.sum()),
        "minhash_duplicates": int(mh_dup.sum()),
        "minhash_pairs": n_pairs,
        "minhash_clusters": int(((cluster_size > 1) & ~mh_dup).sum()),
    }
    for i in range(run.n):
        with gzip.open(d / f"{shard(i)}.ids.json.gz", "rt") as fh:
            ids = json.load(fh)
        lengths = hashes[i]["lengths"]
        with AtomicJsonlWriter(run.p("attributes", "dedup", shard(i) + ".jsonl.gz")) as w:
            for j, (did, src) in enumerate(ids):
                g = offsets[i] + j
                n = int(lengths[j])
                a = {}
                if exact_dup[g]:
                    a["dedup__exact__duplicate"] = [[0, n, 1.0]]
                if url_dup[g]:
                    a["dedup__url__duplicate"] = [[0, n, 1.0]]
                if mh_dup[g]:
                    a["dedup__minhash__duplicate"] = [[0, n, 1.0]]
                if cluster_size[g] > 1:
                    a["dedup__minhash__cluster_size"] = [[0, n, float(cluster_size[g])]]
                w.write({"id": did, "source": src, "attributes": a})
                prog(1, 0)
    return stats


@stage(
    "dedup-paragraph",
    "dedup",
    count=_one,
    after=("ingest",),
    config=lambda run, cfg: cfg["dedup"],
    enabled=lambda cfg: cfg.dedup.enabled and cfg.dedup.paragraph.enabled,
)
def task_dedup_paragraph(run: Run, _: int, prog) -> dict:
    """Dolma-style paragraph dedup: newline-separated paragraphs through one Bloom filter, in shard order."""

    pc = run.cfg.dedup.paragraph
    bits, k = C.bloom_size(pc.expected_paragraphs, pc.false_positive_rate)
    need = bits // 8
    avail = psutil.virtual_memory().available
    msg = (
        f"paragraph Bloom filter: {pc.expected_paragraphs:,} expected paragraphs at false-positive rate "
        f"{pc.false_positive_rate:g} -> {bits:,} bits ({need / 2**20:,.1f} MB), {k} hashes; "
        f"{avail / 2**20:,.0f} MB available"
    )
    print(msg, file=sys.stderr)
    if need > pc.max_memory_mb * 2**20 or need > 0.8 * avail:
        raise MemoryError(
            msg + "; does not fit: lower dedup.paragraph.expected_paragraphs, raise "
            "dedup.paragraph.false_positive_rate or run on a machine with more memory"
        )
    bloom = BloomFilter(bits, k)
    total = dup = 0
    for i in range(run.n):
        with AtomicJsonlWriter(run.p("attributes", "paragraph", shard(i) + ".jsonl.gz")) as w:
            for doc in read_docs(run.p("documents", shard(i) + ".jsonl.gz")):
                t = doc["text"]
                spans, keys, pos = [], [], 0
                for line in t.split("\n"):
                    s, e = pos, pos + len(line)
                    pos = e + 1
                    if len(line.strip()) >= pc.min_paragraph_chars:
                        spans.append((s, min(e + 1, len(t))))
                        keys.append(line.strip().encode("utf-8", "surrogatepass"))
                present = bloom.check_and_add(keys)
                total += len(keys)
                hit = [[s, e, 1.0] for (s, e), p in zip(spans, present) if p]
                dup += len(hit)
                w.write(
                    {
                        "id": doc["id"],
                        "source": doc["source"],
                        "attributes": {"dedup__paragraph__duplicate": hit} if hit else {},
                    }
                )
                prog(1, len(t))
    fill = float(np.unpackbits(bloom.bits).mean()) if bits <= 2**33 else -1.0
    return {
        "paragraphs": total,
        "duplicate_paragraphs": dup,
        "bloom_bits": bits,
        "bloom_hashes": k,
        "bloom_mb": need / 2**20,
        "bloom_fill": fill,
        "expected_fp_rate_at_fill": fill**k if fill >= 0 else None,
    }


# ---------------------------------------------------------------- mix


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
    _clear(str(run.p("mixed", f"{shard(i)}-*.jsonl.gz")))
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
                            _crash_hook("mix", i)
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


# ---------------------------------------------------------------- tokenizer


def tokenizer_path(run: Run) -> str:
    return run.cfg.tokenizer.path or str(run.p("tokenizer", "tokenizer.json"))


def mixed_files(run: Run, i: int | None = None) -> list[str]:
    pat = f"{shard(i)}-*.jsonl.gz" if i is not None else "part-*.jsonl.gz"
    return sorted(glob.glob(str(run.p("mixed", pat))))


@stage(
    "tokenizer-train",
    count=_one,
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


@stage(
    "tokenize",
    after=("tokenizer-train",),
    config=lambda run, cfg: [cfg["tokenizer"], cfg["output"]["write_npy"]],
    before_fork=megatron_indexed,  # import megatron-core (~5 s) once, before the pool forks
)
def task_tokenize(run: Run, i: int, prog) -> dict:
    tc = run.cfg.tokenizer
    tok = Tok(tokenizer_path(run), tc.eos, need_eos=tc.add_eos)
    out_dir = run.p("tokens")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(str(out_dir / f"{shard(i)}-*"))
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
                _crash_hook("tokenize", i)
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


@stage("tokens-metadata", "tokenize", count=_one, after=("tokenize",), counts_documents=False)
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


@stage(
    "report",
    count=_one,
    after=("tokens-metadata",),
    config=lambda run, cfg: os.urandom(8).hex(),  # always re-run: it reads every marker
)
def task_report(run: Run, _: int, prog) -> dict:
    rep = build_report(run)
    return {"kept_docs": rep["kept_docs"], "tokens": rep["tokens"]}
