"""The registry of learning-rate schedules: the one place an LR schedule's name is written.

Each entry maps the config value (`schedule.name=...`, the `schedule:` section of a run config,
`LRScheduleConfig`) to the function that gives the learning rate after warmup. Warmup is the same
for every schedule (linear from 0 to optim.lr over schedule.warmup_steps) and is applied by
`pretrain.optim.lr_at`, which every caller uses.

Adding a schedule is one `register_lr_schedule(LRSchedule(...))` call below (see
docs/contributing.md): the config's list of valid values (`LRScheduleConfig.validate`) and
`lr_at` read this registry. "Schedule" means two other things in this project, kept apart by name:
the pipeline schedules of parallel/pipeline_schedules.py (`PipelineSchedule`, `parallel.pp_schedule`) and
the checkpoint series of pretrain/series.py (`checkpoint.series`, `pretrain schedule`).

No torch here: the config module reads the names before anything is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# (step, peak lr, floor lr = lr * min_lr_ratio, the schedule section, max_steps) -> lr, for a
# 1-based optimizer step past the warmup. The section is an LRScheduleConfig (or anything with its
# fields: warmup_steps, min_lr_ratio, decay_fraction, decay_steps).
AfterWarmup = Callable[[int, float, float, Any, int], float]


@dataclass(frozen=True)
class LRSchedule:
    name: str  # the config value, e.g. "cosine"
    after_warmup: AfterWarmup
    summary: str = ""


LR_SCHEDULES: dict[str, LRSchedule] = {}


def register_lr_schedule(schedule: LRSchedule) -> LRSchedule:
    if schedule.name in LR_SCHEDULES:
        raise ValueError(f"LR schedule {schedule.name!r} is already registered")
    LR_SCHEDULES[schedule.name] = schedule
    return schedule


def lr_schedule_names() -> tuple[str, ...]:
    return tuple(LR_SCHEDULES)


def _decay_progress(step: int, scfg: Any, max_steps: int) -> float:
    """Share of the decay done at `step` (cosine, linear): over decay_steps after the warmup,
    by default the rest of the run."""
    warm = scfg.warmup_steps
    span = scfg.decay_steps or max(1, max_steps - warm)
    return min(1.0, max(0.0, (step - warm) / span))


def _cosine(step: int, lr: float, lo: float, scfg: Any, max_steps: int) -> float:
    p = _decay_progress(step, scfg, max_steps)
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


def _linear(step: int, lr: float, lo: float, scfg: Any, max_steps: int) -> float:
    return lr - (lr - lo) * _decay_progress(step, scfg, max_steps)


def _constant(step: int, lr: float, lo: float, scfg: Any, max_steps: int) -> float:
    del step, lo, scfg, max_steps
    return lr


def _wsd(step: int, lr: float, lo: float, scfg: Any, max_steps: int) -> float:
    """Warmup-stable-decay (Hu et al. 2024): lr until the last decay_fraction of the run, then
    linear to the floor."""
    decay_len = max(1, round(scfg.decay_fraction * max_steps))
    start = max_steps - decay_len
    if step <= start:
        return lr
    p = min(1.0, (step - start) / decay_len)
    return lr - (lr - lo) * p


register_lr_schedule(
    LRSchedule("cosine", _cosine, summary="half a cosine from lr to lr*min_lr_ratio")
)
register_lr_schedule(LRSchedule("linear", _linear, summary="a line from lr to lr*min_lr_ratio"))
register_lr_schedule(LRSchedule("constant", _constant, summary="lr after the warmup"))
register_lr_schedule(
    LRSchedule(
        "wsd",
        _wsd,
        summary="warmup-stable-decay: lr, then linear to lr*min_lr_ratio over the last "
        "decay_fraction of the run",
    )
)
