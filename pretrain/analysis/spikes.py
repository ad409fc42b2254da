"""`pretrain analyze spikes --run DIR [--out OUT] [--docs N]`: every loss spike of a run.

Reads RUN/spikes.jsonl (written by the trainer's SpikeDetector, pretrain/spikes.py) and prints one
row per spike (step, loss before and at the spike, both z-scores, LR, what was done) with the
documents of its batch that explain most of the jump (source, document id, shard file#index,
tokens in the batch, mean loss). Writes OUT/spikes.csv (one row per spike and document),
OUT/spikes.jsonl (the records as the trainer wrote them) and OUT/spikes.png: the training loss
and grad norm curves of metrics.jsonl with each spike marked. OUT defaults to DIR/analysis/spikes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt

from pretrain.analysis.common import out_dir_for, save_figure, write_table


def read_spikes(run_dir: str | Path) -> list[dict]:
    """RUN/spikes.jsonl; [] when the run found none (or predates the detector)."""
    path = Path(run_dir) / "spikes.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trajectory(run_dir: Path) -> dict[int, dict]:
    """The training records of metrics.jsonl by step, the last one of a step winning (a step
    trained again after a rollback or a resume is logged again, with the same values)."""
    path = run_dir / "metrics.jsonl"
    recs = (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    )
    return {r["step"]: r for r in recs if "loss" in r}


def rows(spikes: list[dict], docs: int) -> list[dict]:
    out = []
    for s in spikes:
        base = {
            k: s.get(k)
            for k in (
                "step",
                "loss",
                "previous_loss",
                "z_loss",
                "grad_norm",
                "z_grad_norm",
                "lr",
                "action",
                "rollback_to",
            )
        }
        base["skipped_samples"] = (
            f"{s['skipped_samples'][0]}..{s['skipped_samples'][1] - 1}"
            if s.get("skipped_samples")
            else ""
        )
        for rank, d in enumerate(s.get("documents", [])[:docs], start=1):
            out.append(
                {
                    **base,
                    "rank": rank,
                    "source": d["source"],
                    "doc": d["doc"],
                    "file": d["file"],
                    "index": d["index"],
                    "tokens": d["tokens"],
                    "doc_loss": d["loss"],
                    "excess": d.get("excess"),
                }
            )
        if not s.get("documents"):
            out.append({**base, "rank": 0})
    return out


def plot(run_dir: Path, spikes: list[dict], path: Path) -> Path:
    steps = trajectory(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in ((axes[0], "loss", "training loss"), (axes[1], "grad_norm", "grad norm")):
        xs = sorted(steps)
        ax.plot(xs, [steps[s][key] for s in xs], "-", lw=1, label="trained")
        if spikes:
            ax.plot(
                [s["step"] for s in spikes],
                [s[key] for s in spikes],
                "x",
                color="red",
                ms=8,
                mew=2,
                label="spike",
            )
        ax.set_title(title)
        ax.set_xlabel("step")
        if key == "grad_norm":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def fmt(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "n/a"


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    spikes = read_spikes(run_dir)
    out = out_dir_for(run_dir, "spikes", args.out)
    table = rows(spikes, args.docs)
    write_table(table, out / "spikes.csv")
    (out / "spikes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spikes))
    png = plot(run_dir, spikes, out / "spikes.png")
    print(f"{len(spikes)} spike(s) in {run_dir / 'spikes.jsonl'}")
    if spikes:
        print(
            f"{'step':>6} {'loss before':>11} {'loss':>8} {'z loss':>7} {'grad norm':>9} "
            f"{'z gnorm':>7} {'lr':>9}  action"
        )
    for s in spikes:
        act = s["action"]
        if s.get("rollback_to") is not None:
            a, b = s["skipped_samples"]
            act += f" to step {s['rollback_to']}, skipped samples {a}..{b - 1}"
        print(
            f"{s['step']:>6} {s['previous_loss']:>11.4f} {s['loss']:>8.4f} "
            f"{fmt(s['z_loss'], '7.1f'):>7} {s['grad_norm']:>9.3g} "
            f"{fmt(s['z_grad_norm'], '7.1f'):>7} {s['lr']:>9.3g}  {act}"
        )
        for d in s.get("documents", [])[: args.docs]:
            print(
                f"         {d['source']} doc {d['doc']} ({Path(d['file']).name}#{d['index']}): "
                f"{d['tokens']} tokens, loss {d['loss']:.3f}, excess {d.get('excess', 0):.1f}"
            )
    print(f"table {out / 'spikes.csv'}, plot {png}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("spikes", help="the run's loss spikes and the documents of their batches")
    p.add_argument("--run", required=True)
    p.add_argument("--out", help="output folder (default RUN/analysis/spikes)")
    p.add_argument("--docs", type=int, default=3, help="documents listed per spike (default 3)")
    p.set_defaults(func=main)
