"""What the spike detector costs a training step (pretrain/spikes.py).

The detector records the token cross-entropy of every micro-batch from the training forward (one
more cross-entropy over the logits, under no_grad) and gathers the rows only at log steps and
spikes. This times the engine's step (forward-backward, clipping, AdamW) with and without the
recording, the two interleaved step by step so that drift on a shared machine hits both alike,
and the log-step gather (rows of the global batch, one all-reduce) against the step:

    python benchmarks/spike_overhead.py --model llama3-tiny --vocab 32768 --seq-len 256 \
        --micro-batch 4 --accumulation 4 --steps 20

A large vocabulary relative to the model is the detector's worst case (the extra cross-entropy
scales with tokens x vocabulary, the step with the model). One process (any device).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from model_zoo.zoo import get_model_config
from parallel.config import ParallelConfig
from parallel.engine import build_engine
from parallel.env import (
    destroy_distributed,
    discover_env,
    free_port,
    init_distributed,
    resolve_device_type,
)
from parallel.layout import build_mesh, resolve_layout
from pretrain.config import OptimizerConfig
from pretrain.optim import build_optimizers
from pretrain.spikes import RowLosses


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3-tiny")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--accumulation", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    env = discover_env()
    env.master_port = free_port()
    device = init_distributed(env, resolve_device_type(args.device))
    try:
        cfg = get_model_config(args.model)
        cfg = dataclasses.replace(
            cfg, vocab_size=args.vocab, max_seq_len=max(cfg.max_seq_len, args.seq_len)
        )
        pcfg = ParallelConfig().validate()
        gbs = args.micro_batch * args.accumulation
        layout = resolve_layout(pcfg, 1, cfg, gbs, args.micro_batch, args.seq_len)
        engine = build_engine(cfg, pcfg, layout, build_mesh(layout, device.type), device, seed=0)
        optimizers = build_optimizers(engine.model_parts, OptimizerConfig(lr=1e-4), device)
        tokens = torch.randint(0, cfg.vocab_size, (gbs, args.seq_len + 1))
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        recorder = RowLosses(engine)  # wraps the loss function; records only while armed

        def step(armed: bool) -> float:
            sync(device)
            t0 = time.perf_counter()
            if armed:
                recorder.start()
            engine.forward_backward(inputs, labels, sync=False)
            engine.clip_grad_norm(1.0, sync=False)
            chunks = recorder.take()
            for opt in optimizers:
                opt.step()
            engine.zero_grad()
            sync(device)
            step.chunks = chunks
            return time.perf_counter() - t0

        for armed in (False, True, False, True):  # warm-up: allocator, first-call paths
            step(armed)
        plain, recorded = [], []
        for _ in range(args.steps):
            plain.append(step(False))
            recorded.append(step(True))
        gathers = []
        for _ in range(args.steps):
            sync(device)
            t0 = time.perf_counter()
            recorder.rows(step.chunks, gbs)
            gathers.append(time.perf_counter() - t0)
        p, r, g = (statistics.median(x) for x in (plain, recorded, gathers))
        print(
            f"{args.model} vocab {args.vocab}, {gbs} x {args.seq_len} tokens per step "
            f"({args.accumulation} micro-batches of {args.micro_batch}), {device.type}, median of "
            f"{args.steps}: step {p * 1e3:.1f} ms without recording, {r * 1e3:.1f} ms with: "
            f"ratio {r / p:.3f}; log-step gather {g * 1e3:.2f} ms = {g / p:.4f} of a step"
        )
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
