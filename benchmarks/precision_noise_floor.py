"""How far a reduced-precision run moves when only the order of a sum changes: the yardstick for
"a parallel run tracks the single process within 1e-3".

One process, the real engine, llama3-tiny (4 layers) on real text, same seed and data, 20 AdamW
steps; the global batch of 8 sequences is accumulated in micro-batches of 2 versus 4. Nothing but
the gradient accumulation order differs, so the largest relative loss difference between the two
is the precision's noise floor for summation order. A parallel layout changes more than that
(tensor-parallel partial sums reduced in bf16, FSDP reduce-scatters, ...), so its difference to
the single process cannot be expected below this floor. Prints each precision's floor and its
ratio to bf16's, measured in the same run.

    python benchmarks/precision_noise_floor.py [--steps 20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

# The parity harness launches the engine's worker processes and reads their results.
from pretrain.parity.harness import launch, rel

PRECISIONS = ("bf16", "fp8_tensorwise", "fp8_rowwise")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    floors = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, prec in enumerate(PRECISIONS, 1):
            losses = {}
            for mb in (2, 4):
                spec = {
                    "model": "llama3-tiny",
                    "model_overrides": {"n_layers": 4},
                    "steps": args.steps,
                    "global_batch": 8,
                    "micro_batch": mb,
                    "seq_len": 32,
                    "runs": [{"name": f"{prec} mb{mb}", "parallel": {"precision": prec}}],
                }
                losses[mb] = launch(1, spec, Path(tmp) / f"{prec}-{mb}")[0]["losses"]
            floors[prec] = max(rel(a, b) for a, b in zip(losses[2], losses[4]))
            print(
                f"[{i}/{len(PRECISIONS)}] {prec}: micro-batches of 2 vs 4, largest relative loss "
                f"difference over {args.steps} steps {floors[prec]:.1e}",
                flush=True,
            )
    print("\n| precision | noise floor (micro-batch 2 vs 4) | / bf16 |\n|---|---|---|")
    for prec, floor in floors.items():
        print(f"| {prec} | {floor:.1e} | {floor / floors['bf16']:.1f} |")


if __name__ == "__main__":
    main()
