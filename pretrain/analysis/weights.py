"""`pretrain analyze weights`: how each layer's parameters move across the series.

For every checkpoint and every parameter tensor: its Frobenius norm, and the relative change
from the previous checkpoint of the series, ||W_t - W_prev|| / ||W_prev||. Outputs in OUT
(default RUN/analysis/weights): steps/stepN.json, weights.csv (one row per step and parameter:
step, tokens, param, norm, rel_change), weights.png (heat maps: parameters x checkpoints, the
norm and the log10 relative change).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from pretrain.analysis.common import (
    StepResults,
    find_checkpoints,
    load_model,
    out_dir_for,
    progress,
    save_figure,
    write_table,
)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in model.named_parameters()}  # a tied weight once


def weight_stats(cur: dict, prev: dict | None) -> dict[str, dict]:
    out = {}
    for name, w in cur.items():
        rec = {"norm": float(w.norm())}
        if prev is not None and name in prev:
            rec["rel_change"] = float((w - prev[name]).norm() / prev[name].norm().clamp_min(1e-30))
        out[name] = rec
    return out


def heat_map(rows: list[dict], path: Path) -> Path:
    steps = [r["step"] for r in rows]
    names = list(rows[0]["params"])
    norm = np.array([[r["params"][n]["norm"] for r in rows] for n in names])
    change = np.array(
        [[r["params"][n].get("rel_change", np.nan) for r in rows] for n in names], dtype=float
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.22 * len(names) + 2.5), sharey=True)
    panels = (
        (norm, "parameter norm", "viridis"),
        # an unchanged parameter (relative change 0) is drawn as missing, not as -inf
        (np.log10(np.where(change > 0, change, np.nan)), "log10 relative change", "magma"),
    )
    for ax, (values, title, cmap) in zip(axes, panels):
        im = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_title(title)
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=6)
        ax.set_xlabel("checkpoint step")
        fig.colorbar(im, ax=ax)
    axes[0].set_yticks(range(len(names)), names, fontsize=6)
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> int:
    ckpts = find_checkpoints(args.run, args.steps, args.verify)
    out = out_dir_for(args.run, "weights", args.out)
    results = StepResults(out)
    todo = [i for i, c in enumerate(ckpts) if not results.done(c.step)]
    prev_index, prev = None, None
    for i in progress(todo, len(todo), "weights"):
        if i > 0 and prev_index != i - 1:  # resuming mid-series: the previous step's weights
            prev = _params(load_model(ckpts[i - 1]))
        cur = _params(load_model(ckpts[i]))
        stats = weight_stats(cur, prev if i > 0 else None)
        results.write(ckpts[i].step, {"tokens": ckpts[i].tokens, "params": stats})
        prev_index, prev = i, cur
    rows = results.rows()
    flat = [
        {"step": r["step"], "tokens": r["tokens"], "param": name, **stat}
        for r in rows
        for name, stat in r["params"].items()
    ]
    write_table(flat, out / "weights.csv")
    png = heat_map(rows, out / "weights.png")
    last = rows[-1]
    changes = [s["rel_change"] for s in last["params"].values() if "rel_change" in s]
    summary = f"median relative change {np.median(changes):.3g}" if changes else "one checkpoint"
    print(
        f"weights: {len(rows[0]['params'])} parameters x {len(rows)} checkpoints "
        f"({len(ckpts) - len(todo)} already done); step {last['step']}: {summary} since the "
        f"previous checkpoint; table {out / 'weights.csv'}, heat map {png}"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("weights", help="per-layer norms and relative change, as a heat map")
    p.add_argument("--run", required=True)
    p.add_argument("--steps", help="series spec of the checkpoints (default: all)")
    p.add_argument("--out", help="output folder (default RUN/analysis/weights)")
    p.add_argument("--verify", default="size", choices=["size", "checksum"])
    p.set_defaults(func=main)
