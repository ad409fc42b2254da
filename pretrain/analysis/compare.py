"""`pretrain analyze compare RUN... [--x tokens|steps|flops]`: several runs on common axes.

Reads each run's metrics.jsonl (training loss, grad norm, learning rate, and the validation
losses `eval/<source>/loss` the trainer logged) and overlays them: compare.png has one panel each
for training loss, validation loss, grad norm and LR. The x axis is the step, the tokens seen, or
the training FLOPs (tokens x model_zoo's training FLOPs per token of that run's model), which
puts a suite of sizes on one compute axis. compare.csv holds every plotted point (run, step,
tokens, flops, metric, value). A run's loss spikes (RUN/spikes.jsonl) are marked on its training
loss and grad norm curves (red x; metrics `spike/loss`, `spike/grad_norm` in the table).

With `--sweep SWEEP` (a `pretrain mixture sweep` folder) the proxies are the runs (plus any run
folders given, e.g. the chosen mixture's own run) and swarm.png overlays them, loss against the
x axis with each proxy coloured by its weight of the source `--color-by NAME` (default: the
sweep's first source); runs outside the sweep are drawn black and dashed. swarm.csv holds every
plotted point with the run's weight.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from configcore import ConfigError
from model_zoo.counting import training_flops_per_token
from pretrain.analysis import downstream
from pretrain.analysis.common import load_run, save_figure, write_table
from pretrain.analysis.spikes import read_spikes

PANELS = (
    ("loss", "training loss"),
    ("eval", "validation loss"),
    ("grad_norm", "grad norm"),
    ("lr", "learning rate"),
)


def run_labels(runs: list[str]) -> list[str]:
    """Each run's folder name; parent/name where two runs share a name."""
    names = [Path(r).name for r in runs]
    if len(set(names)) == len(names):
        return names
    names = [f"{Path(r).resolve().parent.name}/{Path(r).name}" for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two of the runs have the same folder and parent names; rename one")
    return names


def run_points(run_dir: Path, label: str | None = None) -> list[dict]:
    """(run, step, tokens, flops, metric, value) of one run's metrics.jsonl."""
    run = load_run(run_dir)
    per_token = training_flops_per_token(run.model, run.trainer.seq_len)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {run_dir} logged no metrics")
    label = label or run_dir.name
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        tokens = rec.get(
            "tokens", rec["step"] * run.trainer.global_batch_size * run.trainer.seq_len
        )
        base = {"run": label, "step": rec["step"], "tokens": tokens, "flops": tokens * per_token}
        for key, value in rec.items():
            wanted = key in ("loss", "grad_norm", "lr") or (
                key.startswith("eval/") and key.endswith("/loss")
            )
            if wanted and isinstance(value, (int, float)):
                out.append({**base, "metric": key, "value": float(value)})
    for s in read_spikes(run_dir):
        tokens = s["step"] * run.trainer.global_batch_size * run.trainer.seq_len
        base = {"run": label, "step": s["step"], "tokens": tokens, "flops": tokens * per_token}
        for key in ("loss", "grad_norm"):
            out.append({**base, "metric": f"spike/{key}", "value": float(s[key])})
    return out


def plot(points: list[dict], x: str, path: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    runs = list(dict.fromkeys(p["run"] for p in points))
    for ax, (metric, title) in zip(axes.flat, PANELS):
        for run in runs:
            keys = sorted({p["metric"] for p in points if p["run"] == run})
            for key in [
                k for k in keys if k == metric or (metric == "eval" and k.startswith("eval/"))
            ]:
                pts = [(p[x], p["value"]) for p in points if p["run"] == run and p["metric"] == key]
                name = run if metric != "eval" else f"{run} {key.split('/')[1]}"
                ax.plot(
                    *zip(*pts),
                    "-",
                    lw=1,
                    marker="o" if metric == "eval" else None,
                    ms=3,
                    label=name,
                )
            key = f"spike/{metric}"
            spk = [(p[x], p["value"]) for p in points if p["run"] == run and p["metric"] == key]
            if spk:
                ax.plot(*zip(*spk), "x", color="red", ms=7, mew=2, label=f"{run} spike")
        ax.set_title(title)
        ax.set_xscale("log" if x != "step" else "linear")
        ax.set_xlabel({"step": "step", "tokens": "tokens seen", "flops": "training FLOPs"}[x])
        if metric == "grad_norm":
            ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis overlap
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def sweep_runs(sweep_dir: Path, color_by: str) -> tuple[str, list[str], dict[str, float]]:
    """(source coloured by, the proxies' run folders that logged metrics, run folder -> weight)."""
    path = Path(sweep_dir) / "sweep.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {sweep_dir} is not a mixture sweep")
    sweep = json.loads(path.read_text())
    names = [s["name"] for s in sweep["sources"]]
    source = color_by or names[0]
    if source not in names:
        raise ConfigError(f"--color-by {source!r} is not a source of the sweep: {', '.join(names)}")
    i = names.index(source)
    runs = [p for p in sweep["proxies"] if (Path(p["run_dir"]) / "metrics.jsonl").exists()]
    if not runs:
        raise FileNotFoundError(f"no proxy of {sweep_dir} has logged metrics yet; run the sweep")
    return source, [p["run_dir"] for p in runs], {p["run_dir"]: p["weights"][i] for p in runs}


def plot_swarm(points: list[dict], weights: dict[str, float], source: str, x: str, path: Path):
    """Training loss and each validation source's loss of every run, coloured by `weights`
    (run label -> weight of `source`); runs without a weight are black and dashed."""
    import matplotlib as mpl

    metrics = ["loss"] + sorted({p["metric"] for p in points if p["metric"].startswith("eval/")})
    cols = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.5 * cols + 1, 3.6 * rows), squeeze=False, layout="constrained"
    )
    cmap, norm = plt.get_cmap("viridis"), mpl.colors.Normalize(0, 1)
    runs = list(dict.fromkeys(p["run"] for p in points))
    for ax, metric in zip(axes.flat, metrics):
        for run in runs:
            pts = [(p[x], p["value"]) for p in points if p["run"] == run and p["metric"] == metric]
            if not pts:
                continue
            if run in weights:
                ax.plot(*zip(*pts), "-o", lw=1, ms=3, color=cmap(norm(weights[run])))
            else:
                ax.plot(*zip(*pts), "--o", lw=1.5, ms=4, color="black", label=run)
        title = "training loss" if metric == "loss" else f"validation loss: {metric.split('/')[1]}"
        ax.set_title(title)
        ax.set_xscale("log" if x != "step" else "linear")
        ax.set_xlabel({"step": "step", "tokens": "tokens seen", "flops": "training FLOPs"}[x])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=f"weight of {source}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)  # not save_figure: its tight_layout undoes the constrained one
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> int:
    x = {"steps": "step", "tokens": "tokens", "flops": "flops"}[args.x]
    swarm = None
    if args.sweep:
        source, proxies, by_dir = sweep_runs(Path(args.sweep), args.color_by)
        args.runs = [*proxies, *args.runs]
        swarm = (source, by_dir)
    elif args.color_by:
        raise ConfigError("--color-by colours a sweep's proxies: give --sweep SWEEP too")
    if not args.runs:
        raise ConfigError("give run folders to compare, or --sweep SWEEP")
    labels = run_labels(args.runs)
    points = [p for r, label in zip(args.runs, labels) for p in run_points(Path(r), label)]
    out = Path(args.out)
    write_table(points, out / "compare.csv")
    png = plot(points, x, out / "compare.png")
    # benchmark curves of the runs that have `analyze downstream` results, overlaid per task
    x_down = "steps" if x == "step" else "tokens"
    downstream_pngs = downstream.overlay_runs([Path(r) for r in args.runs], labels, out, x_down)
    finals = []
    for label in labels:
        losses = [p for p in points if p["run"] == label and p["metric"] == "loss"]
        if losses:
            finals.append(f"{label} {losses[-1]['value']:.4f} at step {losses[-1]['step']}")
    print(f"compare {len(args.runs)} runs (x: {args.x}); last training loss: {'; '.join(finals)}")
    print(f"table {out / 'compare.csv'}, plot {png}")
    if downstream_pngs:
        print(f"downstream: {', '.join(str(p) for p in downstream_pngs)}")
    if swarm:
        source, by_dir = swarm
        weights = {lab: by_dir[r] for r, lab in zip(args.runs, labels) if r in by_dir}
        rows = [{**p, f"weight_{source}": weights.get(p["run"], "")} for p in points]
        write_table(rows, out / "swarm.csv")
        swarm_png = plot_swarm(points, weights, source, x, out / "swarm.png")
        print(f"swarm of {len(weights)} proxies coloured by the weight of {source}: {swarm_png}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="overlay loss, validation loss, grad norm and LR of runs")
    p.add_argument("runs", nargs="*", help="run folders")
    p.add_argument("--sweep", help="a `pretrain mixture sweep` folder: overlay its proxies")
    p.add_argument("--color-by", default="", help="with --sweep: colour by this source's weight")
    p.add_argument("--x", default="tokens", choices=["tokens", "steps", "flops"])
    p.add_argument("--out", default="analysis/compare", help="output folder")
    p.set_defaults(func=main)
