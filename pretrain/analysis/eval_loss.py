"""`pretrain analyze eval`: held-out loss and perplexity of every checkpoint of a series.

    pretrain analyze eval --run DIR [--steps SPEC] --data PATH [PATH ...] [--per-position]

DIR is a run folder (its checkpoint index) or a folder of Hugging Face model folders named
stepN (Pythia's revisions, e.g. from `pretrain export-hf --all` or the Hub), so published suites
are analysed with the same tool. The held-out windows and the loss are pretrain/evaluation.py's
(`EvalSet.from_paths`, `loss_on_windows`): the same numbers the trainer's validation logs.

Parallel: under torchrun the windows are split over the ranks (data parallel) and the sums
all-reduced; in a Slurm job array (slurm/analyze.sbatch) each array task takes every N-th
checkpoint (`--shard K/N`, default from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT). Finished
steps are skipped, so any of these can be interrupted and rerun.

Outputs in OUT (default DIR/analysis/eval): steps/stepN.json, eval.csv / eval.jsonl (step,
tokens, loss/<source>, ppl/<source>, tokens_evaluated/<source>), eval.png (loss against tokens
seen, log x) and with --per-position eval_positions.png (loss by position in the window).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.nn.functional as F

from configcore import ConfigError
from model_zoo.layers import upcast
from parallel.env import destroy_distributed, discover_env, init_distributed
from pretrain.analysis.common import (
    Checkpoint,
    StepResults,
    find_checkpoints,
    load_model,
    load_run,
    out_dir_for,
    progress,
    resolve_device,
    save_figure,
    write_table,
    x_of,
)
from pretrain.data.loader import resolve_eos, resolve_npy_dtype
from pretrain.evaluation import EvalSet, loss_on_windows


def shard_of(spec: str | None) -> tuple[int, int]:
    """(index, count) of this process's share of the checkpoints."""
    if spec is None:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            return 0, 1
        lo = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        return int(task) - lo, int(count)
    k, _, n = spec.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise ConfigError(f"--shard {spec!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(k), int(n)


def build_evalset(args: argparse.Namespace, ckpts: list[Checkpoint]) -> EvalSet:
    """Window length, separator and format from the run's config when DIR is a run folder,
    else from the options (and the first model's config)."""
    run_cfg = Path(args.run) / "config.yaml"
    if run_cfg.exists():
        run = load_run(args.run)
        seq_len = args.seq_len or run.trainer.seq_len
        eos, fmt, npy = resolve_eos(run), run.data.format, resolve_npy_dtype(run)
        vocab = run.model.vocab_size
    else:
        model_cfg = load_model(ckpts[0]).cfg
        seq_len = args.seq_len or min(2048, model_cfg.max_seq_len)
        eos = args.eos_id if args.eos_id is not None else model_cfg.eos_token_id
        if eos is None:
            raise ConfigError("the models name no eos_token_id; give --eos-id")
        fmt, npy, vocab = args.format, args.npy_dtype, model_cfg.vocab_size
    return EvalSet.from_paths(args.data, seq_len, args.max_tokens, eos, fmt, npy, vocab)


@torch.no_grad()
def loss_by_position(model, windows: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """Sum over windows of the token cross-entropy at each position (seq_len,), float64; its
    total equals `loss_on_windows`' sum (checked in the tests)."""
    total = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    device = next(model.parameters()).device
    for start in range(0, windows.shape[0], micro_batch):
        chunk = windows[start : start + micro_batch].to(device)
        logits = upcast(model(chunk[:, :-1]))
        ce = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")
        total += ce.sum(0).double().cpu()
    return total


def _all_sum(values: list[float]) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def evaluate_checkpoint(model, evalset: EvalSet, micro_batch: int, per_position: bool) -> dict:
    """One checkpoint's record; under torchrun each rank evaluates every world-th window."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    rec: dict = {}
    for src in evalset.sources:
        mine = src.windows[rank::world]
        loss_sum, count = loss_on_windows(model, mine, micro_batch) if len(mine) else (0.0, 0)
        loss_sum, count = _all_sum([loss_sum, float(count)])
        loss = loss_sum / count
        rec[f"loss/{src.name}"] = loss
        rec[f"ppl/{src.name}"] = math.exp(loss) if loss < 700 else math.inf
        rec[f"tokens_evaluated/{src.name}"] = int(count)
        if per_position:
            pos = loss_by_position(model, mine, micro_batch) if len(mine) else None
            pos = _all_sum(pos.tolist() if pos is not None else [0.0] * (evalset.seq_len))
            rec[f"position_loss/{src.name}"] = [p / len(src.windows) for p in pos]
    return rec


def plot_losses(rows: list[dict], names: list[str], path: Path, x: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        pts = [(x_of(r, x), r[f"loss/{name}"]) for r in rows if f"loss/{name}" in r]
        ax.plot(*zip(*pts), "-o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen (log)" if x == "tokens" else "step (log)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_positions(rows: list[dict], name: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    with_pos = [r for r in rows if f"position_loss/{name}" in r]
    cmap = plt.get_cmap("viridis", max(len(with_pos), 2))
    for i, r in enumerate(with_pos):
        ax.plot(r[f"position_loss/{name}"], color=cmap(i), lw=1, label=f"step {r['step']}")
    ax.set_xlabel("position in the window")
    ax.set_ylabel(f"loss on {name}")
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def run_eval(args: argparse.Namespace) -> tuple[list[dict], list[str], int, Path]:
    ckpts = find_checkpoints(args.run, args.steps, args.verify, args.tokens_per_step)
    out = out_dir_for(args.run, "eval", args.out)
    results = StepResults(out)
    k, n = shard_of(args.shard)
    share = ckpts[k::n]
    todo = [c for c in share if not results.done(c.step)]
    if dist.is_initialized():
        dist.barrier()  # every rank listed the same finished steps before rank 0 adds any
    evalset = build_evalset(args, ckpts)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    device = resolve_device(args.device)
    for c in progress(todo, len(todo), "eval"):
        model = load_model(c, device)
        rec = evaluate_checkpoint(model, evalset, args.micro_batch, args.per_position)
        if rank0:
            results.write(c.step, {"tokens": c.tokens, **rec})
    return results.rows(), evalset.names, (len(todo), len(share) - len(todo)), out


def main(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.run_dir):
        raise ConfigError("give the run folder once: `eval RUN ...` or `eval --run RUN ...`")
    args.run = args.run or args.run_dir
    env = discover_env()
    if env.world_size > 1:
        init_distributed(env, "cpu")
    try:
        rows, names, (evaluated, skipped), out = run_eval(args)
    finally:
        destroy_distributed()
    if env.rank != 0:
        return 0
    scalar_rows = [{k: v for k, v in r.items() if not k.startswith("position_")} for r in rows]
    write_table(rows, out / "eval.csv", out / "eval.jsonl")
    x = "tokens" if all(r.get("tokens") is not None for r in rows) else "steps"
    png = plot_losses(scalar_rows, names, out / "eval.png", x)
    if args.per_position:
        plot_positions(rows, names[0], out / "eval_positions.png")
    last = rows[-1]
    losses = ", ".join(f"{n} {last[f'loss/{n}']:.4f} (ppl {last[f'ppl/{n}']:.2f})" for n in names)
    print(
        f"eval: {evaluated} checkpoints evaluated, {skipped} already done; {len(rows)} in "
        f"{out / 'eval.csv'}; step {last['step']}: {losses}; plot {png}"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="held-out loss of every series checkpoint (or HF folders)")
    # also positional: under torchrun `--run` is taken for an abbreviation of its --run-path
    p.add_argument("run_dir", nargs="?", metavar="RUN", help="same as --run")
    p.add_argument("--run", help="run folder, or a folder of Hugging Face stepN folders")
    p.add_argument("--data", nargs="+", required=True, help="held-out token data, one per source")
    p.add_argument("--steps", help="series spec of the checkpoints (default: all)")
    p.add_argument("--max-tokens", type=int, default=1_048_576, help="per source (0: all)")
    p.add_argument("--micro-batch", type=int, default=8, help="windows per forward")
    p.add_argument("--per-position", action="store_true", help="also the loss at each position")
    p.add_argument("--seq-len", type=int, help="window length (default: the run's seq_len)")
    p.add_argument("--eos-id", type=int, help="HF folders: document separator (default: model's)")
    p.add_argument("--format", default="megatron", choices=["megatron", "npy"], help="HF folders")
    p.add_argument("--npy-dtype", default="uint16", choices=["uint16", "uint32"])
    p.add_argument(
        "--tokens-per-step", type=int, help="HF folders: tokens per step (Pythia: 2097152)"
    )
    p.add_argument(
        "--shard", help="K/N: every N-th checkpoint from the K-th (default: Slurm array)"
    )
    p.add_argument("--out", help="output folder (default RUN/analysis/eval)")
    p.add_argument("--verify", default="size", choices=["size", "checksum"])
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.set_defaults(func=main)
