"""Layout parity: the yardstick every parallel layout is measured against, importable by the
tests and the benchmarks alike (neither imports the other).

    harness.py           real-text batches, the single-process reference run, launching N ranks
                         with torchrun's variables and collecting their results
    worker.py            one rank of a parity run (python -m pretrain.parity.worker SPEC OUT)
    attention_worker.py  one rank of the attention-kernel runs (forward-only FlexAttention)

The parity claims are about the math, so they run in float64 (parallel.precision=fp64): rounding
is ~1e-16 per operation and a layout can be held to one process at ~1e-10 on any CPU and thread
count. docs/parallel.md ("Checking a layout") says how to use it.
"""
