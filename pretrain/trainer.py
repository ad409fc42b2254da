"""The training loop as an object: `Trainer(run, callbacks).fit()`.

One code path for one process, torchrun, srun and mpirun: ranks come from `parallel.env`, the
model from `parallel.engine` (TP/PP/FSDP2 applied to the zoo model), data from the deterministic
loader (`pretrain.data`), checkpoints from `pretrain.checkpoint`. Step N (1-based) consumes the
N-th global batch; the checkpoint "step N" holds the weights after N optimizer steps.

`fit()` is the algorithm: check what needs no process group, set up (fresh, resumed or
initialised), then for each step: batch, forward-backward, clip, optimizer step, the engine's
after-step bookkeeping (MoE), and the callbacks (`pretrain/callbacks.py`: validation, metrics,
data-order log, checkpoint series, full checkpoints, preemption), which see the run through its
`TrainState` (never the Trainer) and are called through their typed hooks. Files in RUN_DIR:
config.yaml (resolved), metrics.jsonl, data_order.json / data_order.jsonl, checkpoints/, series/,
checkpoint_index.jsonl, tensorboard/, analysis/downstream_in_loop/ (eval.downstream).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from configcore import ConfigError
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
    CallbackList,
    FullCheckpoint,
    Metrics,
    OrderLog,
    PreemptionStop,
    Profiler,
    SeriesCheckpoint,
    StepOutput,
    TrainState,
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


class Trainer:
    """See the module docstring. The run's progress (step, the last StepOutput, skipped steps,
    the stop reason) is `self.state`, the TrainState the callbacks are given; the trainer keeps
    the losses."""

    def __init__(
        self,
        run: RunConfig,
        callbacks: Sequence[Callback] = (),
        log: Callable[[str], None] = print,
    ):
        self.run, self.user_callbacks, self.log = run, list(callbacks), log
        self.run_dir = Path(run.run_dir)
        self.losses: dict[int, float] = {}
        self._unread: list[int] = []  # steps whose loss is still a device tensor (nan_check=log)
        self.state: TrainState | None = None  # from the start of the loop on
        self.env, self.rank0 = None, True
        self.ckpt = self.engine = self.preemption = self.metrics_logger = None
        self.evalset: EvalSet | None = None
        self.downstream = None  # eval.downstream's loaded tasks (pretrain/downstream_eval.py)

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
            step, resume_meta = self._restore(resume_path)
            state = self.state = self._train_state(device, step, resume_meta)
            self.say(describe_plan(self.run, layout))
            state.callbacks.on_fit_start(state)
            while state.step < self.run.trainer.max_steps and state.stop_reason is None:
                self.train_step()
            state.callbacks.on_stop(state)
            return self.result()
        finally:
            self._teardown()

    def train_step(self) -> None:
        t, o = self.run.trainer, self.run.optim
        state, callbacks = self.state, self.state.callbacks
        self.ckpt.poll()
        batch, rng = self.loader.next_batch()
        callbacks.on_batch(state, batch, rng)
        lr = lr_at(state.step + 1, o.lr, self.run.schedule, t.max_steps)
        set_lr(self.optimizers, lr)
        # trainer.nan_check=log: loss and norm stay on the device between log steps (no stall)
        sync = t.nan_check == "step" or state.is_log_step(state.step + 1)
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
            callbacks.on_before_update(state, loss, gnorm, batch, rng)
            if state.rewound_to is not None:  # a spike rollback: the state is an earlier step's
                self._forget_after(state.rewound_to)
                state.rewound_to = None
                return
        for opt in self.optimizers:
            opt.step()
        self.engine.after_optimizer_step_fp8()
        self.engine.zero_grad()
        state.step += 1
        load = self.engine.after_optimizer_step(log_load=state.is_log_step(state.step))
        self.losses[state.step] = loss
        if not sync:
            self._unread.append(state.step)
        elif self._unread:  # the device-held losses of the steps since the last read, as floats
            self.losses.update({k: float(self.losses[k]) for k in self._unread})
            self._unread = []
        state.out = StepOutput(state.step, loss, gnorm, lr, batch, rng, load)
        callbacks.on_step_end(state)

    def _non_finite(self, loss: float, gnorm: float, batch: dict, rng) -> None:
        """trainer.nan_policy: skip the update (up to max_skipped_steps) or stop, saving the last
        good state (the bad update was not applied) so the run can be inspected or resumed."""
        t, state = self.run.trainer, self.state
        self.engine.zero_grad()
        if t.nan_check == "log":
            state.stop_reason = "diverged"
            raise TrainingDiverged(
                f"loss {loss} / grad norm {gnorm} at step {state.step + 1}; stopped "
                f"(trainer.nan_check=log: the steps since the last log step may have applied "
                f"non-finite updates, so this state is not saved; the last full checkpoint in "
                f"{self.run_dir / 'checkpoints'} is). Rerun from it with trainer.nan_check=step "
                "to find the step"
            )
        what = (
            f"loss {loss} / grad norm {gnorm} at step {state.step + 1} "
            f"(samples {rng[0]}..{rng[1] - 1})"
        )
        if t.nan_policy == "skip" and state.skipped < t.max_skipped_steps:
            state.skipped += 1
            self.say(
                f"warning: {what}: update skipped ({state.skipped}/{t.max_skipped_steps}, "
                "trainer.nan_policy=skip)"
            )
            state.step += 1
            state.callbacks.on_step_skipped(state, batch, rng)
            return
        state.stop_reason = "diverged"
        state.callbacks.on_stop(state)
        raise TrainingDiverged(
            f"{what}; stopped (trainer.nan_policy={t.nan_policy}). The last good state "
            f"(step {state.step}) is in {self.run_dir / 'checkpoints'}; inspect the batch with "
            f"`pretrain analyze batch --run {self.run_dir} --step {state.step + 1}`, lower "
            "optim.lr, or set trainer.nan_policy=skip"
        )

    # ---- bookkeeping -----------------------------------------------------------------------------
    def _forget_after(self, step: int) -> None:
        """A callback rewound the state to `step` (state.rewind): the losses of the steps after it
        are forgotten (they will be trained again)."""
        self.losses = {k: float(v) for k, v in self.losses.items() if k <= step}
        self._unread = []

    def say(self, msg: str) -> None:
        if self.rank0:
            self.log(msg)

    def result(self) -> dict:
        return {
            "step": self.state.step,
            "losses": self.losses,
            "skipped": self.state.skipped,
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

    def _restore(self, resume_path: Path | None) -> tuple[int, dict | None]:
        """Fresh, resumed (resume=auto or PATH: weights, optimizer, data position, RNG) or
        initialised from checkpoint.init_from. Returns the step the run starts from and the
        meta.json of the checkpoint resumed from (None when not resumed)."""
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
            return self._resume(resume_path)
        if c.init_from:
            load_init_weights(self.engine, c.init_from, verify="size")  # checksums checked before
            self.say(f"initialised weights from {c.init_from}")
        return 0, None

    def _resume(self, path: Path) -> tuple[int, dict]:
        t = self.run.trainer
        meta = self.ckpt.load_full(path, self.engine, self.optimizers)
        step = int(meta["step"])
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
        self.say(f"resumed from {path} at step {step} (sample {self.loader.consumed})")
        return step, meta

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
            callbacks.append(SpikeDetector(run.spike))
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

    def _train_state(self, device: torch.device, step: int, resume_meta: dict | None) -> TrainState:
        """What the callbacks are given: the run's handles and its progress, from `step` on."""
        t = self.run.trainer
        callbacks = CallbackList(self._default_callbacks(device) + self.user_callbacks)
        return TrainState(  # after the callbacks: _default_callbacks opens the metrics logger
            run=self.run,
            run_dir=self.run_dir,
            rank=self.env.rank,
            rank0=self.rank0,
            engine=self.engine,
            optimizers=self.optimizers,
            loader=self.loader,
            order=self.order,
            ckpt=self.ckpt,
            metrics_logger=self.metrics_logger,
            callbacks=callbacks,
            log=self.log,
            tokens_per_step=t.global_batch_size * t.seq_len,
            resume_meta=resume_meta,
            step=step,
        )

    def _teardown(self) -> None:
        if self.state is not None:
            self.state.callbacks.close(self.state)
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
