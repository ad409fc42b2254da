"""What every stage shares: the run (config, input plan, stage specs), the stage registry and the
paths of the output folder layout (see __init__.py).

Each stage is one task function registered with `@stage(...)` in its module of this package; the
registration order is the run order (the order __init__.py imports the modules), and the registry
(`STAGES`) is the only list of stage names: the CLI's words, the fingerprints, the executors' jobs
and the Slurm worker read it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

from .. import config as C
from ..executor import Progress, StageJob, StageSpec, read_marker
from ..io import input_size, split_input


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
            preload=st.preload,
            total=self.documents_after_ingest if st.counts_documents else None,
        )


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


def remove_files(pattern: str) -> None:
    for p in glob.glob(pattern):
        os.remove(p)


def crash_hook(stage: str, i: int) -> None:
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
    # modules its tasks import, imported once before a pool's workers start
    preload: tuple[str, ...]


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
    preload: tuple[str, ...] = (),
) -> Callable[[StageTask], StageTask]:
    """Register a stage's task function. Adding a stage is one module with a decorated function,
    imported in __init__.py at its place in the order: the CLI word, the run order, the
    fingerprints and the executors all read this registry."""

    def register(fn: StageTask) -> StageTask:
        if name in STAGES:
            raise ValueError(f"stage {name!r} is registered twice")
        unknown = [a for a in after if a not in STAGES]
        if unknown:
            raise ValueError(f"stage {name!r} reads {unknown}, which are not registered before it")
        STAGES[name] = Stage(
            name, group or name, fn, count, after, config, enabled, counts_documents, preload
        )
        return fn

    return register


def stage_groups() -> list[str]:
    """The user-facing stage names, in pipeline order (`pretrain data GROUP`)."""
    return list(dict.fromkeys(st.group for st in STAGES.values()))


def one_task(run: Run) -> int:
    return 1


def dedup_enabled(cfg: C.PipelineConfig) -> bool:
    return cfg.dedup.enabled


def tokenizer_path(run: Run) -> str:
    return run.cfg.tokenizer.path or str(run.p("tokenizer", "tokenizer.json"))


def mixed_files(run: Run, i: int | None = None) -> list[str]:
    pat = f"{shard(i)}-*.jsonl.gz" if i is not None else "part-*.jsonl.gz"
    return sorted(glob.glob(str(run.p("mixed", pat))))
