"""One rank of a parity run (launched by harness.launch with torchrun's variables).

Spec (JSON): {"model": zoo name, "model_overrides": {...}, "steps", "global_batch",
"micro_batch", "seq_len", "lr", optional "precision" (every run's parallel.precision unless
its own "parallel" names one; fp64 by default), "runs": [{"name", "parallel": {ParallelConfig fields},
optional "steps", "seed", "dcp_save": true, "dcp_load": <index of an earlier run>,
"packed": true (lines are documents: document ids + restarting position ids), "model" and
"model_overrides" (this run's model instead of the spec's)}]}.
All runs share one process group; each builds its own mesh and engine. Rank 0 writes
run<i>.pt with the loss and grad norm of every step and the gathered final parameters.
dcp_save writes the final model with torch.distributed.checkpoint to <out>/dcp<i>; dcp_load
loads an earlier run's checkpoint into this run's engine (of any layout) before its steps.
"eval": true also records, after every step, the engine's forward-only loss (Engine.eval_loss:
sum, tokens) on the global batch of text that follows the training batches (`held_out_batch`),
so the steps after a validation show whether it disturbed training.
"""

import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

from model_zoo.zoo import get_model_config  # noqa: E402
from parallel.config import ParallelConfig  # noqa: E402
from parallel.engine import build_engine  # noqa: E402
from parallel.env import destroy_distributed, discover_env, init_distributed  # noqa: E402
from parallel.layout import build_mesh, resolve_layout  # noqa: E402
from pretrain.parity.harness import (  # noqa: E402
    build_optimizers,
    held_out_batch,
    packed_ids,
    text_batches,
)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    env = discover_env()
    device = init_distributed(env, "cpu", timeout_s=120)
    gbs, seq = spec["global_batch"], spec["seq_len"]
    data = text_batches(max(r.get("steps", spec["steps"]) for r in spec["runs"]), gbs, seq)
    try:
        for i, run in enumerate(spec["runs"]):
            t0 = time.time()
            model = run.get("model", spec["model"])
            overrides = run.get("model_overrides", spec.get("model_overrides", {}))
            cfg = dataclasses.replace(get_model_config(model), **overrides)
            # float64 unless the run names a precision: the parity claims are about the math
            pcfg = ParallelConfig(**{"precision": spec.get("precision", "fp64"), **run["parallel"]})
            # a run may accumulate its batch in other micro-batches (the precision noise floor)
            mbs = run.get("micro_batch", spec["micro_batch"])
            layout = resolve_layout(pcfg, env.world_size, cfg, gbs, mbs, seq)
            mesh = build_mesh(layout, "cpu")
            engine = build_engine(
                cfg, pcfg, layout, mesh, device, seed=run.get("seed", spec.get("seed", 0))
            )
            if "dcp_load" in run:
                sd = engine.model_state_dict()
                dcp.load(sd, checkpoint_id=str(out / f"dcp{run['dcp_load']}"))
                engine.load_model_state_dict(sd)
            steps = run.get("steps", spec["steps"])
            optimizers = build_optimizers(engine.model_parts, spec.get("lr", 1e-3))
            lo = engine.dp_rank * layout.local_batch_size
            held = held_out_batch(data)[lo : lo + layout.local_batch_size]
            losses, norms, evaluated = [], [], []
            for step in range(steps):
                batch = data[step, lo : lo + layout.local_batch_size]
                if run.get("packed"):
                    doc, pos = packed_ids(batch[:, :-1])
                    loss = engine.forward_backward(batch[:, :-1], batch[:, 1:], pos, doc)
                else:
                    loss = engine.forward_backward(batch[:, :-1], batch[:, 1:])
                norms.append(engine.clip_grad_norm(1.0))
                losses.append(loss)
                for opt in optimizers:
                    opt.step()
                engine.zero_grad()
                if run.get("eval"):
                    evaluated.append(engine.eval_loss(held[:, :-1], held[:, 1:]))
            params = engine.full_state_dict()
            if run.get("dcp_save"):
                dcp.save(engine.model_state_dict(), checkpoint_id=str(out / f"dcp{i}"))
            if env.rank == 0:
                torch.save(
                    {
                        "name": run["name"],
                        "losses": losses,
                        "grad_norms": norms,
                        "params": params,
                        "eval": evaluated,
                        "layout": layout.describe(),
                        "threads": torch.get_num_threads(),
                        "checkpointed_layers": engine.checkpointed_layers,
                        "local_shapes": {
                            k: tuple(getattr(p, "_local_tensor", p).shape)
                            for k, p in engine.named_parameters()
                        },
                    },
                    out / f"run{i}.pt",
                )
                print(
                    f"[{run['name']}] {layout.describe()}: {steps} steps in "
                    f"{time.time() - t0:.1f}s, losses {losses[:1]}..{losses[-1:]}",
                    flush=True,
                )
            del engine, optimizers
    except BaseException:
        # Fail fast: a rank that waits in a barrier for a dead peer would hang until the timeout.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    destroy_distributed()


if __name__ == "__main__":
    main()
