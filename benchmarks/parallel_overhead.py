"""Step time of each parallel layout on CPU relative to the single process, same global batch.

Each layout runs the real engine (gloo, one process per rank, launched here with torchrun's
variables) for warm-up + timed steps of forward_backward + clip + AdamW on the same global batch
of real text; the table prints the median step time divided by the single-process median (1.00 is
no overhead). On a CPU box with fewer cores than ranks the ratio mixes communication overhead
with oversubscription: it is a regression detector for the engine, not a scaling study.

    python benchmarks/parallel_overhead.py [--steps 5] [--seq-len 64] [--global-batch 8]
                                           [--layouts TP2,PP2-1F1B,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

from parallel.env import run_local_ranks

ROOT = Path(__file__).resolve().parents[1]

DENSE = ("llama3-tiny", {"n_layers": 4})
MOE = ("deepseek-v2-lite-tiny", {})
# name -> (world size, ParallelConfig fields, model)
LAYOUTS = {
    "single": (1, {}, DENSE),
    "TP2": (2, {"tp": 2}, DENSE),
    "TP4-KV-replicated": (4, {"tp": 4}, DENSE),  # llama3-tiny has 2 KV heads: each on 2 ranks
    "PP2-1F1B": (2, {"pp": 2, "pp_schedule": "1F1B"}, DENSE),
    "PP2-Interleaved1F1B": (2, {"pp": 2, "pp_schedule": "Interleaved1F1B"}, DENSE),
    "PP2-ZBV": (2, {"pp": 2, "pp_schedule": "ZBVZeroBubble"}, DENSE),
    "FSDP-DP2": (2, {"dp_shard": 2}, DENSE),
    "FSDP-DP4": (4, {"dp_shard": 4}, DENSE),
    "HSDP-2x2": (4, {"dp_replicate": 2, "dp_shard": 2}, DENSE),
    "TP2xPP2xDP2": (8, {"tp": 2, "pp": 2}, DENSE),
    "single-bf16": (1, {"precision": "bf16"}, DENSE),
    "TP2xPP2xDP2-bf16": (8, {"tp": 2, "pp": 2, "precision": "bf16"}, DENSE),
    "moe-single": (1, {}, MOE),
    "moe-EP2": (2, {"ep": 2}, MOE),
    "moe-EP2xTP2": (4, {"ep": 2, "tp": 2}, MOE),
    # context parallel (alltoall: DeepSpeed-Ulysses; the ring style needs CUDA)
    "CP2": (2, {"cp": 2}, DENSE),
    "CP2xTP2": (4, {"cp": 2, "tp": 2}, DENSE),
    "CP2xDP2": (4, {"cp": 2, "dp_shard": 2}, DENSE),
    "CP4": (4, {"cp": 4}, DENSE),
    "moe-CP2": (2, {"cp": 2}, MOE),
}
BASELINE = {
    "single-bf16": "single-bf16",
    "TP2xPP2xDP2-bf16": "single-bf16",
    "moe-single": "moe-single",
    "moe-EP2": "moe-single",
    "moe-EP2xTP2": "moe-single",
    "moe-CP2": "moe-single",
}


def worker(args) -> None:
    """One rank: build the engine for the layout and time its steps; rank 0 prints JSON."""
    import torch

    from model_zoo.zoo import get_model_config
    from parallel.config import ParallelConfig
    from parallel.engine import build_engine
    from parallel.env import destroy_distributed, discover_env, init_distributed
    from parallel.layout import build_mesh, resolve_layout
    from pretrain.config import OptimizerConfig
    from pretrain.optim import build_optimizers

    world, fields, (model, overrides) = LAYOUTS[args.worker]
    env = discover_env()
    device = init_distributed(env, "cpu", timeout_s=300)
    cfg = dataclasses.replace(get_model_config(model), **overrides)
    pcfg = ParallelConfig(**fields)
    layout = resolve_layout(
        pcfg, env.world_size, cfg, args.global_batch, args.micro_batch, args.seq_len
    )
    engine = build_engine(cfg, pcfg, layout, build_mesh(layout, "cpu"), device, seed=0)
    # the optimizers `pretrain train` builds (one AdamW per model part, its weight-decay rule)
    ocfg = OptimizerConfig(lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.999, fused="false")
    optimizers = build_optimizers(engine.model_parts, ocfg, device)
    data = _text(args.warmup + args.steps, args.global_batch, args.seq_len)
    lo = engine.dp_rank * layout.local_batch_size
    times = []
    for step in range(args.warmup + args.steps):
        batch = data[step, lo : lo + layout.local_batch_size]
        torch.distributed.barrier()  # time the slowest rank: everyone starts together
        t0 = time.perf_counter()
        engine.forward_backward(batch[:, :-1], batch[:, 1:])
        engine.clip_grad_norm(1.0)
        for opt in optimizers:
            opt.step()
        engine.zero_grad()
        torch.distributed.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    if env.rank == 0:
        print("RESULT " + json.dumps({"median_s": statistics.median(times)}), flush=True)
    destroy_distributed()


def _text(steps: int, gbs: int, seq: int):
    import gzip

    import torch

    need = steps * gbs * (seq + 1)
    buf = bytearray()
    with gzip.open(ROOT / "data_pipeline" / "samples" / "manpages_en.jsonl.gz", "rt") as f:
        for line in f:
            buf += json.loads(line)["text"].encode() + b"\n"
            if len(buf) >= need:
                break
    return torch.tensor(list(buf[:need]), dtype=torch.long).view(steps, gbs, seq + 1)


def run_layout(name: str, args) -> float:
    world = LAYOUTS[name][0]
    pythonpath = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", name] + _passthrough(args)
    ranks = run_local_ranks(cmd, world, {"PYTHONPATH": pythonpath})
    codes, out = [c for c, _ in ranks], [o for _, o in ranks]
    if any(codes):
        raise SystemExit(
            f"{name}: exit codes {codes}\n{out[codes.index(next(c for c in codes if c))][-3000:]}"
        )
    line = next(l for l in out[0].splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])["median_s"]


def _passthrough(args) -> list[str]:
    return [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--seq-len",
        str(args.seq_len),
        "--global-batch",
        str(args.global_batch),
        "--micro-batch",
        str(args.micro_batch),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    names = [n for n in args.layouts.split(",") if n]
    for n in names:
        if n not in LAYOUTS:
            raise SystemExit(f"unknown layout {n}; known: {', '.join(LAYOUTS)}")
    needed = {BASELINE.get(n, "single") for n in names} | set(names)
    order = [n for n in LAYOUTS if n in needed]
    medians = {}
    for n in order:
        t0 = time.time()
        medians[n] = run_layout(n, args)
        print(
            f"  {n:<22} world {LAYOUTS[n][0]}: median step {medians[n] * 1000:8.1f} ms "
            f"({time.time() - t0:.0f}s incl. start-up)",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"\nglobal batch {args.global_batch} x {args.seq_len} tokens, micro-batch "
        f"{args.micro_batch}, median of {args.steps} steps after {args.warmup} warm-up; "
        f"{os.cpu_count()} CPU cores"
    )
    print("| layout | world | model | step ms | x single process |")
    print("|---|---|---|---|---|")
    for n in order:
        base = BASELINE.get(n, "single")
        print(
            f"| {n} | {LAYOUTS[n][0]} | {LAYOUTS[n][2][0]} | {medians[n] * 1000:.1f} | "
            f"{medians[n] / medians[base]:.2f} (vs {base}) |"
        )


if __name__ == "__main__":
    main()
