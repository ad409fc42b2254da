"""Context parallel on CUDA: both styles against the single-process CPU reference (>= 2 GPUs).

The ring style (torch's context_parallel: ring attention with the head-tail load balancer) has no
CPU path, so its parity runs here instead of in tests/parallel/test_parity_context.py: the dense
llama3-tiny (4 layers, GQA) of the parity tests, the same seed and man-page text, AdamW, clipping
at 1.0, 10 steps, under cp=2 with cp_style=ring and with cp_style=alltoall (DeepSpeed-Ulysses over
NCCL), each against reference_run on the CPU at gpu_checks' CUDA tolerance (1e-4: cuBLAS and the
fused attention kernels sum in other orders than the CPU's; TF32 off).

    python -m torch.distributed.run --nproc-per-node=2 -m benchmarks.cp_ring_parity --json cp.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from model_zoo.zoo import get_model_config
from parallel.config import ParallelConfig
from parallel.engine import build_engine
from parallel.env import destroy_distributed, discover_env, init_distributed
from parallel.layout import build_mesh, resolve_layout
from pretrain.parity.gpu_checks import CUDA_TOL, GBS, MICRO, SEQ
from pretrain.parity.harness import (
    build_optimizers,
    max_rel_param_diff,
    reference_run,
    rel,
    text_batches,
)

SEED = 6  # test_parity.DENSE_SEED: a calm yardstick for this model
STYLES = ("ring", "alltoall")


def cp_run(cfg, style: str, world: int, steps: int, device) -> dict:
    """The parity worker's loop with cp = world (every rank one cp shard of the same batch)."""
    pcfg = ParallelConfig(cp=world, cp_style=style, device="cuda")
    layout = resolve_layout(pcfg, world, cfg, GBS, MICRO, SEQ)
    engine = build_engine(cfg, pcfg, layout, build_mesh(layout, "cuda"), device, seed=SEED)
    optimizers = build_optimizers(engine.model_parts, 1e-3)
    data = text_batches(steps, GBS, SEQ)
    losses, norms = [], []
    for step in range(steps):
        losses.append(engine.forward_backward(data[step, :, :-1], data[step, :, 1:]))
        norms.append(engine.clip_grad_norm(1.0))
        for opt in optimizers:
            opt.step()
        engine.zero_grad()
    return {
        "layout": layout.describe(),
        "losses": losses,
        "grad_norms": norms,
        "params": engine.full_state_dict(),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", default="", help="write the result to this file (rank 0)")
    args = p.parse_args(argv)
    env = discover_env()
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2 or env.world_size < 2:
        print(
            "cp_ring_parity.py needs >= 2 CUDA GPUs and >= 2 ranks (torchrun "
            "--nproc-per-node=2): cp=2 puts one shard of every sequence on each GPU",
            file=sys.stderr,
        )
        raise SystemExit(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = init_distributed(env, "cuda")
    cfg = dataclasses.replace(get_model_config("llama3-tiny"), n_layers=4)
    cases = []
    try:
        ref = (
            reference_run(cfg, args.steps, GBS, SEQ, seed=SEED, precision="fp32")
            if env.rank == 0
            else None
        )
        for style in STYLES:
            got = cp_run(cfg, style, env.world_size, args.steps, device)
            if env.rank != 0:
                continue
            diff = {
                "loss": max(rel(a, b) for a, b in zip(got["losses"], ref["losses"])),
                "grad_norm": max(rel(a, b) for a, b in zip(got["grad_norms"], ref["grad_norms"])),
                "params": max_rel_param_diff(got["params"], ref["params"]),
            }
            ok = max(diff.values()) < CUDA_TOL
            cases.append({"case": f"cp={env.world_size} {style}", **diff, "pass": ok})
            print(
                f"cp={env.world_size} {style:<9} loss {diff['loss']:.1e} grad-norm "
                f"{diff['grad_norm']:.1e} params {diff['params']:.1e} "
                f"{'ok' if ok else 'FAIL'} [{got['layout']}]",
                flush=True,
            )
    finally:
        destroy_distributed()
    if env.rank != 0:
        return
    result = {"check": "cp_parity", "steps": args.steps, "tolerance": CUDA_TOL, "cases": cases}
    result["pass"] = all(c["pass"] for c in cases)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    raise SystemExit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
