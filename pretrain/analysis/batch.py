"""`pretrain analyze batch` and `pretrain analyze series`: what a step consumed, what was saved.

batch --run DIR --step N [--out FILE.npz] [--show K]
    the global batch that step N consumed: token ids, and for each token the source, the
    document id within the source and the offset in that document; rebuilt from the run's
    config.yaml and data_order.jsonl and checked against the hash training logged.
series --run DIR
    the checkpoints of the run (the index): step, tokens, kind, size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from configcore import ConfigError
from pretrain.analysis.common import load_run, read_order_log
from pretrain.checkpoint import read_index
from pretrain.data.loader import batch_sha, build_data_order, data_fingerprint_matches, global_batch
from pretrain.series import format_bytes


def step_record(run_dir: Path, step: int) -> dict:
    rec = read_order_log(run_dir).get(step)
    if rec is None:
        raise ConfigError(
            f"step {step} is not in {Path(run_dir) / 'data_order.jsonl'}; the run consumed steps "
            "1..last recorded (step N is the N-th optimizer step; step 0 consumed no batch)"
        )
    return rec


def batch_of_step(run_dir: Path, step: int) -> dict:
    """The global batch of `step` exactly as training consumed it, with provenance."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    rec = step_record(run_dir, step)
    order = build_data_order(run)
    saved_fp = run_dir / "data_order.json"
    if saved_fp.exists():
        why = data_fingerprint_matches(json.loads(saved_fp.read_text()), order)
        if why:
            raise ConfigError(f"cannot rebuild step {step}: {why}")
    start, end = rec["samples"]
    batch, samples = global_batch(order, start, end, run.data.reset_position_ids)
    r0, r1 = rec["rank0_samples"]
    tokens = np.stack([s.tokens for s in samples])
    rank0 = tokens[r0 - start : r1 - start]
    if batch_sha(torch.from_numpy(rank0)) != rec["rank0_sha"]:
        raise ConfigError(
            f"the rebuilt batch of step {step} does not hash to what training logged "
            "(the data files changed since the run?)"
        )
    return {
        "step": step,
        "samples": np.arange(start, end),
        "tokens": tokens,
        "source": np.array([s.source for s in samples]),
        "doc_ids": np.stack([s.docs for s in samples]),
        "doc_offsets": np.stack([s.offsets for s in samples]),
        "sources": [src.name for src in order.sources],
        "order": order,
        "skipped": bool(rec.get("skipped", False)),
        # a spike rollback's skip (spike.skip_batches) of these samples just before this step
        "skipped_before": rec.get("skipped_samples"),
    }


def cmd_batch(args) -> int:
    out = batch_of_step(Path(args.run), args.step)
    order = out.pop("order")
    if args.out:
        np.savez(
            args.out,
            **{k: v for k, v in out.items() if isinstance(v, np.ndarray)},
            sources=np.array(out["sources"]),
            step=out["step"],
        )
        print(
            f"saved step {args.step}: {out['tokens'].shape[0]} sequences x "
            f"{out['tokens'].shape[1]} tokens -> {args.out}"
        )
    print(
        f"step {out['step']}: global samples {out['samples'][0]}..{out['samples'][-1]} "
        f"({len(out['samples'])} sequences of {out['tokens'].shape[1]} tokens)"
        f"{' [update skipped: non-finite loss]' if out['skipped'] else ''}; hash verified"
    )
    if out["skipped_before"]:
        a, b = out["skipped_before"]
        print(f"  samples {a}..{b - 1} of the order were skipped before it (spike rollback)")
    for i in range(min(args.show, len(out["samples"]))):
        s = int(out["source"][i])
        docs = out["doc_ids"][i]
        firsts = [0] + [j for j in range(1, len(docs)) if docs[j] != docs[j - 1]]
        parts = []
        for j in firsts:
            loc = order.sources[s].locate(int(docs[j]))
            parts.append(
                f"doc {int(docs[j])} ({Path(loc.file).name}#{loc.index}) from offset "
                f"{int(out['doc_offsets'][i][j])} at position {j}"
            )
        toks = " ".join(map(str, out["tokens"][i][:16]))
        print(
            f"  sample {int(out['samples'][i])} [source {s}: {out['sources'][s]}]: {'; '.join(parts)}"
        )
        print(f"    tokens: {toks} ...")
    return 0


def cmd_series(args) -> int:
    entries = read_index(Path(args.run))
    if not entries:
        print(f"{args.run}: no checkpoints in the index")
        return 1
    print(f"{'step':>8} {'tokens':>14} {'kind':<8} {'size':>10}  path")
    for e in entries:
        print(
            f"{e['step']:>8} {e['tokens']:>14,} {e['kind']:<8} {format_bytes(e['bytes']):>10}  {e['path']}"
        )
    total = sum(e["bytes"] for e in entries)
    print(f"{len(entries)} checkpoints, {format_bytes(total)}")
    return 0


def add_parsers(sub) -> None:
    b = sub.add_parser("batch", help="the global batch of one step, as training consumed it")
    b.add_argument("--run", required=True)
    b.add_argument("--step", type=int, required=True)
    b.add_argument("--out", help="save tokens, doc ids and offsets to this .npz")
    b.add_argument("--show", type=int, default=4, help="sequences to print (default 4)")
    b.set_defaults(func=cmd_batch)
    s = sub.add_parser("series", help="list the run's checkpoints")
    s.add_argument("--run", required=True)
    s.set_defaults(func=cmd_series)
