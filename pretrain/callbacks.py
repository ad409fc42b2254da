"""What happens around the training step: callbacks of `pretrain.trainer.Trainer`, and the
state they are given.

The trainer's loop only computes steps; everything it records or decides between steps is a
callback. A callback never sees the Trainer: each hook gets the run's `TrainState`, the one object
that holds what callbacks read (the config, the step and its `StepOutput`, the engine, optimizers,
data loader and order, the checkpoint manager, the metrics logger) and the few requests they
make of the loop (`request_stop`, `rewind`). The hooks are the typed methods of `Callback`,
called in list order on every rank through `state.callbacks` (a `CallbackList`; a callback that
runs collectives must do so on every rank in the same order):

    on_fit_start(state)              weights are set up (fresh, resumed or initialised), step known
    on_batch(state, batch, rng)      this rank's batch of step state.step + 1, before forward
    on_before_update(state, loss, grad_norm, batch, rng)   step state.step + 1's loss and norm
                                     (floats), before its optimizer step; only where they are read
                                     (every step, or log steps under nan_check=log)
    on_step_end(state)               after the optimizer step: state.step, state.out hold it
    on_step_skipped(state, batch, rng)   a non-finite step dropped (trainer.nan_policy=skip)
    on_eval(state, results)          validation results {source: EvalResult} of state.step
    on_checkpoint(state, kind, step) a series ("weights") or "full" checkpoint was written
    on_rollback(state, step)         the state was returned to `step` (spike.action=rollback);
                                     the steps after it will be trained again
    on_stop(state)                   the loop ended (last step, a stop request, or divergence)
    close(state)                     always, also after an exception: release files
    checkpoint_entries()             what the callback adds to a checkpoint's meta.json (read back
                                     from state.resume_meta when the run resumes)

A callback announces an event of its own to all (a checkpoint written, validation results, a
rollback) by calling the hook on `state.callbacks`. `state.request_stop(reason)` ends the loop
after the current step, with a full checkpoint of that step (what a preemption does; tests use
it to stop a run mid-way).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pretrain.checkpoint import full_dir
from pretrain.data.loader import batch_sha
from pretrain.evaluation import EvalResult, EvalSet, eval_batches
from pretrain.metrics import MetricsLogger
from pretrain.optim import lr_at
from pretrain.preemption import Preemption

if TYPE_CHECKING:  # annotations only
    from parallel.engine import Engine
    from pretrain.checkpoint import CheckpointManager
    from pretrain.config import RunConfig
    from pretrain.data.loader import DataLoader, DataOrder


@dataclass
class StepOutput:
    """What the last optimizer step produced, for the callbacks."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    batch: dict
    sample_range: tuple[int, int]
    expert_load: dict | None = None
    source_loss: dict | None = None  # {source: training loss} at log steps of a mixture


class Callback:
    """No-op base: override what you need (the module docstring says when each hook runs)."""

    def on_fit_start(self, state: TrainState) -> None:
        pass

    def on_batch(self, state: TrainState, batch: dict, sample_range: tuple[int, int]) -> None:
        pass

    def on_before_update(
        self,
        state: TrainState,
        loss: float,
        grad_norm: float,
        batch: dict,
        sample_range: tuple[int, int],
    ) -> None:
        pass

    def on_step_end(self, state: TrainState) -> None:
        pass

    def on_step_skipped(
        self, state: TrainState, batch: dict, sample_range: tuple[int, int]
    ) -> None:
        pass

    def on_eval(self, state: TrainState, results: dict[str, EvalResult]) -> None:
        pass

    def on_checkpoint(self, state: TrainState, kind: str, step: int) -> None:
        pass

    def on_rollback(self, state: TrainState, step: int) -> None:
        pass

    def on_stop(self, state: TrainState) -> None:
        pass

    def close(self, state: TrainState) -> None:
        pass

    def checkpoint_entries(self) -> dict:
        return {}


class CallbackList(Callback):
    """A run's callbacks in order; each hook calls that hook of every callback."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_fit_start(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(state)

    def on_batch(self, state: TrainState, batch: dict, sample_range: tuple[int, int]) -> None:
        for cb in self.callbacks:
            cb.on_batch(state, batch, sample_range)

    def on_before_update(
        self,
        state: TrainState,
        loss: float,
        grad_norm: float,
        batch: dict,
        sample_range: tuple[int, int],
    ) -> None:
        for cb in self.callbacks:
            cb.on_before_update(state, loss, grad_norm, batch, sample_range)

    def on_step_end(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_step_end(state)

    def on_step_skipped(
        self, state: TrainState, batch: dict, sample_range: tuple[int, int]
    ) -> None:
        for cb in self.callbacks:
            cb.on_step_skipped(state, batch, sample_range)

    def on_eval(self, state: TrainState, results: dict[str, EvalResult]) -> None:
        for cb in self.callbacks:
            cb.on_eval(state, results)

    def on_checkpoint(self, state: TrainState, kind: str, step: int) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(state, kind, step)

    def on_rollback(self, state: TrainState, step: int) -> None:
        for cb in self.callbacks:
            cb.on_rollback(state, step)

    def on_stop(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_stop(state)

    def close(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.close(state)

    def checkpoint_entries(self) -> dict:
        out: dict = {}
        for cb in self.callbacks:
            out.update(cb.checkpoint_entries())
        return out


@dataclass
class TrainState:
    """What the callbacks see of a run: set up by the Trainer once the weights are in place, the
    progress fields (step, out, skipped, stop_reason) kept current by its loop."""

    run: RunConfig
    run_dir: Path
    rank: int
    rank0: bool
    engine: Engine
    optimizers: list[torch.optim.Optimizer]
    loader: DataLoader
    order: DataOrder
    ckpt: CheckpointManager
    metrics_logger: MetricsLogger
    callbacks: CallbackList
    log: Callable[[str], None]
    tokens_per_step: int
    resume_meta: dict | None = None  # meta.json of the checkpoint resumed from, else None
    step: int = 0  # optimizer steps taken (the weights are those after `step` steps)
    skipped: int = 0  # non-finite steps skipped (trainer.nan_policy=skip)
    out: StepOutput | None = None  # what the last optimizer step produced
    stop_reason: str | None = None
    rewound_to: int | None = None  # set by rewind() until the loop has abandoned the step

    def request_stop(self, reason: str) -> None:
        """End the loop after the current step, with a full checkpoint of it."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def rewind(self, step: int) -> None:
        """A callback restored the state after `step` (spike.action=rollback): the current step
        is abandoned and the steps after `step` are trained again."""
        self.step = step
        self.rewound_to = step

    def is_log_step(self, step: int) -> bool:
        t = self.run.trainer
        return step % t.log_interval == 0 or step == t.max_steps

    def say(self, msg: str) -> None:
        """A line on the console, from rank 0 only."""
        if self.rank0:
            self.log(msg)


def checkpoint_meta(state: TrainState) -> dict:
    """meta.json of a checkpoint of the current step: tokens, data position, schedule, seed and
    the callbacks' entries (the spike detector's window)."""
    run, step = state.run, state.step
    return {
        "tokens": step * state.tokens_per_step,
        "data": state.loader.state_dict(),
        "schedule": {
            "name": run.schedule.name,
            "step": step,
            "lr": lr_at(max(step, 1), run.optim.lr, run.schedule, run.trainer.max_steps),
        },
        "seed": run.trainer.seed,
        **state.callbacks.checkpoint_entries(),
    }


class OrderLog(Callback):
    """RUN_DIR/data_order.json (the data fingerprint) and data_order.jsonl: one line per step, the
    global sample range and the hash of rank 0's tokens (`pretrain analyze batch` checks it)."""

    def __init__(self) -> None:
        self.fh = None

    def on_fit_start(self, state: TrainState) -> None:
        if not state.rank0:
            return
        run_dir = state.run_dir
        (run_dir / "data_order.json").write_text(json.dumps(state.order.fingerprint(), indent=1))
        path = run_dir / "data_order.jsonl"
        if state.step == 0:  # a fresh run owns the order log; a resumed one appends
            path.write_text("")
        else:
            truncate_order_log(path, state.step)
        self.fh = open(path, "a")

    def _write(self, step: int, rng, batch: dict, skipped: bool = False, jumped=None) -> None:
        if self.fh is None:
            return
        rec = {
            "step": step,
            "samples": list(rng),
            "rank0_samples": [rng[0], rng[0] + batch["inputs"].shape[0]],
            "rank0_sha": batch_sha(torch.cat([batch["inputs"], batch["labels"][:, -1:]], dim=1)),
        }
        if skipped:
            rec["skipped"] = True
        if jumped:  # spike rollback: these samples of the order were skipped before this batch
            rec["skipped_samples"] = list(jumped)
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()

    def on_step_end(self, state: TrainState) -> None:
        out = state.out
        self._write(out.step, out.sample_range, out.batch, jumped=state.loader.jumped)

    def on_step_skipped(self, state: TrainState, batch: dict, sample_range) -> None:
        self._write(state.step, sample_range, batch, skipped=True, jumped=state.loader.jumped)

    def on_rollback(self, state: TrainState, step: int) -> None:
        if self.fh is not None:  # the steps after `step` will be consumed again (or skipped)
            truncate_order_log(state.run_dir / "data_order.jsonl", step)

    def close(self, state: TrainState) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def truncate_order_log(path, step: int) -> None:
    """After a resume from step N, the steps past N of the log were never checkpointed: drop them
    (they will be consumed again, identically)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in keep))


class Metrics(Callback):
    """Every trainer.log_interval steps (and the last): loss, loss_avg, grad norm, lr, throughput,
    memory, MoE expert load; validation results at their steps. metrics.jsonl, console,
    TensorBoard and (metrics.wandb=true) Weights & Biases, written by rank 0."""

    def __init__(self, logger: MetricsLogger) -> None:
        self.logger = logger
        self.window: list[tuple[float, float]] = []
        self.pending_eval: dict[str, EvalResult] | None = None

    def on_step_end(self, state: TrainState) -> None:
        out, step = state.out, state.step
        self.logger.count(state.tokens_per_step)
        self.window.append((out.loss, out.grad_norm))
        if not state.is_log_step(step):
            self._flush_eval(state)
            return
        extra = {
            "tokens": step * state.tokens_per_step,
            "skipped_steps": state.skipped,
            "checkpoint_stall_s": state.ckpt.stall_s,
        }
        if out.expert_load:
            extra["expert_load"] = out.expert_load
            extra["expert_load_max_over_mean"] = max(
                max(v) * len(v) for v in out.expert_load.values()
            )
        values = {
            "loss": out.loss,
            "grad_norm": out.grad_norm,
            "lr": out.lr,
            # read here, at a log step (under trainer.nan_check=log the others are on the device)
            "loss_avg": sum(float(x) for x, _ in self.window) / len(self.window),
        }
        if out.source_loss:  # a mixture: the step's training loss per source (SpikeDetector)
            values.update({f"loss/{name}": v for name, v in out.source_loss.items()})
        self.logger.log(step, values, extra, evals=self.pending_eval)
        self.pending_eval = None
        self.window = []

    def on_eval(self, state: TrainState, results: dict[str, EvalResult]) -> None:
        # Validation runs before this callback's on_step_end: its values join the step's
        # training record; off the log steps (and at step 0) they form a record of their own.
        self.pending_eval = results
        if state.out is None or state.out.step != state.step:
            self._flush_eval(state)

    def _flush_eval(self, state: TrainState) -> None:
        if self.pending_eval is not None:
            tokens = state.step * state.tokens_per_step
            self.logger.log_eval(state.step, tokens, self.pending_eval)
            self.pending_eval = None

    def on_checkpoint(self, state: TrainState, kind: str, step: int) -> None:
        self.logger.reset_window()  # tokens/s measures training; saves are checkpoint_stall_s

    def on_rollback(self, state: TrainState, step: int) -> None:
        self.window = []  # loss_avg: only steps of the trajectory kept
        self.logger.reset_window()

    def close(self, state: TrainState) -> None:
        self.logger.close()


class SeriesCheckpoint(Callback):
    """The analysis series (checkpoint.series): weights only, in checkpoint.series_dtype."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def _save(self, state: TrainState) -> None:
        c = state.run.checkpoint
        state.ckpt.save_series(state.step, state.engine, c.series_dtype, checkpoint_meta(state))
        state.callbacks.on_checkpoint(state, "weights", state.step)

    def on_fit_start(self, state: TrainState) -> None:
        if state.step == 0 and 0 in self.steps:
            self._save(state)

    def on_step_end(self, state: TrainState) -> None:
        if state.step in self.steps:
            self._save(state)


class FullCheckpoint(Callback):
    """Resumable checkpoints (model, optimizer, data position, RNG): every checkpoint.interval
    steps, at the last step, and wherever the loop stops early (preemption, a stop request, or
    divergence: then the last good state). Async saves (checkpoint.async_save) except at the end."""

    def __init__(self) -> None:
        self.last_full = 0

    def on_fit_start(self, state: TrainState) -> None:
        self.last_full = state.step

    def save(self, state: TrainState, async_save: bool = False) -> None:
        state.ckpt.save_full(
            state.step,
            state.engine,
            state.optimizers,
            checkpoint_meta(state),
            async_save=async_save,
        )
        self.last_full = state.step
        state.callbacks.on_checkpoint(state, "full", state.step)

    def on_step_end(self, state: TrainState) -> None:
        c, step, last = state.run.checkpoint, state.step, state.run.trainer.max_steps
        if (c.interval and step % c.interval == 0) or step == last:
            self.save(state, async_save=c.async_save and step != last)

    def on_rollback(self, state: TrainState, step: int) -> None:
        if self.last_full > step:  # checkpoints past `step` were discarded with the rollback
            self.last_full = -1

    def on_stop(self, state: TrainState) -> None:
        if state.step != self.last_full:
            self.save(state)
        state.ckpt.wait()


class PreemptionStop(Callback):
    """Slurm's USR1/TERM or a stop file (pretrain/preemption.py): every rank agrees on a step,
    the loop stops there with a full checkpoint, then the job is requeued."""

    def __init__(self, preemption: Preemption) -> None:
        self.preemption = preemption

    def on_fit_start(self, state: TrainState) -> None:
        self.preemption.install()

    def on_step_end(self, state: TrainState) -> None:
        if state.step < state.run.trainer.max_steps and state.stop_reason is None:
            if self.preemption.should_stop(state.step):  # collective: every rank calls it
                state.request_stop("preemption")

    def on_stop(self, state: TrainState) -> None:
        # runs after FullCheckpoint.on_stop: the stop step's checkpoint is complete on this rank
        self.preemption.finish(full_dir(state.run_dir, state.step))
        self.preemption.uninstall()

    def close(self, state: TrainState) -> None:
        self.preemption.uninstall()


class Profiler(Callback):
    """trainer.profile_steps=[first, last]: the torch profiler records steps first..last and
    writes RUN_DIR/profile/trace_rank<r>.json (Chrome trace: Perfetto, chrome://tracing) and
    top_kernels_rank<r>.txt (the operators and kernels by self time, CUDA time on a GPU)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.prof: torch.profiler.profile | None = None

    def on_batch(self, state: TrainState, batch: dict, sample_range) -> None:
        if state.step + 1 == self.first and self.prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()

    def on_step_end(self, state: TrainState) -> None:
        if self.prof is not None and state.step >= self.last:
            self._write(state)

    def _write(self, state: TrainState) -> None:
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        out = state.run_dir / "profile"
        out.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(out / f"trace_rank{state.rank}.json"))
        cuda = torch.cuda.is_available()
        table = prof.key_averages().table(
            sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=25
        )
        (out / f"top_kernels_rank{state.rank}.txt").write_text(table + "\n")
        state.say(f"profile of steps {self.first}..{self.last} written to {out}")

    def close(self, state: TrainState) -> None:
        if self.prof is not None:  # the run ended inside the window: keep what was recorded
            self._write(state)


class Validation(Callback):
    """Loss and perplexity on each held-out source (eval.paths) every eval.interval steps, at every
    series step (eval.at_series) and at the last step, through the engine's forward-only path
    (any layout). No gradients, no change to the weights, the RNG or the MoE counters, so the
    training trajectory is the same with and without it."""

    def __init__(self, evalset: EvalSet, series: list[int]) -> None:
        self.evalset = evalset
        self.series = set(series)

    def due(self, state: TrainState, step: int) -> bool:
        e = state.run.eval
        return (
            (e.interval > 0 and step > 0 and step % e.interval == 0)
            or (e.at_series and step in self.series)
            or step == state.run.trainer.max_steps
        )

    def on_fit_start(self, state: TrainState) -> None:
        if state.step == 0 and self.due(state, 0):
            self.evaluate(state)

    def on_step_end(self, state: TrainState) -> None:
        if self.due(state, state.step):
            self.evaluate(state)

    def evaluate(self, state: TrainState) -> dict[str, EvalResult]:
        t0 = time.perf_counter()
        engine, gbs = state.engine, state.run.trainer.global_batch_size
        lo, n = engine.dp_rank * engine.layout.local_batch_size, engine.layout.local_batch_size
        results = {}
        for src in self.evalset.sources:
            total, count = 0.0, 0
            for inputs, labels in eval_batches(src.windows, gbs):
                s, c = engine.eval_loss(inputs[lo : lo + n], labels[lo : lo + n])
                total, count = total + s, count + c
            results[src.name] = EvalResult.from_sums(total, count)
        state.metrics_logger.exclude(time.perf_counter() - t0)  # not training time
        state.callbacks.on_eval(state, results)
        return results
