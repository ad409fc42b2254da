"""What happens around the training step, as callbacks of `pretrain.trainer.Trainer`.

The trainer's loop only computes steps; everything it records or decides between steps is a
callback, called in list order on every rank (a callback that runs collectives must do so on
every rank in the same order):

    on_fit_start(trainer)            weights are set up (fresh, resumed or initialised), step known
    on_batch(trainer, batch, rng)    this rank's batch of step trainer.step + 1, before forward
    on_before_update(trainer, loss, grad_norm, batch, rng)   step trainer.step + 1's loss and
                                     norm (floats), before its optimizer step; only where they
                                     are read (every step, or log steps under nan_check=log)
    on_step_end(trainer)             after the optimizer step: trainer.step, trainer.out hold it
    on_step_skipped(trainer, batch, rng)   a non-finite step dropped (trainer.nan_policy=skip)
    on_eval(trainer, results)        validation results {source: EvalResult} of trainer.step
    on_checkpoint(trainer, kind, step)     a series ("weights") or "full" checkpoint was written
    on_rollback(trainer, step)       the state was returned to `step` (spike.action=rollback);
                                     the steps after it will be trained again
    on_stop(trainer)                 the loop ended (last step, a stop request, or divergence)
    close(trainer)                   always, also after an exception: release files

`trainer.request_stop(reason)` ends the loop after the current step, with a full checkpoint of
that step (what a preemption does; tests use it to stop a run mid-way).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import torch

from pretrain.checkpoint import full_dir
from pretrain.data.loader import batch_sha
from pretrain.evaluation import EvalResult, EvalSet, eval_batches
from pretrain.metrics import MetricsLogger
from pretrain.optim import lr_at
from pretrain.preemption import Preemption

if TYPE_CHECKING:  # the trainer imports this module; a runtime import would be a cycle
    from pretrain.trainer import Trainer


class Callback:
    """No-op base: override what you need."""

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_batch(self, trainer: Trainer, batch: dict, sample_range: tuple[int, int]) -> None:
        pass

    def on_before_update(
        self, trainer: Trainer, loss: float, grad_norm: float, batch: dict, sample_range
    ) -> None:
        pass

    def on_step_end(self, trainer: Trainer) -> None:
        pass

    def on_step_skipped(self, trainer: Trainer, batch: dict, sample_range: tuple[int, int]) -> None:
        pass

    def on_eval(self, trainer: Trainer, results: dict[str, EvalResult]) -> None:
        pass

    def on_checkpoint(self, trainer: Trainer, kind: str, step: int) -> None:
        pass

    def on_rollback(self, trainer: Trainer, step: int) -> None:
        pass

    def on_stop(self, trainer: Trainer) -> None:
        pass

    def close(self, trainer: Trainer) -> None:
        pass


def checkpoint_meta(trainer: Trainer) -> dict:
    """meta.json of a checkpoint of the current step: tokens, data position, schedule, seed."""
    run, step = trainer.run, trainer.step
    return {
        "tokens": step * trainer.tokens_per_step,
        "data": trainer.loader.state_dict(),
        "schedule": {
            "name": run.schedule.name,
            "step": step,
            "lr": lr_at(max(step, 1), run.optim.lr, run.schedule, run.trainer.max_steps),
        },
        "seed": run.trainer.seed,
        **({"spike": trainer.spikes.state_dict()} if trainer.spikes is not None else {}),
    }


class OrderLog(Callback):
    """RUN_DIR/data_order.json (the data fingerprint) and data_order.jsonl: one line per step, the
    global sample range and the hash of rank 0's tokens (`pretrain analyze batch` checks it)."""

    def __init__(self) -> None:
        self.fh = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.rank0:
            return
        run_dir = trainer.run_dir
        (run_dir / "data_order.json").write_text(json.dumps(trainer.order.fingerprint(), indent=1))
        path = run_dir / "data_order.jsonl"
        if trainer.step == 0:  # a fresh run owns the order log; a resumed one appends
            path.write_text("")
        else:
            truncate_order_log(path, trainer.step)
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

    def on_step_end(self, trainer: Trainer) -> None:
        out = trainer.out
        self._write(out.step, out.sample_range, out.batch, jumped=trainer.loader.jumped)

    def on_step_skipped(self, trainer: Trainer, batch: dict, sample_range) -> None:
        self._write(trainer.step, sample_range, batch, skipped=True, jumped=trainer.loader.jumped)

    def on_rollback(self, trainer: Trainer, step: int) -> None:
        if self.fh is not None:  # the steps after `step` will be consumed again (or skipped)
            truncate_order_log(trainer.run_dir / "data_order.jsonl", step)

    def close(self, trainer: Trainer) -> None:
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

    def on_step_end(self, trainer: Trainer) -> None:
        out, step = trainer.out, trainer.step
        self.logger.count(trainer.tokens_per_step)
        self.window.append((out.loss, out.grad_norm))
        if not trainer.is_log_step(step):
            self._flush_eval(trainer)
            return
        extra = {
            "tokens": step * trainer.tokens_per_step,
            "skipped_steps": trainer.skipped,
            "checkpoint_stall_s": trainer.ckpt.stall_s,
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

    def on_eval(self, trainer: Trainer, results: dict[str, EvalResult]) -> None:
        # Validation runs before this callback's on_step_end: its values join the step's
        # training record; off the log steps (and at step 0) they form a record of their own.
        self.pending_eval = results
        if trainer.out is None or trainer.out.step != trainer.step:
            self._flush_eval(trainer)

    def _flush_eval(self, trainer: Trainer) -> None:
        if self.pending_eval is not None:
            tokens = trainer.step * trainer.tokens_per_step
            self.logger.log_eval(trainer.step, tokens, self.pending_eval)
            self.pending_eval = None

    def on_checkpoint(self, trainer: Trainer, kind: str, step: int) -> None:
        self.logger.reset_window()  # tokens/s measures training; saves are checkpoint_stall_s

    def on_rollback(self, trainer: Trainer, step: int) -> None:
        self.window = []  # loss_avg: only steps of the trajectory kept
        self.logger.reset_window()

    def close(self, trainer: Trainer) -> None:
        self.logger.close()


class SeriesCheckpoint(Callback):
    """The analysis series (checkpoint.series): weights only, in checkpoint.series_dtype."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def _save(self, trainer: Trainer) -> None:
        c = trainer.run.checkpoint
        trainer.ckpt.save_series(
            trainer.step, trainer.engine, c.series_dtype, checkpoint_meta(trainer)
        )
        trainer.fire("on_checkpoint", "weights", trainer.step)

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.step == 0 and 0 in self.steps:
            self._save(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step in self.steps:
            self._save(trainer)


class FullCheckpoint(Callback):
    """Resumable checkpoints (model, optimizer, data position, RNG): every checkpoint.interval
    steps, at the last step, and wherever the loop stops early (preemption, a stop request, or
    divergence: then the last good state). Async saves (checkpoint.async_save) except at the end."""

    def __init__(self) -> None:
        self.last_full = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.last_full = trainer.step

    def save(self, trainer: Trainer, async_save: bool = False) -> None:
        trainer.ckpt.save_full(
            trainer.step,
            trainer.engine,
            trainer.optimizers,
            checkpoint_meta(trainer),
            async_save=async_save,
        )
        self.last_full = trainer.step
        trainer.fire("on_checkpoint", "full", trainer.step)

    def on_step_end(self, trainer: Trainer) -> None:
        c, step, last = trainer.run.checkpoint, trainer.step, trainer.run.trainer.max_steps
        if (c.interval and step % c.interval == 0) or step == last:
            self.save(trainer, async_save=c.async_save and step != last)

    def on_rollback(self, trainer: Trainer, step: int) -> None:
        if self.last_full > step:  # checkpoints past `step` were discarded with the rollback
            self.last_full = -1

    def on_stop(self, trainer: Trainer) -> None:
        if trainer.step != self.last_full:
            self.save(trainer)
        trainer.ckpt.wait()


class PreemptionStop(Callback):
    """Slurm's USR1/TERM or a stop file (pretrain/preemption.py): every rank agrees on a step,
    the loop stops there with a full checkpoint, then the job is requeued."""

    def __init__(self, preemption: Preemption) -> None:
        self.preemption = preemption

    def on_fit_start(self, trainer: Trainer) -> None:
        self.preemption.install()

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step < trainer.run.trainer.max_steps and trainer.stop_reason is None:
            if self.preemption.should_stop(trainer.step):  # collective: every rank calls it
                trainer.request_stop("preemption")

    def on_stop(self, trainer: Trainer) -> None:
        # runs after FullCheckpoint.on_stop: the stop step's checkpoint is complete on this rank
        self.preemption.finish(full_dir(trainer.run_dir, trainer.step))
        self.preemption.uninstall()

    def close(self, trainer: Trainer) -> None:
        self.preemption.uninstall()


class Profiler(Callback):
    """trainer.profile_steps=[first, last]: the torch profiler records steps first..last and
    writes RUN_DIR/profile/trace_rank<r>.json (Chrome trace: Perfetto, chrome://tracing) and
    top_kernels_rank<r>.txt (the operators and kernels by self time, CUDA time on a GPU)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.prof: torch.profiler.profile | None = None

    def on_batch(self, trainer: Trainer, batch: dict, sample_range) -> None:
        if trainer.step + 1 == self.first and self.prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()

    def on_step_end(self, trainer: Trainer) -> None:
        if self.prof is not None and trainer.step >= self.last:
            self._write(trainer)

    def _write(self, trainer: Trainer) -> None:
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        out = trainer.run_dir / "profile"
        out.mkdir(parents=True, exist_ok=True)
        rank = trainer.env.rank if trainer.env is not None else 0
        prof.export_chrome_trace(str(out / f"trace_rank{rank}.json"))
        cuda = torch.cuda.is_available()
        table = prof.key_averages().table(
            sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=25
        )
        (out / f"top_kernels_rank{rank}.txt").write_text(table + "\n")
        trainer.say(f"profile of steps {self.first}..{self.last} written to {out}")

    def close(self, trainer: Trainer) -> None:
        if self.prof is not None:  # the run ended inside the window: keep what was recorded
            self._write(trainer)


class Validation(Callback):
    """Loss and perplexity on each held-out source (eval.paths) every eval.interval steps, at every
    series step (eval.at_series) and at the last step, through the engine's forward-only path
    (any layout). No gradients, no change to the weights, the RNG or the MoE counters, so the
    training trajectory is the same with and without it."""

    def __init__(self, evalset: EvalSet, series: list[int]) -> None:
        self.evalset = evalset
        self.series = set(series)

    def due(self, trainer: Trainer, step: int) -> bool:
        e = trainer.run.eval
        return (
            (e.interval > 0 and step > 0 and step % e.interval == 0)
            or (e.at_series and step in self.series)
            or step == trainer.run.trainer.max_steps
        )

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.step == 0 and self.due(trainer, 0):
            self.evaluate(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.due(trainer, trainer.step):
            self.evaluate(trainer)

    def evaluate(self, trainer: Trainer) -> dict[str, EvalResult]:
        t0 = time.perf_counter()
        engine, gbs = trainer.engine, trainer.run.trainer.global_batch_size
        lo, n = engine.dp_rank * engine.layout.local_batch_size, engine.layout.local_batch_size
        results = {}
        for src in self.evalset.sources:
            total, count = 0.0, 0
            for inputs, labels in eval_batches(src.windows, gbs):
                s, c = engine.eval_loss(inputs[lo : lo + n], labels[lo : lo + n])
                total, count = total + s, count + c
            results[src.name] = EvalResult.from_sums(total, count)
        trainer.metrics_logger.exclude(time.perf_counter() - t0)  # not training time
        trainer.fire("on_eval", results)
        return results
