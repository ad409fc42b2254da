"""Activation memory per rank against sequence length under context parallel (cp = 1, 2, 4).

Measured, not modelled: for every (seq_len, cp), cp real gloo ranks (launched here with
torchrun's variables) build the engine for parallel.cp=<cp> (alltoall: DeepSpeed-Ulysses), and
each runs one forward and backward of one sequence under torch's MemTracker
(torch.distributed._tools.mem_tracker), which follows every tensor the step allocates on the CPU
and files it as parameter, gradient, activation (kept for backward, or recomputed) or temporary
(backward's transients). The table gives the largest rank's peak activation bytes and its ratio
to cp=1 at the same length (ideal: 1/cp), and the peak of activations + temporaries (what the
all-to-all buffers add to). Real ranks rather than the planner's fake-tensor probes
(parallel/planner/memory.py): the all-to-all and its buffers are measured, not modelled.

    python benchmarks/cp_memory.py [--seq-lens 512,1024,2048,4096] [--cps 1,2,4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from parallel.env import run_local_ranks

ROOT = Path(__file__).resolve().parents[1]
# llama3-tiny (4 query / 2 KV heads, d_model 64) with room for long sequences
MODEL, OVERRIDES = "llama3-tiny", {"n_layers": 4, "max_seq_len": 8192}


def worker(args) -> None:
    """One rank: one forward + backward of one sequence under MemTracker; prints JSON."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from model_zoo.zoo import get_model_config
    from parallel.config import ParallelConfig
    from parallel.engine import build_engine
    from parallel.env import destroy_distributed, discover_env, init_distributed
    from parallel.layout import build_mesh, resolve_layout
    from pretrain.parity.harness import text_batches

    env = discover_env()
    device = init_distributed(env, "cpu", timeout_s=600)
    cfg = dataclasses.replace(get_model_config(MODEL), **OVERRIDES)
    pcfg = ParallelConfig(cp=env.world_size)
    layout = resolve_layout(pcfg, env.world_size, cfg, 1, 1, args.seq_len)
    engine = build_engine(cfg, pcfg, layout, build_mesh(layout, "cpu"), device, seed=0)
    batch = text_batches(2, 1, args.seq_len)
    engine.forward_backward(batch[0, :, :-1], batch[0, :, 1:])  # warm-up: lazy state, caches
    engine.zero_grad()
    tracker = MemTracker()
    tracker.track_external(*engine.model_parts)
    with tracker:
        engine.forward_backward(batch[1, :, :-1], batch[1, :, 1:])
    peak = tracker.get_tracker_snapshot("peak")
    cpu = next(v for k, v in peak.items() if torch.device(k).type == "cpu")
    mine = {"act": cpu.get("Activation", 0), "act_tmp": cpu.get("Activation", 0)}
    mine["act_tmp"] += cpu.get("Temp", 0)
    gathered = [None] * env.world_size
    torch.distributed.all_gather_object(gathered, mine)
    if env.rank == 0:
        worst = {k: max(g[k] for g in gathered) for k in mine}
        print("RESULT " + json.dumps(worst), flush=True)
    destroy_distributed()


def run(seq_len: int, cp: int) -> dict:
    pythonpath = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", "--seq-len", str(seq_len)]
    ranks = run_local_ranks(cmd, cp, {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"})
    codes, logs = [c for c, _ in ranks], [out for _, out in ranks]
    if any(codes):
        bad = next(i for i, c in enumerate(codes) if c)
        raise SystemExit(f"seq {seq_len} cp {cp}: exit codes {codes}\n{logs[bad][-3000:]}")
    line = next(x for x in logs[0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seq-lens", default="512,1024,2048,4096")
    ap.add_argument("--cps", default="1,2,4")
    ap.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    seqs = [int(s) for s in args.seq_lens.split(",")]
    cps = [int(c) for c in args.cps.split(",")]
    if 1 not in cps:
        raise SystemExit("--cps must include 1: the ratios are to cp=1")
    cases = [(s, c) for s in seqs for c in cps]
    results = {}
    for s, c in tqdm(cases, desc="seq_len x cp", unit="run"):
        results[s, c] = run(s, c)
    print(
        f"\n{MODEL} {OVERRIDES}, one sequence, fp32, cp_style=alltoall; peak bytes of the "
        f"largest rank (torch MemTracker)"
    )
    print("| seq_len | cp | activations MiB | x cp=1 | activations + temporaries MiB | x cp=1 |")
    print("|---|---|---|---|---|---|")
    for s, c in cases:
        r, base = results[s, c], results[s, 1]
        print(
            f"| {s} | {c} | {r['act'] / 2**20:.2f} | {r['act'] / base['act']:.2f} | "
            f"{r['act_tmp'] / 2**20:.2f} | {r['act_tmp'] / base['act_tmp']:.2f} |"
        )


if __name__ == "__main__":
    main()
