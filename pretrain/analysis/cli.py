"""`pretrain analyze`: look back into a run and across its checkpoint series.

    batch --run DIR --step N        the exact global batch of step N, with provenance
    series --run DIR                the run's checkpoints (the index)
    eval --run DIR --data PATHS     held-out loss of every checkpoint (also HF stepN folders)
    memorization --run DIR          Pythia's memorization of training sequences per checkpoint
    downstream --run DIR --tasks T  lm-eval benchmark accuracy per checkpoint (also HF folders)
    text-tasks --input F --out DIR  local lm-eval tasks (cloze, multiple choice, ...) from text
    compare RUN...                  training/validation loss, grad norm, LR of several runs
    spikes --run DIR                the run's loss spikes and the documents of their batches
    scaling-fit --points CSV        L(N, D) = E + A/N^alpha + B/D^beta, Chinchilla approach 3
    weights --run DIR               per-layer norms and relative change, as a heat map
    report --run DIR                one self-contained HTML page for the run

Each analysis writes a CSV/JSONL table and a PNG under DIR/analysis/<command> (or --out) and
skips the checkpoints it finished before. Every checkpoint is checked against its manifest
before it is loaded (--verify checksum reads every byte).
"""

from __future__ import annotations

import argparse

from pretrain.analysis import (
    batch,
    compare,
    downstream,
    eval_loss,
    memorization,
    report,
    scaling_fit,
    spikes,
    text_tasks,
    weights,
)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="pretrain analyze",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="what", required=True)
    batch.add_parsers(sub)
    for module in (
        eval_loss,
        memorization,
        downstream,
        text_tasks,
        compare,
        scaling_fit,
        weights,
        spikes,
        report,
    ):
        module.add_parser(sub)
    args = ap.parse_args(argv)
    return int(args.func(args) or 0)
