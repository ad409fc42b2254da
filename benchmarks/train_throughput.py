"""Training throughput of any zoo model under any layout: tokens/s per device, TFLOP/s, MFU.

The step is the trainer's (parallel engine forward-backward, gradient clipping, AdamW, zero
grad), on random token ids; `--warmup` steps are run first (compilation, allocator warm-up),
then `--steps` timed steps between device synchronisations. MFU is reported twice:

* against the datasheet dense peak of the device (`pretrain.metrics.PEAK_FLOPS_BF16`, or
  `--peak-tflops`), the number papers quote;
* against a bf16 GEMM measured in the same run (`--gemm-size`^3, the practical ceiling of
  this device and software stack): the ratio says how far the model is from what a plain
  matmul reaches here.

Model FLOPs per token are `model_zoo.counting.training_flops_per_token`: 6 x (active
non-embedding parameters + output layer) + the attention score and value matmuls counted in
full (12 x layers x heads x head_dim x seq_len, not halved for causality: PaLM / Megatron
convention). One process, or one per device under torchrun:

    python benchmarks/train_throughput.py --model olmo2-1b --seq-len 4096 --micro-batch 2 \
        --precision bf16 --compile --json out.json
    torchrun --nproc-per-node 8 benchmarks/train_throughput.py --model llama3.1-8b \
        --seq-len 8192 --parallel dp_shard=8 --precision fp8_tensorwise --compile

On CPU it runs as well (a small model, gloo): the figures then measure the code path, not a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch

from configcore import ConfigError
from model_zoo.zoo import get_model_config, zoo_names
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
from parallel.parallelize import check_gpu_features
from pretrain.config import OptimizerConfig
from pretrain.metrics import device_peak_flops, flops_accounting
from pretrain.optim import build_optimizers

FP8_PEAK_FACTOR = 2.0  # Hopper/Ada datasheets: dense FP8 peak = 2 x dense bf16 peak


def parse_overrides(items: list[str]) -> dict:
    """key=value pairs for ParallelConfig (ints and booleans parsed)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--parallel {item!r}: expected key=value, e.g. tp=2")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = value
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_tflops(device: torch.device, size: int, repeats: int = 10) -> float:
    """Achieved TFLOP/s of a bf16 size x size x size matmul on this device (median of repeats)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2 * size**3 / times[len(times) // 2] / 1e12


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9}
    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def build(args, env, device):
    cfg = get_model_config(args.model)
    cfg = dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, args.seq_len))
    fields = parse_overrides(args.parallel)
    fields.update(precision=args.precision, compile=args.compile)
    if args.fp8_filter:
        fields["fp8_filter"] = args.fp8_filter
    pcfg = ParallelConfig(**fields).validate()
    gbs = args.global_batch or args.micro_batch * env.world_size
    layout = resolve_layout(pcfg, env.world_size, cfg, gbs, args.micro_batch, args.seq_len)
    check_gpu_features(cfg, pcfg, layout, device.type)
    mesh = build_mesh(layout, device.type)
    engine = build_engine(cfg, pcfg, layout, mesh, device, seed=0)
    optimizers = build_optimizers(engine.model_parts, OptimizerConfig(lr=1e-4), device)
    return cfg, layout, engine, optimizers


def run(args) -> dict:
    env = discover_env()
    if env.launcher == "single":  # as the trainer: a free port, so concurrent runs never collide
        env.master_port = free_port()
    device = init_distributed(env, resolve_device_type(args.device))
    try:
        cfg, layout, engine, optimizers = build(args, env, device)
        gen = torch.Generator().manual_seed(env.rank)
        shape = (layout.local_batch_size, args.seq_len + 1)
        tokens = torch.randint(0, cfg.vocab_size, shape, generator=gen)
        inputs, labels = tokens[:, :-1], tokens[:, 1:]

        def step():
            engine.forward_backward(inputs, labels, sync=False)
            engine.clip_grad_norm(1.0, sync=False)
            for opt in optimizers:
                opt.step()
            engine.after_optimizer_step_fp8()
            engine.zero_grad()

        for _ in range(args.warmup):
            step()
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        elapsed = time.perf_counter() - t0
        gemm = gemm_tflops(device, args.gemm_size)
        return report(args, cfg, layout, device, env.world_size, elapsed, gemm)
    finally:
        destroy_distributed()


def report(args, cfg, layout, device, world: int, elapsed: float, gemm: float) -> dict:
    flops = flops_accounting(cfg, args.seq_len)
    tokens_per_s = layout.global_batch_size * args.seq_len * args.steps / elapsed / world
    achieved = tokens_per_s * flops["flops_per_token"] / 1e12
    peak = device_peak_flops(device, args.peak_tflops * 1e12)
    out = {
        "model": args.model,
        "layout": layout.describe(),
        "precision": layout.precision,
        "compile": layout.compile,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world,
        "seq_len": args.seq_len,
        "global_batch": layout.global_batch_size,
        "timed_steps": args.steps,
        "step_s": elapsed / args.steps,
        "tokens_per_s_per_device": tokens_per_s,
        "tflops_per_device": achieved,
        "gemm_bf16_tflops": gemm,
        "mfu_vs_gemm": achieved / gemm,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "mfu": achieved * 1e12 / peak if peak else None,
        **flops,
        **peak_memory(device),
    }
    if peak and layout.precision.startswith("fp8"):
        out["mfu_vs_fp8_peak"] = achieved * 1e12 / (peak * FP8_PEAK_FACTOR)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama3-tiny", help="zoo name (see `pretrain zoo`)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=0, help="0: micro-batch x world size")
    p.add_argument("--precision", default="bf16", help="fp32, bf16, fp8_tensorwise, fp8_rowwise")
    p.add_argument("--fp8-filter", default="", help="divisible or auto (parallel.fp8_filter)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--parallel", nargs="*", default=[], help="ParallelConfig key=value, e.g. tp=2")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--gemm-size", type=int, default=0, help="0: 8192 on CUDA, 512 on CPU")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="0: the datasheet table")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", default="", help="also write the result to this file")
    args = p.parse_args(argv)
    if args.model not in zoo_names():
        p.error(f"--model {args.model!r} is not in the zoo; choose one of {zoo_names()}")
    for key in ("seq_len", "micro_batch", "steps"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.gemm_size == 0:
        args.gemm_size = 8192 if resolve_device_type(args.device) == "cuda" else 512
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        result = run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if discover_env().rank == 0:
        print(json.dumps(result, indent=1))
        print(
            f"{args.model} {result['precision']} compile={result['compile']}: "
            f"{result['tokens_per_s_per_device']:,.0f} tok/s/device, "
            f"{result['tflops_per_device']:.1f} TFLOP/s, "
            f"{result['mfu_vs_gemm']:.2f} of the measured bf16 GEMM "
            f"({result['gemm_bf16_tflops']:.1f} TFLOP/s)"
            + (f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else "")
        )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
