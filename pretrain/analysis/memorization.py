"""`pretrain analyze memorization`: which training sequences each checkpoint reproduces.

Pythia's definition (Biderman et al. 2023, "Emergent and predictable memorization"): a training
sequence is memorized by a checkpoint when greedy decoding of its first `--prompt` (32) tokens
reproduces the next `--continuation` (32) tokens exactly; the per-token match score is the
fraction of the continuation's tokens the greedy decode gets right. The sequences are training
samples drawn (seeded) from the run's recorded data order (data_order.jsonl), so each one has the
step that trained on it; a checkpoint's results are split by how long before it the sequence was
seen ("not yet seen" is the control: what the model produces for text it was not trained on yet).

Outputs in OUT (default RUN/analysis/memorization): sequences.json (sample index, trained step),
steps/stepN.json per checkpoint (per-sequence memorized flags and scores), memorization.csv /
.jsonl (per checkpoint: fractions overall and by age bucket), memorization.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from configcore import ConfigError
from pretrain.analysis.common import (
    StepResults,
    find_checkpoints,
    load_model,
    load_run,
    out_dir_for,
    progress,
    read_order_log,
    resolve_device,
    save_figure,
    write_table,
)
from pretrain.data.loader import build_data_order


def draw_sequences(run_dir: Path, n: int, length: int, seed: int) -> dict:
    """`n` training samples (all when n <= 0) from the recorded order: token ids and the step
    that consumed each."""
    run = load_run(run_dir)
    if run.trainer.seq_len + 1 < length:
        raise ConfigError(
            f"prompt + continuation = {length} tokens do not fit the run's samples of "
            f"{run.trainer.seq_len + 1}; shorten --prompt/--continuation"
        )
    order_log = read_order_log(run_dir)
    trained = [
        (k, step)
        for step, rec in sorted(order_log.items())
        if not rec.get("skipped")
        for k in range(*rec["samples"])
    ]
    if n > 0 and n < len(trained):
        pick = np.random.default_rng(seed).choice(len(trained), n, replace=False)
        trained = [trained[i] for i in sorted(pick)]
    order = build_data_order(run)
    tokens = np.stack([order.sample(k).tokens[:length] for k, _ in trained]).astype(np.int64)
    return {
        "samples": [k for k, _ in trained],
        "trained_step": [s for _, s in trained],
        "tokens": tokens,
    }


@torch.no_grad()
def greedy_match(model, tokens: torch.Tensor, prompt: int, batch: int = 64) -> torch.Tensor:
    """(sequences, continuation) booleans: greedy token == true token, decoding from the prompt
    with the model's own previous choices (no teacher forcing)."""
    vocab = model.cfg.vocab_size  # padded logits past the vocabulary are never a token
    out = []
    for i in range(0, len(tokens), batch):
        seq = tokens[i : i + batch, :prompt]
        for _ in range(tokens.shape[1] - prompt):
            nxt = model(seq)[:, -1, :vocab].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        out.append(seq[:, prompt:] == tokens[i : i + batch, prompt:])
    return torch.cat(out)


AGE_BUCKETS = ((0, 0), (1, 3), (4, 15), (16, 63), (64, 255), (256, 1023), (1024, None))


def _bucket_name(lo: int, hi: int | None) -> str:
    return f"age {lo}+" if hi is None else f"age {lo}-{hi}"


def summarize(step: int, tokens: int | None, memorized, score, trained_step) -> dict:
    """Fractions for one checkpoint: over sequences already seen, by age, and not yet seen."""
    memorized, score, trained = map(np.asarray, (memorized, score, trained_step))
    seen = trained <= step
    row = {"step": step, "tokens": tokens, "sequences": int(len(trained))}
    row["memorized"] = float(memorized[seen].mean()) if seen.any() else None
    row["score"] = float(score[seen].mean()) if seen.any() else None
    row["memorized_unseen"] = float(memorized[~seen].mean()) if (~seen).any() else None
    for lo, hi in AGE_BUCKETS:
        age = step - trained
        sel = seen & (age >= lo) & (age <= (hi if hi is not None else age.max()))
        row[_bucket_name(lo, hi)] = float(memorized[sel].mean()) if sel.any() else None
    return row


def plot(rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [max(r["step"], 1) for r in rows]
    ax.plot(steps, [r["memorized"] or 0 for r in rows], "k-o", ms=3, label="all seen")
    names = [_bucket_name(lo, hi) for lo, hi in AGE_BUCKETS]
    for name in [n for n in names if any(r.get(n) is not None for r in rows)]:
        pts = [(max(r["step"], 1), r[name]) for r in rows if r.get(name) is not None]
        ax.plot(*zip(*pts), "-", lw=1, label=name)
    unseen = [
        (max(r["step"], 1), r["memorized_unseen"])
        for r in rows
        if r["memorized_unseen"] is not None
    ]
    if unseen:
        ax.plot(*zip(*unseen), "--", color="gray", label="not yet seen")
    ax.set_xscale("log")
    ax.set_xlabel("step (log)")
    ax.set_ylabel("memorized fraction (exact 32-token match)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    ckpts = find_checkpoints(run_dir, args.steps, args.verify)
    out = out_dir_for(run_dir, "memorization", args.out)
    results = StepResults(out)
    seqs = draw_sequences(run_dir, args.samples, args.prompt + args.continuation, args.seed)
    drawn = {k: seqs[k] for k in ("samples", "trained_step")} | {"prompt": args.prompt}
    saved = out / "sequences.json"
    if saved.exists() and json.loads(saved.read_text()) != drawn:
        raise ConfigError(
            f"{out} holds results for other sequences (another --samples, --seed or --prompt); "
            "give a new --out or delete it"
        )
    saved.write_text(json.dumps(drawn))
    device = resolve_device(args.device)
    tokens = torch.from_numpy(seqs["tokens"]).to(device)
    todo = [c for c in ckpts if not results.done(c.step)]
    for c in progress(todo, len(todo), "memorization"):
        match = greedy_match(load_model(c, device), tokens, args.prompt).cpu()
        memorized = match.all(dim=1).tolist()
        score = match.float().mean(dim=1).tolist()
        row = summarize(c.step, c.tokens, memorized, score, seqs["trained_step"])
        results.write(c.step, {**row, "per_sequence": {"memorized": memorized, "score": score}})
    rows = [{k: v for k, v in r.items() if k != "per_sequence"} for r in results.rows()]
    write_table(rows, out / "memorization.csv", out / "memorization.jsonl")
    png = plot(rows, out / "memorization.png")
    last = rows[-1]
    print(
        f"memorization of {len(tokens)} training sequences ({args.prompt}-token prompt, "
        f"{args.continuation}-token continuation) at {len(rows)} checkpoints "
        f"({len(ckpts) - len(todo)} already done); step {last['step']}: "
        f"{last['memorized'] or 0:.1%} memorized, match score {last['score'] or 0:.3f}; "
        f"table {out / 'memorization.csv'}, plot {png}"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("memorization", help="Pythia's memorization of training sequences")
    p.add_argument("--run", required=True)
    p.add_argument("--steps", help="series spec of the checkpoints to use (default: all)")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--continuation", type=int, default=32, help="tokens to reproduce (default 32)")
    p.add_argument("--samples", type=int, default=1000, help="sequences to draw (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default RUN/analysis/memorization)")
    p.add_argument("--verify", default="size", choices=["size", "checksum"])
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.set_defaults(func=main)
