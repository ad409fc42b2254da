"""`pretrain data ...`: the Dolma-style data pipeline from the command line.

    pretrain data [STAGE] [pipeline=NAME] input.paths=[GLOB,...] output.dir=DIR [key=value ...]

STAGE is run (default: every stage) or one of {stages};
`stage=NAME` as an override does the same. Other words:

    pretrain data list                       the bundled pipelines (configs/pipeline/*.yaml)
    pretrain data config [pipeline=NAME] ... print the resolved, validated config and exit

Configuration errors are one line naming the problem and the fix, exit status 2, before any work.
"""

from __future__ import annotations

import json
import sys
import time

from configcore import ConfigError

from .config import compose_pipeline, pipeline_names, to_yaml
from .executor import LocalExecutor, SlurmExecutor, TaskFailed
from .stages import prepare_run, stage_groups

WORDS = {"run": "all", **{s: s for s in stage_groups()}}


def _split(argv: list[str]) -> tuple[str, str, list[str]]:
    args = list(argv)
    stage = "all"
    if args and "=" not in args[0] and args[0] in WORDS:
        stage = WORDS[args.pop(0)]
    pipeline = "dolma"
    rest = []
    for a in args:
        if a.startswith("pipeline="):
            pipeline = a.split("=", 1)[1]
        else:
            rest.append(a)
    if stage != "all" and not any(a.startswith("stage=") for a in rest):
        rest.append(f"stage={stage}")
    return stage, pipeline, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(__doc__.format(stages=", ".join(stage_groups())))
        return 0
    if argv and argv[0] == "list":
        for name in pipeline_names():
            print(name)
        return 0
    show_config = bool(argv) and argv[0] == "config"
    if show_config:
        argv = argv[1:]
    for a in argv:
        if "=" not in a and not a.startswith("-") and a not in WORDS:
            print(
                f"pretrain data: unknown word {a!r}; use one of {', '.join(WORDS)}, list, config, "
                "or key=value overrides",
                file=sys.stderr,
            )
            return 2
    _, pipeline, overrides = _split(argv)
    try:
        cfg = compose_pipeline(overrides, pipeline)
    except ConfigError as err:
        print(f"pretrain data: {err}", file=sys.stderr)
        return 2
    if cfg.stage != "all" and cfg.stage not in stage_groups():
        print(
            f"pretrain data: stage={cfg.stage!r} is not a stage; use all or one of "
            f"{', '.join(stage_groups())}",
            file=sys.stderr,
        )
        return 2
    if show_config:
        print(to_yaml(cfg), end="")
        return 0
    return run_pipeline(cfg)


def run_pipeline(cfg) -> int:
    t0 = time.time()
    run = prepare_run(cfg)
    specs = run.selected(cfg.stage)
    print(
        f"pretrain data: pipeline {cfg.name}, {len(set(run.inputs))} input file(s) in {run.n} "
        f"shard(s) -> {run.dir}; stages: " + ", ".join(f"{s.name}[{s.n}]" for s in specs),
        file=sys.stderr,
    )
    try:
        if cfg.executor.type == "slurm":
            SlurmExecutor().run(run, specs)
            if not cfg.executor.slurm.wait:
                print(
                    "submitted; the report will be in report.json when the last job ends",
                    file=sys.stderr,
                )
                return 0
        else:
            ex = LocalExecutor(cfg.executor.workers, cfg.executor.progress)
            ex.run(run.dir, [run.job(s.name) for s in specs])
    except (TaskFailed, MemoryError) as err:
        print(f"pretrain data: {err}", file=sys.stderr)
        return 1
    if any(s.name == "report" for s in specs):
        print((run.dir / "report.txt").read_text())
        rep = json.loads((run.dir / "report.json").read_text())
        print(f"report: {run.dir / 'report.json'} (chart: report.png); {time.time() - t0:.1f}s")
        if rep["accounting"]["balanced"] is False:
            print("pretrain data: accounting does not balance; see report.json", file=sys.stderr)
            return 1
    else:
        print(
            f"done: {', '.join(s.name for s in specs)} in {time.time() - t0:.1f}s", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
