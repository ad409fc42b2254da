"""One task of one stage, in its own process: `python -m data_pipeline.worker DIR STAGE INDEX`.

This is what each Slurm array element runs. It reloads the resolved config and the plan saved under
DIR/_work, skips the task if its completion marker is there, and prints progress lines to stderr
(the Slurm log) instead of a bar.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .executor import run_task
from .stages import STAGES, load_run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3:
        print("usage: python -m data_pipeline.worker OUTPUT_DIR STAGE INDEX", file=sys.stderr)
        return 2
    out, stage, index = argv[0], argv[1], int(argv[2])
    if stage not in STAGES:
        print(f"worker: unknown stage {stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    job = load_run(Path(out).resolve()).job(stage)

    t0 = time.monotonic()
    tot = [0, 0]

    def sink(d: int, b: int) -> None:
        tot[0] += d
        tot[1] += b
        dt = max(1e-6, time.monotonic() - t0)
        print(
            f"[{stage} {index}] {tot[0]} docs, {tot[0] / dt:.1f} docs/s, {tot[1] / dt / 1e6:.2f} MB/s",
            file=sys.stderr,
            flush=True,
        )

    stats = run_task(out, job.spec, job.task, index, sink)
    print(
        f"[{stage} {index}] done in {time.monotonic() - t0:.1f}s: "
        + ", ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, (int, float, str))),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
