"""Executors: run a stage's tasks locally (process pool + progress bar) or as Slurm job arrays.

A task writes its outputs under temporary names, renames them, and only then writes its completion
marker `DIR/_work/markers/<stage>/<index>.json` (holding its statistics and the fingerprint of the
config it ran with). A rerun skips tasks whose marker exists with the same fingerprint and redoes the
rest, so a killed run resumes where it stopped, and changing only the mixer's rules re-runs only the
mixer and what follows it.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import queue as queue_mod
import shlex
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm  # progress bar with rate and ETA, works in logs and terminals


class TaskFailed(RuntimeError):
    pass


@dataclass
class StageSpec:
    name: str  # internal stage, e.g. dedup-hash
    group: str  # the user-facing stage, e.g. dedup
    n: int
    fingerprint: str
    total: int = 0  # progress total in docs (0: unknown)


def marker_path(out_dir: Path, stage: str, i: int) -> Path:
    return out_dir / "_work" / "markers" / stage / f"{i:05d}.json"


def read_marker(out_dir: Path, stage: str, i: int) -> dict | None:
    p = marker_path(out_dir, stage, i)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(out_dir: Path, spec: StageSpec, i: int) -> bool:
    m = read_marker(out_dir, spec.name, i)
    return m is not None and m.get("fingerprint") == spec.fingerprint


def write_marker(
    out_dir: Path, stage: str, i: int, fingerprint: str, stats: dict, timing: dict | None = None
) -> None:
    """`timing`: started (epoch s), cpu_s (this process's CPU time in the task), bytes and docs
    (what the task reported as progress): the report's per-stage wall time and MB/s per core."""
    p = marker_path(out_dir, stage, i)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    marker = {"fingerprint": fingerprint, "stats": stats, "finished": time.time(), **(timing or {})}
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, p)


class Progress:
    """Throttled progress reporting from inside a task: (docs, bytes) increments."""

    def __init__(self, sink: Callable[[int, int], None], every_s: float = 0.2):
        self.sink, self.every = sink, every_s
        self.docs = self.bytes = 0
        self.total_docs = self.total_bytes = 0
        self.last = time.monotonic()

    def __call__(self, docs: int = 1, nbytes: int = 0) -> None:
        self.docs += docs
        self.bytes += nbytes
        self.total_docs += docs
        self.total_bytes += nbytes
        now = time.monotonic()
        if now - self.last >= self.every:
            self.flush()
            self.last = now

    def flush(self) -> None:
        if self.docs or self.bytes:
            self.sink(self.docs, self.bytes)
            self.docs = self.bytes = 0


TaskFn = Callable[[int, Progress], dict]  # task(index, progress) -> statistics for the marker


@dataclass
class StageJob:
    """What an executor runs for one stage: the executor knows no stage by name, only this."""

    spec: StageSpec
    task: TaskFn  # picklable (a module-level function, or a functools.partial of one)
    preload: tuple[str, ...] = ()  # modules its tasks import: once per pool, before its workers
    total: Callable[[], int] | None = None  # progress total in documents, asked when it starts


def run_task(out_dir: str, spec: StageSpec, task: TaskFn, i: int, sink) -> dict:
    """Run task i of a stage in this process (the pool, the Slurm worker and inline runs), unless
    its completion marker says it is done with this fingerprint."""
    out = Path(out_dir)
    if is_done(out, spec, i):
        return read_marker(out, spec.name, i)["stats"]
    prog = Progress(sink)
    started, cpu0 = time.time(), time.process_time()
    stats = task(i, prog)
    prog.flush()
    timing = {
        "started": started,
        "cpu_s": time.process_time() - cpu0,
        "bytes": prog.total_bytes,
        "docs": prog.total_docs,
    }
    write_marker(out, spec.name, i, spec.fingerprint, stats, timing)
    return stats


_QUEUE = None


def _init_worker(q, environ: dict[str, str]) -> None:
    global _QUEUE
    _QUEUE = q
    # a fork-server worker has the environment of the server's start, not of this pool's parent
    os.environ.clear()
    os.environ.update(environ)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def pool_start_method() -> str:
    """How a local pool starts its workers. fork where it is safe: workers start in milliseconds
    and share what this process imported (spawn costs seconds per stage on 2 cores). It is safe
    where no other Python thread runs: a child forked while another thread holds a lock (a
    logger's, an import's, gRPC's) can hang or crash, as pool workers did under pytest-xdist's
    and W&B's threads. (The C libraries' own thread pools, OpenBLAS's and jemalloc's, which every
    process here has, prepare for fork with pthread_atfork.) With other threads the fork server
    forks the workers instead, from a process of its own with one thread (Python 3.14's default
    start method on Linux)."""
    if sys.platform != "linux":
        return "spawn"
    return "fork" if threading.active_count() == 1 else "forkserver"


def _pool_context(preload: tuple[str, ...]):
    """The multiprocessing context of a pool whose tasks import `preload`, imported once: here
    before forking, or in the fork server (if this call starts it; a running server keeps its
    modules and the workers import the rest)."""
    modules = ("data_pipeline.stages", *preload)
    method = pool_start_method()
    ctx = mp.get_context(method)
    if method == "fork":
        for name in modules:
            importlib.import_module(name)
    elif method == "forkserver":
        ctx.set_forkserver_preload(list(modules))
    return ctx


def _guarded_task(out_dir: str, spec: StageSpec, task: TaskFn, i: int, sink) -> dict:
    """run_task, with any failure turned into TaskFailed naming the stage and task (inline and in
    the pool alike)."""
    try:
        return run_task(out_dir, spec, task, i, sink)
    except Exception as err:
        raise TaskFailed(
            f"{spec.name} task {i} failed: {type(err).__name__}: {err}\n{traceback.format_exc()}"
        ) from None


def _pool_task(out_dir: str, spec: StageSpec, task: TaskFn, i: int) -> dict:
    def sink(d: int, b: int) -> None:
        try:
            _QUEUE.put_nowait((d, b))
        except Exception:  # progress is best effort: a full or closed queue must not fail a task
            pass

    return _guarded_task(out_dir, spec, task, i, sink)


class _StageBar(tqdm):
    # no monitor thread (it only re-tunes miniters, which mininterval makes moot): a bar must not
    # add a thread to the process its pool forks from (pool_start_method)
    monitor_interval = 0


def _bar(spec: StageSpec, enabled: bool) -> tqdm:
    return _StageBar(
        total=spec.total or None,
        desc=f"{spec.name:16s}",
        unit="doc",
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=0.5,
        file=sys.stderr,
        bar_format="{desc} {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} docs "
        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]",
    )


class LocalExecutor:
    def __init__(self, workers: int = 0, progress: bool = True):
        self.workers = workers or os.cpu_count() or 1
        self.progress = progress

    def run(self, out_dir: Path, jobs: list[StageJob]) -> None:
        for job in jobs:
            self.run_stage(out_dir, job)

    def run_stage(self, out_dir: Path, job: StageJob) -> None:
        spec = job.spec
        todo = [i for i in range(spec.n) if not is_done(out_dir, spec, i)]
        if not todo:
            print(f"{spec.name}: all {spec.n} tasks complete (skipped)", file=sys.stderr)
            return
        skipped = spec.n - len(todo)
        if job.total is not None:
            spec.total = job.total()
        bar = _bar(spec, self.progress)
        t0 = time.monotonic()
        mb = [0]

        def update(d: int, b: int) -> None:
            mb[0] += b
            bar.update(d)
            dt = max(1e-6, time.monotonic() - t0)
            bar.set_postfix_str(f"{mb[0] / dt / 1e6:.2f} MB/s", refresh=False)

        if skipped:
            bar.write(
                f"{spec.name}: {skipped} of {spec.n} tasks already complete, {len(todo)} to run"
            )
        workers = min(self.workers, len(todo))
        try:
            if workers <= 1:
                for i in todo:
                    _guarded_task(str(out_dir), spec, job.task, i, update)
            else:
                ctx = _pool_context(job.preload)
                q = ctx.Queue()
                with ProcessPoolExecutor(
                    workers,
                    mp_context=ctx,
                    initializer=_init_worker,
                    initargs=(q, dict(os.environ)),
                ) as pool:
                    futs = {
                        pool.submit(_pool_task, str(out_dir), spec, job.task, i): i for i in todo
                    }
                    pending = set(futs)
                    while pending:
                        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                        while True:
                            try:
                                update(*q.get_nowait())
                            except queue_mod.Empty:
                                break
                        for f in done:
                            try:
                                f.result()  # raises TaskFailed with the worker's traceback
                            except BrokenProcessPool:
                                raise TaskFailed(
                                    f"{spec.name} task {futs[f]}: a worker process died (killed, "
                                    "or out of memory); run the same command again to resume "
                                    "from the tasks that completed"
                                ) from None
        finally:
            bar.close()


# ---------------------------------------------------------------- Slurm


def sbatch_script(run, spec: StageSpec, indices: list[int]) -> str:
    sc = run.cfg.executor.slurm
    logs = run.dir / "_work" / "slurm" / "logs"
    py = sc.python or sys.executable
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=dp-{spec.name}",
        f"#SBATCH --array={compress_ranges(indices)}"
        + (f"%{sc.max_parallel}" if sc.max_parallel else ""),
        f"#SBATCH --output={logs}/{spec.name}-%A_%a.out",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={sc.cpus_per_task}",
        f"#SBATCH --time={sc.time}",
    ]
    if sc.partition:
        lines.append(f"#SBATCH --partition={sc.partition}")
    if sc.mem:
        lines.append(f"#SBATCH --mem={sc.mem}")
    lines += [f"#SBATCH {a}" for a in sc.extra_args]
    repo = Path(__file__).resolve().parent.parent
    lines += [
        "set -euo pipefail",
        f"export PYTHONPATH={shlex.quote(str(repo))}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export TOKENIZERS_PARALLELISM=false",
        'echo "node=${SLURMD_NODENAME:-unknown} job=${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-}"',
        f"exec {shlex.quote(py)} -m data_pipeline.worker {shlex.quote(str(run.dir))} {spec.name} $SLURM_ARRAY_TASK_ID",
        "",
    ]
    return "\n".join(lines)


def compress_ranges(idx: list[int]) -> str:
    out, start, prev = [], None, None
    for i in sorted(idx):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(out)


class SlurmExecutor:
    """Each stage is one `sbatch --array` job over its unfinished tasks, depending (afterok) on the
    job of the stage before it; all outputs live under output.dir, which must be on a filesystem the
    nodes share. With slurm.wait the call blocks until the queue drains, then checks every marker."""

    def __init__(self, sbatch: str = "sbatch", squeue: str = "squeue"):
        self.sbatch, self.squeue = sbatch, squeue

    def submit(self, run, specs: list[StageSpec]) -> list[tuple[str, str]]:
        sdir = run.dir / "_work" / "slurm"
        (sdir / "logs").mkdir(parents=True, exist_ok=True)
        prev: str | None = None
        jobs: list[tuple[str, str]] = []
        for spec in specs:
            todo = [i for i in range(spec.n) if not is_done(run.dir, spec, i)]
            if not todo:
                print(f"{spec.name}: all {spec.n} tasks complete (not submitted)", file=sys.stderr)
                continue
            script = sdir / f"{spec.name}.sbatch"
            script.write_text(sbatch_script(run, spec, todo))
            cmd = [self.sbatch, "--parsable"]
            if prev:
                cmd.append(f"--dependency=afterok:{prev}")
            cmd.append(str(script))
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise TaskFailed(f"sbatch failed for stage {spec.name}: {res.stderr.strip()}")
            job = res.stdout.strip().split(";")[0]
            print(
                f"{spec.name}: submitted job array {job} ({len(todo)} tasks"
                + (f", after {prev}" if prev else "")
                + ")",
                file=sys.stderr,
            )
            jobs.append((spec.name, job))
            prev = job
        return jobs

    def wait(
        self,
        run,
        specs: list[StageSpec],
        jobs: list[tuple[str, str]],
        poll_s: float = 2.0,
        timeout_s: float = 0,
    ) -> None:
        ids = ",".join(j for _, j in jobs)
        t0 = time.monotonic()
        total = sum(s.n for s in specs)
        with tqdm(
            total=total,
            desc="slurm tasks",
            unit="task",
            file=sys.stderr,
            mininterval=1.0,
            disable=not run.cfg.executor.progress,
        ) as bar:
            while ids:
                res = subprocess.run(
                    [self.squeue, "-h", "-j", ids, "-o", "%i %t %r"], capture_output=True, text=True
                )
                done = sum(1 for s in specs for i in range(s.n) if is_done(run.dir, s, i))
                bar.n = done
                bar.refresh()
                lines = [l for l in res.stdout.splitlines() if l.strip()]
                if res.returncode == 0 and not lines:
                    break
                # a dependency that can never be met (a stage failed) leaves jobs pending forever
                if lines and all("DependencyNeverSatisfied" in l for l in lines):
                    subprocess.run(["scancel", *[j for _, j in jobs]], capture_output=True)
                    break
                if timeout_s and time.monotonic() - t0 > timeout_s:
                    raise TaskFailed(f"Slurm jobs {ids} still running after {timeout_s}s")
                time.sleep(poll_s)
        missing = [(s.name, i) for s in specs for i in range(s.n) if not is_done(run.dir, s, i)]
        if missing:
            logs = run.dir / "_work" / "slurm" / "logs"
            raise TaskFailed(
                f"{len(missing)} Slurm tasks did not complete, first: {missing[:5]}; see {logs}"
            )

    def run(self, run, specs: list[StageSpec]) -> None:
        jobs = self.submit(run, specs)
        if run.cfg.executor.slurm.wait and jobs:
            self.wait(run, specs, jobs, run.cfg.executor.slurm.poll_s)
