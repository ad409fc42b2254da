"""Checkpoint cost as ratios to one training step (CPU, one process).

Measures, for a small Llama-like model trained by the real engine and optimizer:
  * one training step (forward + backward + AdamW), the unit of every ratio;
  * a full checkpoint (model + AdamW state, DCP, manifest with sha256) saved synchronously;
  * the same saved with async_save: the time the training thread is blocked (staging), the time
    until the checkpoint is complete, and the slowdown of the steps that run while it is written;
  * loading the full checkpoint (DCP, into the engine and optimizer);
  * a weights-only series checkpoint in bf16.

    .venv/bin/python benchmarks/checkpoint.py [--d-model 256 --layers 4 --vocab 8192 --steps 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="steps timed for the baseline")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: the async writer gets the other core, as a GPU job's "
        "training thread leaves the CPU to it)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from parallel.engine import build_engine
    from parallel.env import DistEnv, destroy_distributed, free_port, init_distributed
    from parallel.layout import build_mesh
    from pretrain.checkpoint import CheckpointManager, full_dir
    from pretrain.config import compose_config
    from pretrain.optim import build_optimizers
    from pretrain.train import plan

    run = compose_config(
        [
            "model=llama3-tiny",
            f"model.d_model={args.d_model}",
            f"model.n_layers={args.layers}",
            "model.n_heads=8",
            "model.n_kv_heads=4",
            f"model.ffn_hidden_size={args.d_model * 3}",
            f"model.vocab_size={args.vocab}",
            f"model.max_seq_len={args.seq_len}",
            f"model.rope_scaling.original_max_position={args.seq_len}",
            f"trainer.seq_len={args.seq_len}",
            f"trainer.global_batch_size={args.batch}",
            f"trainer.micro_batch_size={args.batch}",
            "schedule.warmup_steps=0",
        ]
    )
    layout = plan(run, 1)
    device = init_distributed(DistEnv(master_port=free_port()), "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="ckpt_bench_"))
    try:
        engine = build_engine(
            run.model, run.parallel, layout, build_mesh(layout, "cpu"), device, seed=0
        )
        opts = build_optimizers(engine.model_parts, run.optim, device)
        n_params = sum(p.numel() for _, p in engine.named_parameters())
        gen = torch.Generator().manual_seed(0)
        data = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=gen)

        def step() -> float:
            t0 = time.perf_counter()
            engine.forward_backward(data[:, :-1], data[:, 1:])
            engine.clip_grad_norm(1.0)
            for o in opts:
                o.step()
            engine.zero_grad()
            return time.perf_counter() - t0

        step()  # warm-up (allocations, optimizer state)
        base = statistics.median(step() for _ in range(args.steps))
        run.run_dir = str(tmp)
        mgr = CheckpointManager(tmp, run, log=lambda *_: None)
        meta = {"tokens": 0, "data": {"consumed_samples": 0, "global_batch": args.batch}}

        t0 = time.perf_counter()
        mgr.save_full(1, engine, opts, meta)
        sync_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in full_dir(tmp, 1).rglob("*") if f.is_file())

        t0 = time.perf_counter()
        mgr.save_full(2, engine, opts, meta, async_save=True)
        blocked_s = time.perf_counter() - t0
        during = []
        while mgr.pending is not None and not mgr.pending[0].done():
            during.append(step())
        mgr.wait()
        async_total_s = time.perf_counter() - t0
        # the same number of steps right after, so a drift of the machine's load cancels out
        after = [step() for _ in range(max(len(during), 1))]

        t0 = time.perf_counter()
        mgr.load_full(full_dir(tmp, 1), engine, opts)
        load_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        mgr.save_series(3, engine, "bfloat16", meta)
        series_s = time.perf_counter() - t0
        series_bytes = sum(
            f.stat().st_size for f in (tmp / "series" / "step3").rglob("*") if f.is_file()
        )

        slowdown = (statistics.mean(during) / statistics.mean(after)) if during else float("nan")
        print(
            f"model: {n_params:,} parameters (d_model {args.d_model}, {args.layers} layers, vocab "
            f"{args.vocab}); step: batch {args.batch} x {args.seq_len}, fp32, "
            f"{torch.get_num_threads()} threads"
        )
        print(f"one training step (median of {args.steps}): {base * 1e3:.0f} ms = 1.00")
        rows = [
            ("full checkpoint, sync save", sync_s, f"{size / 1e6:.1f} MB"),
            ("full checkpoint, async save: training thread blocked", blocked_s, ""),
            (
                "full checkpoint, async save: until complete",
                async_total_s,
                f"{len(during)} steps ran meanwhile",
            ),
            ("full checkpoint, load (DCP into engine + optimizer)", load_s, ""),
            (
                "series checkpoint (weights, bf16), sync save",
                series_s,
                f"{series_bytes / 1e6:.1f} MB",
            ),
        ]
        print("| what | seconds | x one step | note |\n|---|---|---|---|")
        for name, sec, note in rows:
            print(f"| {name} | {sec:.3f} | {sec / base:.2f} | {note} |")
        print(
            f"| a step while the async write runs / a step right after | "
            f"{statistics.mean(during) if during else float('nan'):.3f} / {statistics.mean(after):.3f} "
            f"| {slowdown:.2f} | slowdown of training during the background write |"
        )
        print(
            f"bytes per parameter: full {size / n_params:.2f} (fp32 weights + 2 AdamW moments = 12), "
            f"series {series_bytes / n_params:.2f} (bf16 = 2)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        destroy_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
