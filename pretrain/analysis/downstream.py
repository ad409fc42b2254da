"""`pretrain analyze downstream`: benchmark accuracy of every checkpoint of a series, with
lm-evaluation-harness (the `lm-eval` package: its tasks, prompts, metrics and stderr).

    pretrain analyze downstream --run DIR --tasks T1,T2 [--include-path DIR] [--steps SPEC]
        [--num-fewshot K] [--limit N] [--batch-size B] [--log-samples]

DIR is a run folder (its checkpoint index) or a folder of Hugging Face model folders named stepN
(Pythia's revisions), as for `analyze eval`. Each checkpoint runs in our own decoder through
`DecoderLM` (pretrain/analysis/decoder_lm.py, an lm-eval LM) with the run's tokenizer: the one its
token data's metadata.json names (or --tokenizer; an HF folder's own tokenizer). Tasks are lm-eval
task names, presets (`pythia`: the Pythia paper's zero-shot suite) or task YAMLs found under
--include-path (lm-eval's convention), which run offline; the Hub datasets of lm-eval's own tasks
must be in the HF cache first (docs/analysis.md).

Parallel and resumable like `analyze eval`: results are one file per (step, task), finished ones
are skipped; under torchrun the checkpoints are split over the ranks (each rank evaluates whole
checkpoints on its own device), in a Slurm job array each array task takes every N-th checkpoint
(`--shard K/N`, default from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT).

Outputs in OUT (default DIR/analysis/downstream): steps/stepN.TASK.json, downstream.csv / .jsonl
(step, tokens, task, metric, value, stderr), downstream_TASK.png (each metric against tokens seen,
log x, with a band of +-1 stderr), with --log-samples samples/stepN.TASK.jsonl (every request's
scores, as lm-eval's --log_samples writes them).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist

from configcore import ConfigError
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
from pretrain.analysis.eval_loss import shard_of

# The Pythia paper's zero-shot evaluations (Biderman et al. 2023, appendix), lm-eval task names
PRESETS = {
    "pythia": [
        "lambada_openai",
        "piqa",
        "winogrande",
        "arc_easy",
        "arc_challenge",
        "sciq",
        "logiqa",
        "wsc",
    ],
}
# simple_evaluate's seeds, given explicitly: the in-loop evaluation (pretrain/downstream_eval.py)
# sets the same ones, so both draw the same few-shot examples
SEEDS = {
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "fewshot_random_seed": 1234,
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def parse_tasks(spec: str) -> list[str]:
    """Comma-separated task names and presets, presets expanded, each name once."""
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        for name in PRESETS.get(item, [item] if item else []):
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError(f"--tasks {spec!r} names no task; e.g. --tasks pythia or piqa,sciq")
    return names


def task_manager(tasks: list[str], include_path: str | None, option: str = "--include-path"):
    """lm-eval's TaskManager; only the include-path folder is indexed when it holds every task
    (indexing lm-eval's ~15,000 bundled task files takes seconds). Unknown tasks are an error
    before any checkpoint is loaded (or any training process starts: `option` names the
    setting, eval.downstream.include_path in the training config)."""
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"{option} {include_path} is not a folder of task YAMLs")
    stamps = _yaml_stamps(include_path) if include_path is not None else ()
    if include_path is not None:
        local = _indexed_tasks(include_path, False, stamps)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = _indexed_tasks(include_path, True, stamps)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path else f" (local YAMLs: {option})"
        raise ConfigError(
            f"unknown lm-eval task(s) {', '.join(unknown)}: not among lm-eval's tasks{where}; "
            f"presets: {', '.join(PRESETS)}"
        )
    return manager


def _yaml_stamps(folder: str) -> tuple:
    """(path, mtime, size) of every YAML under `folder`: a changed task file is a new index."""
    return tuple(
        (str(p), p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(Path(folder).rglob("*.y*ml"))
    )


@functools.lru_cache(maxsize=8)
def _indexed_tasks(include_path: str | None, include_defaults: bool, stamps: tuple):
    """lm-eval's TaskManager, built once per process for the same task files: indexing lm-eval's
    bundled tasks takes ~10 s, and a process that trains or evaluates several runs (a notebook,
    the test suite) would pay it for each. `stamps` (_yaml_stamps) keys the cache to the
    include-path YAMLs' state, so an edited task file is indexed again; lm-eval's own task files
    do not change under a running process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def load_tokenizer(args: argparse.Namespace, ckpts: list[Checkpoint], cfg):
    """The run's tokenizer as transformers loads an exported folder's (pretrain/tokenizer.py
    writes both), so our requests are tokenized as lm-eval's `hf` model tokenizes them."""
    from transformers import AutoTokenizer

    if args.tokenizer is not None:
        return hf_tokenizer(args.tokenizer, cfg)
    if (Path(args.run) / "config.yaml").exists():
        tokenizer = run_hf_tokenizer(load_run(args.run), cfg)
        if tokenizer is None:
            raise ConfigError(
                f"{args.run}: the run's token data has no metadata.json naming its tokenizer; "
                "give --tokenizer (tokenizer.json or an HF tokenizer folder)"
            )
        return tokenizer
    return AutoTokenizer.from_pretrained(ckpts[0].path)  # HF stepN folders carry their tokenizer


def run_hf_tokenizer(run, cfg):
    """The tokenizer the run's token data was made with (its metadata.json), as an HF tokenizer
    with the special tokens named (the training loop's downstream evaluation uses it too);
    None when the data has no metadata."""
    from pretrain.tokenizer import run_tokenizer

    found = run_tokenizer(run)
    return None if found is None else hf_tokenizer(found.path, cfg, found.pad_id)


def hf_tokenizer(source, cfg, pad_id: int | None = None):
    from transformers import AutoTokenizer

    from pretrain.tokenizer import write_tokenizer_folder

    folder = Path(tempfile.mkdtemp(prefix="pretrain-tokenizer-"))
    write_tokenizer_folder(source, folder, cfg, pad_id)
    return AutoTokenizer.from_pretrained(folder)


def metric_rows(step: int, tokens: int | None, task: str, result: dict) -> list[dict]:
    """lm-eval's `results[task]` ("acc,none": v, "acc_stderr,none": s) as table rows."""
    rows = []
    for key, value in result.items():
        metric, sep, filt = key.partition(",")
        if not sep or "_stderr" in metric or not isinstance(value, (int, float)):
            continue
        stderr = result.get(f"{metric}_stderr,{filt}")
        name = metric if filt == "none" else f"{metric},{filt}"
        rows.append(
            {
                "step": step,
                "tokens": tokens,
                "task": task,
                "metric": name,
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            }
        )
    return rows


def sample_records(samples: list[dict]) -> list[dict]:
    """Per request what lm-eval's --log_samples keeps: doc id, target, the model's scores."""
    out = []
    for s in samples:
        out.append(
            {
                "doc_id": s["doc_id"],
                "target": s.get("target"),
                "resps": s.get("filtered_resps", s.get("resps")),
            }
        )
    return out


class TaskSteps(StepResults):
    """OUT/steps/stepN.TASK.json: one file per (step, task), so either can be resumed."""

    def __init__(self, out_dir: Path, task: str):
        super().__init__(out_dir)
        self.task = task

    def _path(self, step: int) -> Path:
        return self.dir / f"step{step}.{self.task}.json"


def all_rows(out: Path) -> list[dict]:
    recs = [json.loads(p.read_text()) for p in (out / "steps").glob("step*.json")]
    recs.sort(key=lambda r: (r["step"], r["task"]))
    return [row for r in recs for row in r["rows"]]


def evaluate_step(lm, ckpt: Checkpoint, task: str, args, manager) -> tuple[list[dict], list[dict]]:
    import lm_eval

    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=args.num_fewshot,
        limit=int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit,
        task_manager=manager,
        log_samples=args.log_samples,
        bootstrap_iters=args.bootstrap_iters,
        **SEEDS,
    )
    rows = metric_rows(ckpt.step, ckpt.tokens, task, results["results"][task])
    samples = sample_records(results.get("samples", {}).get(task, [])) if args.log_samples else []
    return rows, samples


def plot_task(rows: list[dict], task: str, path: Path, x: str) -> Path:
    mine = [r for r in rows if r["task"] == task]
    metrics = list(dict.fromkeys(r["metric"] for r in mine))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1, 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        pts = sorted(
            (x_of(r, x), r["value"], r["stderr"] or 0.0) for r in mine if r["metric"] == metric
        )
        draw_metric(ax, metric, *zip(*pts), label=metric, alpha=0.25)
        ax.set_xlabel("tokens seen (log)" if x == "tokens" else "step (log)")
        ax.set_title(f"{task}: {metric}", fontsize=9)
    return save_figure(fig, path)


def draw_metric(ax, metric: str, xs, ys, es, label: str, alpha: float) -> None:
    """One curve with its +-1 stderr band, on a log x axis. A perplexity spans decades as a
    model learns (1e5 at initialisation, tens later), so its y axis is logarithmic too, and its
    band, which can reach below zero early on, is cut at half the smallest value plotted."""
    ax.plot(xs, ys, "-o", ms=3, label=label)
    lo, hi = [y - e for y, e in zip(ys, es)], [y + e for y, e in zip(ys, es)]
    if "perplexity" in metric and min(ys) > 0:
        floor = min(ys) / 2
        lo = [max(v, floor) for v in lo]
        ax.set_yscale("log")
    ax.fill_between(xs, lo, hi, alpha=alpha)
    ax.set_xscale("log")


def overlay_runs(runs: list[Path], labels: list[str], out: Path, x: str = "tokens") -> list[Path]:
    """`analyze compare`: for every task the runs have in RUN/analysis/downstream, one PNG with
    each run's curve per metric (value +- stderr); nothing when no run has downstream results."""
    rows = []
    for run, label in zip(runs, labels):
        path = Path(run) / "analysis" / "downstream" / "downstream.jsonl"
        if path.exists():
            rows += [{**json.loads(line), "run": label} for line in path.read_text().splitlines()]
    pngs = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        metrics = list(dict.fromkeys(r["metric"] for r in mine))
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(4.2 * len(metrics) + 1, 3.8), squeeze=False
        )
        for ax, metric in zip(axes[0], metrics):
            for label in dict.fromkeys(r["run"] for r in mine):
                pts = sorted(
                    (x_of(r, x), r["value"], r["stderr"] or 0.0)
                    for r in mine
                    if r["metric"] == metric and r["run"] == label
                )
                draw_metric(ax, metric, *zip(*pts), label=label, alpha=0.2)
            ax.set_xlabel("tokens seen (log)" if x == "tokens" else "step (log)")
            ax.set_title(f"{task}: {metric}", fontsize=9)
            ax.legend(fontsize=7)
        pngs.append(save_figure(fig, out / f"compare_downstream_{task}.png"))
    return pngs


def _quiet_lm_eval() -> None:
    for name in ("lm-eval", "lm_eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_downstream(args: argparse.Namespace) -> tuple[list[str], int, int, Path, float]:
    tasks = parse_tasks(args.tasks)
    if args.dtype not in DTYPES:
        raise ConfigError(f"--dtype {args.dtype!r} is not one of {', '.join(DTYPES)}")
    ckpts = find_checkpoints(args.run, args.steps, args.verify, args.tokens_per_step)
    manager = task_manager(tasks, args.include_path)
    out = out_dir_for(args.run, "downstream", args.out)
    results = {t: TaskSteps(out, t) for t in tasks}
    k, n = shard_of(args.shard)
    share = ckpts[k::n]
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    mine = share[rank::world]  # whole checkpoints per rank: each on its own device
    todo = [(c, [t for t in tasks if not results[t].done(c.step)]) for c in mine]
    todo = [(c, ts) for c, ts in todo if ts]
    device = resolve_device(args.device)
    tokenizer, total_seconds = None, 0.0
    for c, pending in progress(todo, len(todo), "downstream"):
        from pretrain.analysis.decoder_lm import DecoderLM

        model = load_model(c, device).to(DTYPES[args.dtype])
        if tokenizer is None:
            tokenizer = load_tokenizer(args, ckpts, model.cfg)
        max_length = args.max_length
        if max_length is None and (Path(args.run) / "config.yaml").exists():
            max_length = load_run(args.run).trainer.seq_len  # the positions it was trained on
        lm = DecoderLM(model, tokenizer, args.batch_size, max_length, progress=False)
        for task in pending:
            start, calls = time.perf_counter(), lm.forwards
            rows, samples = evaluate_step(lm, c, task, args, manager)
            seconds = time.perf_counter() - start
            if samples:
                path = out / "samples" / f"step{c.step}.{task}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text("".join(json.dumps(s) + "\n" for s in samples))
                os.replace(tmp, path)
            results[task].write(
                c.step,
                {
                    "tokens": c.tokens,
                    "task": task,
                    "rows": rows,
                    "seconds": round(seconds, 3),
                    "forwards": lm.forwards - calls,
                },
            )
            total_seconds += seconds
    if dist.is_initialized():
        dist.barrier()  # every rank's steps are written before rank 0 builds the table
    evaluated = sum(len(ts) for _, ts in todo)
    return tasks, evaluated, len(mine) * len(tasks) - evaluated, out, total_seconds


def main(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.run_dir):
        raise ConfigError(
            "give the run folder once: `downstream RUN ...` or `downstream --run RUN ...`"
        )
    args.run = args.run or args.run_dir
    _quiet_lm_eval()
    env = discover_env()
    if env.world_size > 1:
        init_distributed(env, "cpu")
    try:
        tasks, evaluated, skipped, out, seconds = run_downstream(args)
    finally:
        destroy_distributed()
    if env.rank != 0:
        return 0
    rows = all_rows(out)
    if not rows:
        print(f"downstream: nothing evaluated yet in {out}", file=sys.stderr)
        return 1
    write_table(rows, out / "downstream.csv", out / "downstream.jsonl")
    x = "tokens" if all(r.get("tokens") is not None for r in rows) else "steps"
    pngs = [
        plot_task(rows, t, out / f"downstream_{t}.png", x)
        for t in tasks
        if any(r["task"] == t for r in rows)
    ]
    last = max(r["step"] for r in rows)
    summary = "; ".join(
        f"{r['task']} {r['metric']} {r['value']:.4g}"
        + (
            f" +- {r['stderr']:.2g}"
            if r["stderr"] is not None and math.isfinite(r["stderr"])
            else ""
        )
        for r in rows
        if r["step"] == last
        and r["metric"] in ("acc", "acc_norm", "word_perplexity", "exact_match")
    )
    print(
        f"downstream: {len(tasks)} tasks, {evaluated} (step, task) pairs evaluated in "
        f"{seconds:.1f} s, {skipped} already done; {len(rows)} rows in {out / 'downstream.csv'}; "
        f"step {last}: {summary}; plots {', '.join(p.name for p in pngs)}"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("downstream", help="lm-eval benchmark accuracy of every series checkpoint")
    p.add_argument("run_dir", nargs="?", metavar="RUN", help="same as --run")
    p.add_argument("--run", help="run folder, or a folder of Hugging Face stepN folders")
    p.add_argument(
        "--tasks", required=True, help="lm-eval task names or presets (pythia), comma-separated"
    )
    p.add_argument("--include-path", help="folder of lm-eval task YAMLs (local tasks, offline)")
    p.add_argument("--steps", help="series spec of the checkpoints (default: all)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    p.add_argument("--limit", type=float, help="documents per task (a fraction when < 1)")
    p.add_argument("--batch-size", type=int, default=16, help="requests per forward")
    p.add_argument("--max-length", type=int, help="context in tokens (default: the run's seq_len)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights' dtype")
    p.add_argument("--tokenizer", help="tokenizer.json or HF tokenizer folder (default: the run's)")
    p.add_argument("--log-samples", action="store_true", help="also every request's scores")
    p.add_argument("--bootstrap-iters", type=int, default=1000, help="for non-mean stderrs")
    p.add_argument("--tokens-per-step", type=int, help="HF folders: tokens per step")
    p.add_argument(
        "--shard", help="K/N: every N-th checkpoint from the K-th (default: Slurm array)"
    )
    p.add_argument("--out", help="output folder (default RUN/analysis/downstream)")
    p.add_argument("--verify", default="size", choices=["size", "checksum"])
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.set_defaults(func=main)
