"""One rank of the attention-kernel parity runs (launched by harness.launch, with
WORKER pointed here by tests/parallel/test_parity_attention.py::test_flex_attention_tp2_pp2).

Spec: as parallel_worker's ("model", "model_overrides", "global_batch", "micro_batch",
"seq_len", "seed", "runs"), each run with "parallel" and "model_overrides" of its own and a
"mode": "forward" (the sum of token CE over the global batch of packed documents, forward only:
torch 2.13's FlexAttention has no CPU backward) or "train" (losses and grad norms of "steps"
training steps on packed documents, and the final parameters). Rank 0 writes run<i>.pt.
"""

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from model_zoo.zoo import get_model_config
from parallel.config import ParallelConfig
from parallel.engine import _to_local_scalar, build_engine
from parallel.env import destroy_distributed, discover_env, init_distributed
from parallel.layout import build_mesh, resolve_layout
from pretrain.parity.harness import build_optimizers, packed_ids, text_batches


@torch.no_grad()
def forward_sum(engine, inputs, labels, doc, pos) -> float:
    """Sum of token CE of this dp rank's batch with the document mask, summed over ranks."""
    engine._denominator = 1.0  # the loss function then returns sums
    kwargs = {"position_ids": pos, "document_ids": doc}
    with engine._loss_context():
        if engine.layout.pp > 1:
            total = engine._run_schedule(engine._eval_schedule().eval, inputs, labels, kwargs)
        else:
            logits = engine.model_parts[0](inputs, **kwargs)
            total = _to_local_scalar(engine._loss_fn(logits, labels))
    if not engine.reports_loss:
        total.zero_()
    dist.all_reduce(total)
    return float(total)


def train(engine, data, lo, n, steps):
    optimizers = build_optimizers(engine.model_parts, 1e-3)
    losses, norms = [], []
    for step in range(steps):
        batch = data[step, lo : lo + n]
        doc, pos = packed_ids(batch[:, :-1])
        losses.append(engine.forward_backward(batch[:, :-1], batch[:, 1:], pos, doc))
        norms.append(engine.clip_grad_norm(1.0))
        for opt in optimizers:
            opt.step()
        engine.zero_grad()
    return {"losses": losses, "grad_norms": norms, "params": engine.full_state_dict()}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    env = discover_env()
    device = init_distributed(env, "cpu", timeout_s=120)
    gbs, mbs, seq = spec["global_batch"], spec["micro_batch"], spec["seq_len"]
    data = text_batches(max(r.get("steps", 1) for r in spec["runs"]), gbs, seq)
    try:
        for i, run in enumerate(spec["runs"]):
            overrides = {**spec.get("model_overrides", {}), **run.get("model_overrides", {})}
            cfg = dataclasses.replace(get_model_config(spec["model"]), **overrides)
            pcfg = ParallelConfig(**{"precision": spec.get("precision", "fp64"), **run["parallel"]})
            layout = resolve_layout(pcfg, env.world_size, cfg, gbs, mbs, seq)
            engine = build_engine(
                cfg, pcfg, layout, build_mesh(layout, "cpu"), device, seed=spec["seed"]
            )
            lo, n = engine.dp_rank * layout.local_batch_size, layout.local_batch_size
            if run["mode"] == "forward":
                batch = data[0, lo : lo + n]
                doc, pos = packed_ids(batch[:, :-1])
                result = {"sum": forward_sum(engine, batch[:, :-1], batch[:, 1:], doc, pos)}
            else:
                result = train(engine, data, lo, n, run["steps"])
            if env.rank == 0:
                result.update(name=run["name"], layout=layout.describe())
                torch.save(result, out / f"run{i}.pt")
            del engine
    except BaseException:
        traceback.print_exc()  # fail fast, as parallel_worker does
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    destroy_distributed()


if __name__ == "__main__":
    main()
