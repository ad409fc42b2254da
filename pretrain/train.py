"""`pretrain train`: the training loop.

One code path for one process, torchrun, srun and mpirun: ranks come from `parallel.env`, the
model from `parallel.engine` (TP/PP/FSDP2 applied to the zoo model), data from the deterministic
loader (`pretrain.data`), checkpoints from `pretrain.checkpoint`. Step N (1-based) consumes the
N-th global batch; the checkpoint "step N" holds the weights after N optimizer steps.

Files in RUN_DIR: config.yaml (resolved), metrics.jsonl, data_order.json (data fingerprint) and
data_order.jsonl (sample range and rank-0 batch hash of each step), checkpoints/, series/,
checkpoint_index.jsonl, tensorboard/ (when installed).
"""

from __future__ import annotations

import json
import math
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from model_zoo.config import ConfigError
from pretrain.config import RunConfig, to_yaml


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss or gradient norm stopped the run (trainer.nan_policy=stop)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan(run: RunConfig, world_size: int):
    """Everything that can be checked without a process group: layout and batch accounting."""
    from parallel.layout import resolve_layout

    t = run.trainer
    layout = resolve_layout(
        run.parallel, world_size, run.model, t.global_batch_size, t.micro_batch_size, t.seq_len
    )
    return layout


def describe_plan(run: RunConfig, layout) -> str:
    from model_zoo.counting import count_parameters, training_flops_per_token
    from pretrain.series import format_bytes, retained_full_steps, series_steps

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


def train(
    run: RunConfig,
    on_batch: Callable | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) training. `on_batch(step, batch, sample_range)` sees every local batch
    (tests use it to prove what was consumed); `stop_after` ends the process after that step as
    a preemption would (a full checkpoint is written there first)."""
    import torch.distributed as dist

    from model_zoo.counting import training_flops_per_token
    from parallel.engine import build_engine
    from parallel.env import (
        destroy_distributed,
        discover_env,
        init_distributed,
        resolve_device_type,
    )
    from parallel.layout import build_mesh
    from pretrain.checkpoint import CheckpointManager, find_latest_complete, list_full_checkpoints
    from pretrain.data.loader import (
        DataLoader,
        build_data_order,
        data_fingerprint_matches,
    )
    from pretrain.metrics import MetricsLogger, device_peak_flops, expert_load
    from pretrain.optim import build_optimizers, lr_at, set_lr
    from pretrain.series import series_steps

    env = discover_env()
    layout = plan(run, env.world_size)
    t, c = run.trainer, run.checkpoint
    run_dir = Path(run.run_dir)
    rank0 = env.rank == 0
    say = log if rank0 else (lambda *_: None)

    # Before any process group: refuse to overwrite a run by accident.
    resume_path: Path | None = None
    if run.resume == "none":
        if list_full_checkpoints(run_dir):
            raise ConfigError(
                f"{run_dir} already has checkpoints; pass resume=auto to continue "
                "that run or choose another run_dir"
            )
    elif run.resume != "auto":
        resume_path = Path(run.resume)
        if not (resume_path / "meta.json").exists():
            raise ConfigError(f"resume={run.resume}: not a full checkpoint folder (no meta.json)")

    device_type = resolve_device_type(run.parallel.device if t.device == "auto" else t.device)
    if env.launcher == "single":
        # A world of one still gets a process group (the engine and DCP run the same code as on
        # many ranks); a free port keeps concurrent single-process runs from colliding.
        import os

        env.master_port = int(os.environ.get("MASTER_PORT") or _free_port())
    device = init_distributed(env, device_type)
    ckpt = None
    metrics = None
    preempt = None
    try:
        if rank0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(to_yaml(run))
        mesh = build_mesh(layout, device_type)
        engine = build_engine(run.model, run.parallel, layout, mesh, device, seed=t.seed)
        optimizers = build_optimizers(engine.model_parts, run.optim, device)
        ckpt = CheckpointManager(run_dir, run, env.rank, env.world_size, log=say)
        order = build_data_order(run)
        loader = DataLoader(
            order,
            t.global_batch_size,
            engine.dp_rank,
            engine.dp_size,
            reset_positions=run.data.reset_position_ids,
        )
        fp = order.fingerprint()

        step = 0
        if run.resume == "auto":
            # Rank 0 verifies (checksums read every byte once); the others follow its choice.
            choice = (
                [str(find_latest_complete(run_dir, c.verify, report=say) or "")]
                if rank0
                else [None]
            )
            dist.broadcast_object_list(choice, src=0)
            resume_path = Path(choice[0]) if choice[0] else None
            if resume_path is None:
                say(
                    f"resume=auto: no complete checkpoint in {run_dir / 'checkpoints'}; starting fresh"
                )
        if resume_path is not None:
            meta = ckpt.load_full(resume_path, engine, optimizers)
            step = int(meta["step"])
            loader.load_state_dict(meta["data"])
            if meta["data"]["global_batch"] != t.global_batch_size:
                say(
                    f"note: global batch changed from {meta['data']['global_batch']} to "
                    f"{t.global_batch_size}; the data continues from sample {loader.consumed}"
                )
            why = [None]
            if rank0 and (run_dir / "data_order.json").exists():
                why = [
                    data_fingerprint_matches(
                        json.loads((run_dir / "data_order.json").read_text()), order
                    )
                ]
            dist.broadcast_object_list(why, src=0)  # every rank stops, not only rank 0
            if why[0]:
                raise ConfigError(
                    f"resume: the data or its order differs from the run's ({why[0]})"
                )
            say(f"resumed from {resume_path} at step {step} (sample {loader.consumed})")
        elif c.init_from:
            import torch.distributed.checkpoint as dcp

            from pretrain.checkpoint import MODEL_SUBDIR, _no_dist_ok

            sd = engine.model_state_dict()
            with _no_dist_ok():
                dcp.load(sd, checkpoint_id=str(Path(c.init_from) / MODEL_SUBDIR))
            engine.load_model_state_dict(sd)
            say(f"initialised weights from {c.init_from}")
        if rank0:
            (run_dir / "data_order.json").write_text(json.dumps(fp, indent=1))
            if step == 0:  # a fresh run owns the order log; a resumed one appends, cut to its step
                (run_dir / "data_order.jsonl").write_text("")
            else:
                _truncate_order_log(run_dir / "data_order.jsonl", step)
            say(describe_plan(run, layout))

        series = set(series_steps(c.series, t.max_steps))
        tokens_per_step = t.global_batch_size * t.seq_len

        def meta_now() -> dict:
            return {
                "tokens": step * tokens_per_step,
                "data": loader.state_dict(),
                "schedule": {
                    "name": run.schedule.name,
                    "step": step,
                    "lr": lr_at(max(step, 1), run.optim.lr, run.schedule, t.max_steps),
                },
                "seed": t.seed,
            }

        if step == 0 and 0 in series:
            ckpt.save_series(0, engine, c.series_dtype, meta_now())
        flops = training_flops_per_token(run.model, t.seq_len)
        metrics = MetricsLogger(
            run_dir,
            rank0,
            t.tensorboard,
            env.world_size,
            flops,
            device_peak_flops(device, t.peak_flops),
            device,
        )
        order_log = open(run_dir / "data_order.jsonl", "a") if rank0 else None
        from pretrain.preemption import Preemption

        # Slurm's USR1/TERM or a stop file: every rank agrees on a step, checkpoints it, leaves.
        preempt = Preemption(env.rank, env.world_size, device, log=say).install()
        from model_zoo.moe import update_expert_biases

        # From the config, not this rank's stages: the MoE bookkeeping below has collectives over
        # the pipeline ranks, which all must join, including a stage of dense layers only.
        has_moe = any(run.model.is_moe_layer(i) for i in range(run.model.n_layers))
        balancing = has_moe and run.model.moe.bias_update_speed > 0
        skipped, losses = 0, {}
        window: list[tuple[float, float]] = []
        last_full = step
        while step < t.max_steps:
            ckpt.poll()
            batch, rng = loader.next_batch()
            if on_batch is not None:
                on_batch(step + 1, batch, rng)
            lr = lr_at(step + 1, run.optim.lr, run.schedule, t.max_steps)
            set_lr(optimizers, lr)
            loss = engine.forward_backward(
                batch["inputs"],
                batch["labels"],
                batch.get("position_ids"),
                document_ids=batch["document_ids"] if run.data.intra_doc_mask else None,
            )
            gnorm = engine.clip_grad_norm(
                run.optim.grad_clip if run.optim.grad_clip > 0 else math.inf
            )
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                engine.zero_grad()
                what = f"loss {loss} / grad norm {gnorm} at step {step + 1} (samples {rng[0]}..{rng[1] - 1})"
                if t.nan_policy == "skip" and skipped < t.max_skipped_steps:
                    skipped += 1
                    say(
                        f"warning: {what}: update skipped ({skipped}/{t.max_skipped_steps}, "
                        "trainer.nan_policy=skip)"
                    )
                    step += 1
                    _log_order(order_log, step, rng, batch, engine, skipped=True)
                    continue
                # The weights are still those after step `step` (the bad update was not applied):
                # save them, so the run can be inspected or resumed with other settings.
                if step != last_full:
                    ckpt.save_full(step, engine, optimizers, meta_now())
                ckpt.wait()
                raise TrainingDiverged(
                    f"{what}; stopped (trainer.nan_policy={t.nan_policy}). The last good state "
                    f"(step {step}) is in {run_dir / 'checkpoints'}; inspect the batch with "
                    f"`pretrain analyze batch --run {run_dir} --step {step + 1}`, lower optim.lr, "
                    "or set trainer.nan_policy=skip"
                )
            for opt in optimizers:
                opt.step()
            engine.zero_grad()
            step += 1
            load = None
            if has_moe:
                log_load = step % t.log_interval == 0 or step == t.max_steps
                if log_load or balancing:  # not a collective per step when nothing reads them
                    # the whole batch's tokens per expert on every rank, as one process counts
                    engine.sum_expert_counts_over_dp()
                if log_load:
                    # every pipeline stage's MoE layers, in layer order, for rank 0's log
                    load = engine.gather_over_pp(expert_load(engine.model_parts) or {})
                    load = dict(sorted(load.items(), key=lambda kv: int(kv[0].split(".")[1])))
                # DeepSeek-V3 aux-loss-free balancing (a no-op unless bias_update_speed > 0):
                # the same update on every rank; it resets the counts for the next step.
                for part in engine.model_parts:
                    update_expert_biases(part)
            losses[step] = loss
            metrics.count(tokens_per_step)
            _log_order(order_log, step, rng, batch, engine)
            window.append((loss, gnorm))
            if step % t.log_interval == 0 or step == t.max_steps:
                extra = {
                    "tokens": step * tokens_per_step,
                    "skipped_steps": skipped,
                    "checkpoint_stall_s": ckpt.stall_s,
                }
                if load:
                    extra["expert_load"] = load
                    extra["expert_load_max_over_mean"] = max(max(v) * len(v) for v in load.values())
                metrics.log(
                    step,
                    {
                        "loss": loss,
                        "grad_norm": gnorm,
                        "lr": lr,
                        "loss_avg": sum(x for x, _ in window) / len(window),
                    },
                    extra,
                )
                window = []
            saved = False
            if step in series:
                ckpt.save_series(step, engine, c.series_dtype, meta_now())
                saved = True
            if (c.interval and step % c.interval == 0) or step == t.max_steps or step == stop_after:
                ckpt.save_full(
                    step,
                    engine,
                    optimizers,
                    meta_now(),
                    async_save=c.async_save and step != t.max_steps and step != stop_after,
                )
                last_full = step
                saved = True
            if saved:  # tokens/s measures training; the save time is in checkpoint_stall_s
                metrics.reset_window()
            if stop_after is not None and step >= stop_after:
                break
            if step < t.max_steps and preempt.should_stop(step):
                if last_full != step:
                    ckpt.save_full(step, engine, optimizers, meta_now())
                    last_full = step
                break
        ckpt.wait()
        from pretrain.checkpoint import full_dir

        preempt.finish(full_dir(run_dir, step))
        preempt.uninstall()
        if order_log:
            order_log.close()
        return {
            "step": step,
            "losses": losses,
            "skipped": skipped,
            "checkpoint_stall_s": ckpt.stall_s,
            "preempted_at": preempt.stopped_at,
        }
    finally:
        if preempt is not None:
            preempt.uninstall()
        if metrics is not None:
            metrics.close()
        if ckpt is not None and ckpt.pending is not None:
            try:
                ckpt.pending[0].result()  # never leave a background write running at exit
            except Exception:
                pass
        destroy_distributed()


def _log_order(fh, step, rng, batch, engine, skipped: bool = False) -> None:
    """One line per step: the global sample range and the hash of rank 0's token slice.
    `pretrain analyze batch` rebuilds the batch from the range and checks it against the hash."""
    if fh is None:
        return
    from pretrain.data.loader import batch_sha

    rec = {
        "step": step,
        "samples": list(rng),
        "rank0_samples": [rng[0], rng[0] + batch["inputs"].shape[0]],
        "rank0_sha": batch_sha(torch.cat([batch["inputs"], batch["labels"][:, -1:]], dim=1)),
    }
    if skipped:
        rec["skipped"] = True
    fh.write(json.dumps(rec) + "\n")
    fh.flush()


def _truncate_order_log(path: Path, step: int) -> None:
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


def main_train(argv: list[str]) -> int:
    import argparse

    from pretrain.config import compose_config

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
    from parallel.env import discover_env

    world = discover_env().world_size
    layout = plan(run, world)  # rejects a bad layout before any process group exists
    if args.dry_run or run.trainer.dry_run:
        from pretrain.series import series_steps

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
    except TrainingDiverged as err:
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
