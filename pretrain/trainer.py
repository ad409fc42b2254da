"""The training loop as an object: `Trainer(run, callbacks).fit()`.

One code path for one process, torchrun, srun and mpirun: ranks come from `parallel.env`, the
model from `parallel.engine` (TP/PP/FSDP2 applied to the zoo model), data from the deterministic
loader (`pretrain.data`), checkpoints from `pretrain.checkpoint`. Step N (1-based) consumes the
N-th global batch; the checkpoint "step N" holds the weights after N optimizer steps.

`fit()` is the algorithm: check what needs no process group, set up (fresh, resumed or
initialised), then for each step: batch, forward-backward, clip, optimizer step, the engine's
after-step bookkeeping (MoE), and the callbacks (`pretrain/callbacks.py`: validation, metrics,
data-order log, checkpoint series, full checkpoints, preemption). Files in RUN_DIR: config.yaml
(resolved), metrics.jsonl, data_order.json / data_order.jsonl, checkpoints/, series/,
checkpoint_index.jsonl, tensorboard/, analysis/downstream_in_loop/ (eval.downstream).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from model_zoo.config import ConfigError
from model_zoo.counting import count_parameters, training_flops_per_token
from parallel.engine import build_engine
from parallel.env import (
    destroy_distributed,
    discover_env,
    free_port,
    init_distributed,
    resolve_device_type,
)
from parallel.layout import Layout, build_mesh, resolve_layout
from parallel.parallelize import check_gpu_features
from pretrain.callbacks import (
    Callback,
    FullCheckpoint,
    Metrics,
    OrderLog,
    PreemptionStop,
    Profiler,
    SeriesCheckpoint,
    Validation,
)
from pretrain.checkpoint import (
    CheckpointManager,
    check_checkpoint,
    find_latest_complete,
    list_full_checkpoints,
    load_init_weights,
)
from pretrain.config import RunConfig, to_yaml
from pretrain.data.loader import DataLoader, build_data_order, data_fingerprint_matches
from pretrain.evaluation import EvalSet
from pretrain.metrics import MetricsLogger, device_peak_flops, wandb_available
from pretrain.optim import build_optimizers, lr_at, set_lr
from pretrain.preemption import Preemption
from pretrain.series import format_bytes, retained_full_steps, series_steps
from pretrain.spikes import SpikeDetector


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss or gradient norm stopped the run (trainer.nan_policy=stop)."""


def plan(run: RunConfig, world_size: int) -> Layout:
    """Everything that can be checked without a process group: layout and batch accounting."""
    t = run.trainer
    return resolve_layout(
        run.parallel, world_size, run.model, t.global_batch_size, t.micro_batch_size, t.seq_len
    )


def describe_plan(run: RunConfig, layout: Layout) -> str:
    t, c = run.trainer, run.checkpoint
    count = count_parameters(run.model)
    steps = series_steps(c.series, t.max_steps)
    ser_bytes = count.total * torch.tensor([], dtype=getattr(torch, c.series_dtype)).element_size()
    full_bytes = count.total * (4 + 8)  # fp32 weights + AdamW's two fp32 moments
    kept = retained_full_steps(c.interval or t.max_steps, t.max_steps, c.keep_last, c.keep_every)
    return "\n".join(
        [
            f"model {run.model.name}: {count.total:,} parameters "
            f"({count.non_embedding:,} non-embedding); "
            f"{training_flops_per_token(run.model, t.seq_len, count):,} training FLOPs/token",
            f"layout: {layout.describe()}",
            f"batch: {t.global_batch_size} sequences x {t.seq_len} = "
            f"{t.global_batch_size * t.seq_len:,} tokens per step; {layout.dp} data-parallel ranks x "
            f"{layout.local_batch_size} sequences = {layout.n_microbatches} micro-batches of "
            f"{t.micro_batch_size} (gradient accumulation {layout.n_microbatches})",
            f"steps: {t.max_steps} ({t.max_steps * t.global_batch_size * t.seq_len:,} tokens)",
            f"series {c.series or '(none)'}: {len(steps)} weights checkpoints in {c.series_dtype}, "
            f"about {format_bytes(len(steps) * ser_bytes)}",
            f"full checkpoints every {c.interval or t.max_steps} steps, {len(kept)} kept at the end, "
            f"about {format_bytes(len(kept) * full_bytes)}",
        ]
    )


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


class Trainer:
    """See the module docstring. Attributes the callbacks read: run, run_dir, rank0, step,
    out (StepOutput of the last step), engine, optimizers, loader, order, ckpt,
    metrics_logger, tokens_per_step, skipped, losses, stop_reason, spikes (the SpikeDetector or
    None), resume_meta (meta.json of the checkpoint resumed from, else None)."""

    def __init__(
        self,
        run: RunConfig,
        callbacks: Sequence[Callback] = (),
        log: Callable[[str], None] = print,
    ):
        self.run, self.user_callbacks, self.log = run, list(callbacks), log
        self.run_dir = Path(run.run_dir)
        self.step, self.skipped, self.losses = 0, 0, {}
        self._unread: list[int] = []  # steps whose loss is still a device tensor (nan_check=log)
        self.out: StepOutput | None = None
        self.stop_reason: str | None = None
        self.callbacks: list[Callback] = []
        self.env, self.rank0 = None, True
        self.ckpt = self.engine = self.preemption = self.metrics_logger = None
        self.tokens_per_step = run.trainer.global_batch_size * run.trainer.seq_len
        self.evalset: EvalSet | None = None
        self.downstream = None  # eval.downstream's loaded tasks (pretrain/downstream_eval.py)
        self.spikes: SpikeDetector | None = None
        self.resume_meta: dict | None = None
        self.step_aborted = False  # set by a callback that restored an earlier state

    # ---- the algorithm ----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Run (or resume) training; returns step, losses, skipped, checkpoint_stall_s and
        preempted_at (the step a preemption stopped at, else None)."""
        env = discover_env()
        self.env, self.rank0 = env, env.rank == 0
        layout = self.layout = plan(self.run, env.world_size)
        resume_path = self._preflight()
        device = self._init_process_group(env)
        try:
            self._setup(env, layout, device)
            self._restore(resume_path)
            self.callbacks = self._default_callbacks(device) + self.user_callbacks
            self.say(describe_plan(self.run, layout))
            self.fire("on_fit_start")
            while self.step < self.run.trainer.max_steps and self.stop_reason is None:
                self.train_step()
            self.fire("on_stop")
            return self.result()
        finally:
            self._teardown()

    def train_step(self) -> None:
        t, o = self.run.trainer, self.run.optim
        self.ckpt.poll()
        batch, rng = self.loader.next_batch()
        self.fire("on_batch", batch, rng)
        lr = lr_at(self.step + 1, o.lr, self.run.schedule, t.max_steps)
        set_lr(self.optimizers, lr)
        # trainer.nan_check=log: loss and norm stay on the device between log steps (no stall)
        sync = t.nan_check == "step" or self.is_log_step(self.step + 1)
        loss = self.engine.forward_backward(
            batch["inputs"],
            batch["labels"],
            batch.get("position_ids"),
            document_ids=batch["document_ids"] if self.run.data.intra_doc_mask else None,
            sync=sync,
        )
        gnorm = self.engine.clip_grad_norm(o.grad_clip if o.grad_clip > 0 else math.inf, sync)
        if sync and not (math.isfinite(loss) and math.isfinite(gnorm)):
            self._non_finite(loss, gnorm, batch, rng)
            return
        if sync:  # loss and norm are floats here: callbacks may act before the update
            self.fire("on_before_update", loss, gnorm, batch, rng)
            if self.step_aborted:  # e.g. a spike rollback: the state is now an earlier step's
                self.step_aborted = False
                return
        for opt in self.optimizers:
            opt.step()
        self.engine.after_optimizer_step_fp8()
        self.engine.zero_grad()
        self.step += 1
        load = self.engine.after_optimizer_step(log_load=self.is_log_step(self.step))
        self.losses[self.step] = loss
        if not sync:
            self._unread.append(self.step)
        elif self._unread:  # the device-held losses of the steps since the last read, as floats
            self.losses.update({k: float(self.losses[k]) for k in self._unread})
            self._unread = []
        self.out = StepOutput(self.step, loss, gnorm, lr, batch, rng, load)
        self.fire("on_step_end")

    def _non_finite(self, loss: float, gnorm: float, batch: dict, rng) -> None:
        """trainer.nan_policy: skip the update (up to max_skipped_steps) or stop, saving the last
        good state (the bad update was not applied) so the run can be inspected or resumed."""
        t = self.run.trainer
        self.engine.zero_grad()
        if t.nan_check == "log":
            self.stop_reason = "diverged"
            raise TrainingDiverged(
                f"loss {loss} / grad norm {gnorm} at step {self.step + 1}; stopped "
                f"(trainer.nan_check=log: the steps since the last log step may have applied "
                f"non-finite updates, so this state is not saved; the last full checkpoint in "
                f"{self.run_dir / 'checkpoints'} is). Rerun from it with trainer.nan_check=step "
                "to find the step"
            )
        what = (
            f"loss {loss} / grad norm {gnorm} at step {self.step + 1} "
            f"(samples {rng[0]}..{rng[1] - 1})"
        )
        if t.nan_policy == "skip" and self.skipped < t.max_skipped_steps:
            self.skipped += 1
            self.say(
                f"warning: {what}: update skipped ({self.skipped}/{t.max_skipped_steps}, "
                "trainer.nan_policy=skip)"
            )
            self.step += 1
            self.fire("on_step_skipped", batch, rng)
            return
        self.stop_reason = "diverged"
        self.fire("on_stop")
        raise TrainingDiverged(
            f"{what}; stopped (trainer.nan_policy={t.nan_policy}). The last good state "
            f"(step {self.step}) is in {self.run_dir / 'checkpoints'}; inspect the batch with "
            f"`pretrain analyze batch --run {self.run_dir} --step {self.step + 1}`, lower "
            "optim.lr, or set trainer.nan_policy=skip"
        )

    # ---- callbacks --------------------------------------------------------------------------------
    def fire(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def request_stop(self, reason: str) -> None:
        """End the loop after the current step, with a full checkpoint of it."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def is_log_step(self, step: int) -> bool:
        return step % self.run.trainer.log_interval == 0 or step == self.run.trainer.max_steps

    def rewind(self, step: int) -> None:
        """A callback restored the state after `step` (spike.action=rollback): the current step
        is abandoned and the losses of the steps after `step` forgotten."""
        self.losses = {k: float(v) for k, v in self.losses.items() if k <= step}
        self._unread = []
        self.step = step
        self.step_aborted = True

    def say(self, msg: str) -> None:
        if self.rank0:
            self.log(msg)

    def result(self) -> dict:
        return {
            "step": self.step,
            "losses": self.losses,
            "skipped": self.skipped,
            "checkpoint_stall_s": self.ckpt.stall_s,
            "preempted_at": self.preemption.stopped_at,
        }

    # ---- setup ------------------------------------------------------------------------------------
    def _preflight(self) -> Path | None:
        """Before any process group: refuse to overwrite a run by accident, check an explicit
        resume or init_from checkpoint against its manifest, read the held-out set; returns
        resume=PATH's folder."""
        run, c = self.run, self.run.checkpoint
        if run.metrics.wandb and not wandb_available():
            raise ConfigError("metrics.wandb=true needs the wandb package: pip install wandb")
        resume_path = None
        if run.resume == "none":
            if list_full_checkpoints(self.run_dir):
                raise ConfigError(
                    f"{self.run_dir} already has checkpoints; pass resume=auto to continue "
                    "that run or choose another run_dir"
                )
        elif run.resume != "auto":
            resume_path = Path(run.resume)
            if not (resume_path / "meta.json").exists():
                raise ConfigError(
                    f"resume={run.resume}: not a full checkpoint folder (no meta.json)"
                )
            check_checkpoint(resume_path, c.verify)
        if c.init_from:
            check_checkpoint(c.init_from, c.verify)
        self.evalset = EvalSet.from_run(run)  # a bad eval path fails here, before any rank starts
        if run.eval.downstream.tasks:  # unknown tasks, no tokenizer: here too
            from pretrain.downstream_eval import prepare_downstream  # lm-eval: only when asked

            self.downstream = prepare_downstream(run)
        return resume_path

    def _init_process_group(self, env) -> torch.device:
        t = self.run.trainer
        device_type = resolve_device_type(
            self.run.parallel.device if t.device == "auto" else t.device
        )
        # what this hardware / layout cannot run (FP8 experts, float8 all-gather, flex on CPU)
        check_gpu_features(self.run.model, self.run.parallel, self.layout, device_type)
        if env.launcher == "single":
            # A world of one still gets a process group (the engine and DCP run the same code as
            # on many ranks); a free port keeps concurrent single-process runs from colliding.
            env.master_port = int(os.environ.get("MASTER_PORT") or free_port())
        self.device_type = device_type
        return init_distributed(env, device_type)

    def _setup(self, env, layout: Layout, device: torch.device) -> None:
        run, t = self.run, self.run.trainer
        # The data is checked (paths, token ids vs the vocabulary, enough tokens) before anything
        # is written: a start that fails leaves RUN_DIR as it was.
        self.order = build_data_order(run)
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(run))
        mesh = build_mesh(layout, self.device_type)
        self.engine = build_engine(run.model, run.parallel, layout, mesh, device, seed=t.seed)
        self.optimizers = build_optimizers(self.engine.model_parts, run.optim, device)
        self.ckpt = CheckpointManager(self.run_dir, run, env.rank, env.world_size, log=self.say)
        self.loader = DataLoader(
            self.order,
            t.global_batch_size,
            self.engine.dp_rank,
            self.engine.dp_size,
            reset_positions=run.data.reset_position_ids,
            pin_memory=device.type == "cuda",  # with the engine's non-blocking copies
        )
        # Slurm's USR1/TERM or a stop file: every rank agrees on a step, checkpoints it, leaves.
        self.preemption = Preemption(env.rank, env.world_size, device, log=self.say)

    def _restore(self, resume_path: Path | None) -> None:
        """Fresh, resumed (resume=auto or PATH: weights, optimizer, data position, RNG) or
        initialised from checkpoint.init_from."""
        run, c = self.run, self.run.checkpoint
        if run.resume == "auto":
            # Rank 0 verifies (checksums read every byte once); the others follow its choice.
            latest = (
                find_latest_complete(self.run_dir, c.verify, report=self.say)
                if self.rank0
                else None
            )
            choice = [str(latest or "")]
            dist.broadcast_object_list(choice, src=0)
            resume_path = Path(choice[0]) if choice[0] else None
            if resume_path is None:
                self.say(
                    f"resume=auto: no complete checkpoint in {self.run_dir / 'checkpoints'}; "
                    "starting fresh"
                )
        if resume_path is not None:
            self._resume(resume_path)
        elif c.init_from:
            load_init_weights(self.engine, c.init_from, verify="size")  # checksums checked before
            self.say(f"initialised weights from {c.init_from}")

    def _resume(self, path: Path) -> None:
        t = self.run.trainer
        meta = self.resume_meta = self.ckpt.load_full(path, self.engine, self.optimizers)
        self.step = int(meta["step"])
        self.loader.load_state_dict(meta["data"])
        if meta["data"]["global_batch"] != t.global_batch_size:
            self.say(
                f"note: global batch changed from {meta['data']['global_batch']} to "
                f"{t.global_batch_size}; the data continues from sample {self.loader.consumed}"
            )
        why = [None]
        saved = self.run_dir / "data_order.json"
        if self.rank0 and saved.exists():
            why = [data_fingerprint_matches(json.loads(saved.read_text()), self.order)]
        dist.broadcast_object_list(why, src=0)  # every rank stops, not only rank 0
        if why[0]:
            raise ConfigError(f"resume: the data or its order differs from the run's ({why[0]})")
        self.say(f"resumed from {path} at step {self.step} (sample {self.loader.consumed})")

    def _default_callbacks(self, device: torch.device) -> list[Callback]:
        """In order: validation first (its results join the step's metrics record), metrics, the
        data-order log, series, full checkpoints, preemption (after the checkpoint of its step)."""
        run, t = self.run, self.run.trainer
        series = series_steps(run.checkpoint.series, t.max_steps)
        self.metrics_logger = MetricsLogger(
            self.run_dir,
            self.rank0,
            t.tensorboard,
            self.env.world_size,
            training_flops_per_token(run.model, t.seq_len),
            device_peak_flops(device, t.peak_flops),
            device,
            wandb_cfg=run.metrics if run.metrics.wandb else None,
        )
        callbacks: list[Callback] = [Validation(self.evalset, series)] if self.evalset else []
        if self.downstream is not None:
            from pretrain.downstream_eval import DownstreamEval

            callbacks.append(DownstreamEval(self.downstream, series, self.run_dir))
        if run.spike.enabled:  # before Metrics: its per-source losses join the step's record
            self.spikes = SpikeDetector(run.spike)
            callbacks.append(self.spikes)
        callbacks += [
            Metrics(self.metrics_logger),
            OrderLog(),
            SeriesCheckpoint(series),
            FullCheckpoint(),
            PreemptionStop(self.preemption),
        ]
        if t.profile_steps:
            callbacks.append(Profiler(*t.profile_steps))
        return callbacks

    def _teardown(self) -> None:
        for cb in self.callbacks:
            cb.close(self)
        if self.preemption is not None:
            self.preemption.uninstall()
        if self.metrics_logger is not None:
            self.metrics_logger.close()
        if self.ckpt is not None and self.ckpt.pending is not None:
            try:
                self.ckpt.pending[0].result()  # never leave a background write running at exit
            except Exception:
                pass
        destroy_distributed()
