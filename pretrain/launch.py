"""`pretrain launch`: render slurm/train.sbatch for a run, check the layout, submit it.

    pretrain launch model=llama3.1-8b parallel.tp=8 run_dir=/shared/runs/x --nodes 4 --gpus-per-node 8
    pretrain launch ... --nodes 2 --procs-per-node 2 --dry-run      # CPU cluster; print, do not submit

The parallel layout is checked for nodes x processes-per-node ranks with the engine's own
`parallel.layout.resolve_layout` before anything is submitted, so a layout that cannot run is
rejected on the login node (with a valid alternative), not after hours in the queue. The rendered
script is kept in RUN_DIR/slurm/ and the job's log goes to RUN_DIR/logs/train-JOBID.out.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from configcore import ConfigError
from parallel.layout import resolve_layout
from pretrain.config import compose_config
from pretrain.train import describe_plan

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "slurm" / "train.sbatch"
HEADER_END = "# ---- end of #SBATCH header"
SETTINGS_MARK = "#@SETTINGS@"
LAUNCHERS = ("srun", "torchrun")


@dataclass
class LaunchSpec:
    overrides: list[str]
    nodes: int
    gpus_per_node: int = 0
    procs_per_node: int = 0  # 0: one process per GPU
    partition: str = ""
    time: str = "01:00:00"
    account: str = ""
    job_name: str = ""
    launcher: str = "srun"
    cpus_per_task: int = 0  # 0: let Slurm decide
    signal_seconds: int = 300  # USR1 this long before the time limit: enough for one step + a save
    python: str = ""  # interpreter on the compute nodes; empty: this one
    extra_sbatch: list[str] = field(default_factory=list)

    @property
    def procs(self) -> int:
        return self.procs_per_node or self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs


def _with_resume(overrides: list[str]) -> list[str]:
    """A requeued job re-runs the same command line: it must pick up the latest checkpoint, so
    resume=auto unless the user chose something."""
    if any(o.split("=", 1)[0].lstrip("+~") == "resume" for o in overrides):
        return list(overrides)
    return [*overrides, "resume=auto"]


def _with_run_dir(overrides: list[str], run_dir: Path) -> list[str]:
    """Pin run_dir to an absolute path: the job may start in another folder than the login shell."""
    out = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "run_dir"]
    return [*out, f"run_dir={run_dir}"]


def check(spec: LaunchSpec):
    """Compose the run config and validate its layout for nodes x procs ranks, exactly as the
    engine will (`resolve_layout` is what `pretrain train` calls before creating any process group)."""
    if spec.nodes < 1:
        raise ConfigError(f"--nodes={spec.nodes}: must be at least 1")
    if spec.procs < 1:
        raise ConfigError(
            "give --gpus-per-node G (GPU clusters) or --procs-per-node K (CPU clusters): "
            "the number of training processes on each node"
        )
    if spec.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher={spec.launcher}: choose one of {', '.join(LAUNCHERS)}")
    if spec.gpus_per_node and spec.procs_per_node and spec.procs_per_node != spec.gpus_per_node:
        raise ConfigError(
            f"--procs-per-node={spec.procs_per_node} differs from --gpus-per-node="
            f"{spec.gpus_per_node}: training runs one process per GPU; drop one of them"
        )
    if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}|\d+|UNLIMITED|INFINITE", spec.time):
        raise ConfigError(f"--time={spec.time!r}: use Slurm's format, e.g. 04:00:00 or 2-00:00:00")
    run = compose_config(spec.overrides)
    t = run.trainer
    layout = resolve_layout(
        run.parallel, spec.world_size, run.model, t.global_batch_size, t.micro_batch_size, t.seq_len
    )
    if run.eval.downstream.tasks:  # an unknown lm-eval task fails here, not in the queued job
        from pretrain.analysis.downstream import parse_tasks, task_manager

        d = run.eval.downstream
        task_manager(
            parse_tasks(",".join(d.tasks)), d.include_path or None, "eval.downstream.include_path"
        )
    if t.device == "cuda" or run.parallel.device == "cuda":
        if not spec.gpus_per_node:
            raise ConfigError(
                "device=cuda but no --gpus-per-node: ask Slurm for the GPUs, e.g. --gpus-per-node 8"
            )
    return run, layout


def _time_seconds(time: str) -> int | None:
    """Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", time)
    if not m:
        return None
    days, parts = m.group(1), [int(x) for x in m.groups()[1:] if x is not None]
    if days is not None:
        h, mi, s = (parts + [0, 0])[:3]
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def _sbatch_options(spec: LaunchSpec, run, run_dir: Path) -> list[str]:
    """The #SBATCH options of the job: shape, time, the USR1 warning, logs in the run folder."""
    tasks_per_node = spec.procs if spec.launcher == "srun" else 1
    logs = run_dir / "logs"
    name = spec.job_name or f"pretrain-{run.model.name}"
    sb = [
        f"--job-name={name}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        f"--time={spec.time}",
        f"--signal=B:USR1@{spec.signal_seconds}",
        "--requeue",
        "--open-mode=append",
        f"--output={logs}/train-%j.out",
        f"--chdir={Path.cwd()}",
    ]
    if spec.gpus_per_node:
        sb.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.cpus_per_task:
        sb.append(
            f"--cpus-per-task={spec.cpus_per_task * (spec.procs if spec.launcher == 'torchrun' else 1)}"
        )
    if spec.partition:
        sb.append(f"--partition={spec.partition}")
    if spec.account:
        sb.append(f"--account={spec.account}")
    sb += [a if a.startswith("-") else f"--{a}" for a in spec.extra_sbatch]
    return sb


def render(spec: LaunchSpec, run=None, layout=None, template: Path = TEMPLATE) -> tuple[str, Path]:
    """The sbatch script for this launch, and the run folder."""
    if run is None:
        run, layout = check(spec)
    run_dir = Path(run.run_dir).expanduser().resolve()
    secs = _time_seconds(spec.time)
    if secs is not None and spec.signal_seconds >= secs:
        raise ConfigError(
            f"--signal-seconds={spec.signal_seconds} is not shorter than --time="
            f"{spec.time}: the job would be told to stop at once; lower it"
        )
    text = template.read_text()
    if HEADER_END not in text or SETTINGS_MARK not in text:
        raise ConfigError(
            f"{template} lacks the markers {HEADER_END!r} / {SETTINGS_MARK!r} that "
            "pretrain launch fills in; restore it from the repository"
        )
    head, _, rest = text.partition(HEADER_END)
    head_lines = head.splitlines()
    first_sbatch = next(i for i, l in enumerate(head_lines) if l.startswith("#SBATCH"))
    comments = head_lines[:first_sbatch]

    sb = _sbatch_options(spec, run, run_dir)

    overrides = _with_run_dir(_with_resume(spec.overrides), run_dir)
    settings = [
        f"# rendered by `pretrain launch` at {datetime.now().isoformat(timespec='seconds')}",
        f"# layout: {layout.describe()}",
        f"LAUNCHER={spec.launcher}",
        f"NPROC_PER_NODE={spec.procs}",
        f"PRETRAIN_REPO={shlex.quote(str(REPO))}",
        f"PYTHON={shlex.quote(spec.python or sys.executable)}",
        f"RUN_DIR={shlex.quote(str(run_dir))}",
        "TRAIN_ARGS=(" + " ".join(shlex.quote(o) for o in overrides) + ")",
    ]
    script = "\n".join(
        [*comments, *[f"#SBATCH {a}" for a in sb], HEADER_END + rest.split("\n", 1)[0]]
    )
    script += "\n" + rest.split("\n", 1)[1].replace(SETTINGS_MARK, "\n".join(settings))
    return script, run_dir


def render_array(
    spec: LaunchSpec,
    tasks: list[list[str]],
    out_dir: Path,
    max_parallel: int = 0,
    template: Path = TEMPLATE,
) -> str:
    """One sbatch script for a Slurm job array: array task K trains `tasks[K]` (a list of
    overrides naming its own run_dir), with the same shape, USR1 warning and requeue as a single
    launch (`scontrol requeue` of an array task requeues that task alone, under its own job id).
    The first task's config and layout are checked here, before anything is submitted.
    Logs: OUT_DIR/logs/task-<array index>-<array job id>.out."""
    if not tasks:
        raise ConfigError("a job array needs at least one task")
    # The tasks differ only in data and run folder (a sweep): the first one's config and layout
    # are checked as a single launch's would be; composing hundreds of configs would take minutes.
    first = LaunchSpec(**{**spec.__dict__, "overrides": tasks[0]})
    script, _ = render(first, *check(first), template=template)
    run_dirs = []
    for t in tasks:
        given = [o.split("=", 1)[1] for o in t if o.split("=", 1)[0].lstrip("+~") == "run_dir"]
        if not given:
            raise ConfigError("every task of a job array needs its own run_dir=... override")
        run_dirs.append(Path(given[-1]).expanduser().resolve())
    if len(set(run_dirs)) != len(run_dirs):
        raise ConfigError("two tasks of the job array share a run_dir; give each its own")
    logs = Path(out_dir).expanduser().resolve() / "logs"
    throttle = f"%{max_parallel}" if max_parallel else ""
    lines = []
    for line in script.splitlines():
        if line.startswith("#SBATCH --output="):
            lines.append(f"#SBATCH --output={logs}/task-%a-%A.out")
            lines.append(f"#SBATCH --array=0-{len(tasks) - 1}{throttle}")
        elif line.startswith("RUN_DIR="):
            cases = [
                'case "${SLURM_ARRAY_TASK_ID:?this script is a job array: submit it with sbatch}" in'
            ]
            for k, (t, run_dir) in enumerate(zip(tasks, run_dirs)):
                ov = _with_run_dir(_with_resume(t), run_dir)
                args = " ".join(shlex.quote(o) for o in ov)
                cases.append(f"  {k}) RUN_DIR={shlex.quote(str(run_dir))}; TRAIN_ARGS=({args}) ;;")
            cases.append('  *) echo "no task $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;')
            cases.append("esac")
            lines += cases
        elif line.startswith("TRAIN_ARGS=("):
            continue  # set per task above
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def submit(script: str, run_dir: Path, sbatch: str = "sbatch") -> str:
    if shutil.which(sbatch) is None:
        raise ConfigError(
            f"{sbatch} not found: run pretrain launch on a Slurm login node, or use "
            "--dry-run to print the script"
        )
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    sdir = run_dir / "slurm"
    sdir.mkdir(parents=True, exist_ok=True)
    path = sdir / f"train-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.sbatch"
    path.write_text(script)
    res = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(
            f"sbatch refused the job ({res.returncode}): {res.stderr.strip()}; the script is {path}"
        )
    job = res.stdout.strip().split(";")[0]
    return job


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pretrain launch",
        description="Render slurm/train.sbatch for a run, validate the parallel layout for "
        "nodes x processes, and submit it (or print it with --dry-run). Overrides are the same "
        "Hydra key=value ones as `pretrain train`; resume=auto is added so a requeued job resumes.",
    )
    ap.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. model=pythia-160m parallel.tp=2"
    )
    ap.add_argument("--nodes", "-N", type=int, required=True)
    ap.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (one rank per GPU)")
    ap.add_argument(
        "--procs-per-node",
        type=int,
        default=0,
        help="processes per node on CPU-only clusters (and tests); default: --gpus-per-node",
    )
    ap.add_argument("--partition", "-p", default="")
    ap.add_argument("--time", "-t", default="01:00:00", help="time limit (default 01:00:00)")
    ap.add_argument("--account", "-A", default="")
    ap.add_argument("--job-name", default="")
    ap.add_argument(
        "--launcher",
        default="srun",
        choices=LAUNCHERS,
        help="srun: one task per GPU; torchrun: one torchrun per node (c10d rendezvous)",
    )
    ap.add_argument("--cpus-per-task", type=int, default=0, help="CPU cores per rank")
    ap.add_argument(
        "--signal-seconds",
        type=int,
        default=300,
        help="SIGUSR1 this many seconds before the time limit: checkpoint and requeue",
    )
    ap.add_argument("--python", default="", help="Python on the compute nodes (default: this one)")
    ap.add_argument(
        "--sbatch",
        dest="extra_sbatch",
        action="append",
        default=[],
        help="an extra #SBATCH option, e.g. --sbatch=--exclusive (repeatable)",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    return ap


def _spec(args: argparse.Namespace) -> LaunchSpec:
    return LaunchSpec(
        overrides=args.overrides,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        procs_per_node=args.procs_per_node,
        partition=args.partition,
        time=args.time,
        account=args.account,
        job_name=args.job_name,
        launcher=args.launcher,
        cpus_per_task=args.cpus_per_task,
        signal_seconds=args.signal_seconds,
        python=args.python,
        extra_sbatch=args.extra_sbatch,
    )


NO_DATA = (
    "data.paths is empty; give tokenized shards on a filesystem every node "
    "sees, e.g. data.paths=[/shared/tokens/train] (written by `pretrain data`)"
)


def _print_dry_run(spec: LaunchSpec, run, layout, script: str) -> None:
    """A dry run is for checking a plan (a recipe on N nodes) before the data exists."""
    print(script, end="")
    print(
        "\n".join(f"# {line}" for line in describe_plan(run, layout).splitlines()),
        file=sys.stderr,
    )
    if not run.data.paths:
        print(f"# note: {NO_DATA}", file=sys.stderr)
    print(
        f"# dry run: {spec.nodes} nodes x {spec.procs} = {spec.world_size} ranks; layout "
        f"{layout.describe()}; nothing submitted",
        file=sys.stderr,
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    spec = _spec(args)
    run, layout = check(spec)
    if not run.data.paths and not args.dry_run:
        raise ConfigError(NO_DATA)
    script, run_dir = render(spec, run, layout)
    if args.dry_run:
        _print_dry_run(spec, run, layout, script)
        return 0
    try:
        job = submit(script, run_dir)
    except RuntimeError as err:
        print(f"pretrain launch: {err}", file=sys.stderr)
        return 1
    log = run_dir / "logs" / f"train-{job}.out"
    print(f"submitted job {job}: {spec.nodes} nodes x {spec.procs} ranks ({layout.describe()})")
    print(f"log: {log}")
    print(f"metrics: {run_dir / 'metrics.jsonl'}")
    print(f"watch: squeue -j {job}; tail -f {log}")
    return 0
