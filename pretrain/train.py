"""`pretrain train`: the command line around `pretrain.trainer.Trainer`.

The loop itself, its callbacks and what a run folder holds are described in pretrain/trainer.py
and pretrain/callbacks.py; this module parses the command, prints the plan of a dry run, and
reports how the run ended.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from configcore import ConfigError
from parallel.env import discover_env
from pretrain.callbacks import Callback
from pretrain.config import RunConfig, compose_config
from pretrain.series import series_steps
from pretrain.spikes import SpikeStop
from pretrain.trainer import Trainer, TrainingDiverged, describe_plan, plan

__all__ = ["Trainer", "TrainingDiverged", "describe_plan", "main_train", "plan", "train"]


def train(
    run: RunConfig,
    callbacks: Sequence[Callback] = (),
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) training: `Trainer(run, callbacks, log).fit()`. Returns step, losses
    ({step: loss}), skipped, checkpoint_stall_s and preempted_at."""
    return Trainer(run, callbacks, log).fit()


def main_train(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="pretrain train",
        description="Train (or resume with resume=auto) a model from a Hydra config. Works as one "
        "process and under torchrun / srun / mpirun with the same arguments.",
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, print the plan and the checkpoint series, and exit",
    )
    ap.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. model=pythia-160m trainer.max_steps=100"
    )
    args = ap.parse_intermixed_args(argv)
    run = compose_config(args.overrides)
    layout = plan(run, discover_env().world_size)  # a bad layout fails before any process group
    if args.dry_run or run.trainer.dry_run:
        print(describe_plan(run, layout))
        steps = series_steps(run.checkpoint.series, run.trainer.max_steps)
        print(f"series steps ({len(steps)}): {' '.join(map(str, steps))}")
        return 0
    if not run.data.paths:
        raise ConfigError(
            "data.paths is empty; give tokenized shards, e.g. "
            "data.paths=[data/tokens/train] (written by `pretrain data`)"
        )
    try:
        out = train(run)
    except (TrainingDiverged, SpikeStop) as err:
        print(f"pretrain train: {err}", file=sys.stderr)
        return 1
    if out.get("preempted_at") is not None:  # not "done": the run continues after a requeue
        print(
            f"stopped: step {out['step']} of {run.trainer.max_steps} (preemption; full checkpoint "
            f"written), run folder {run.run_dir}; resume=auto continues it"
        )
    else:
        print(f"done: step {out['step']}, run folder {run.run_dir}")
    return 0
