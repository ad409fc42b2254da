"""`pretrain analyze report --run DIR`: one self-contained HTML page for a run.

The page (DIR/analysis/report.html, PNGs embedded as data URIs so it can be mailed or archived
alone) holds: the resolved config, a summary of the data provenance (data_order.json: sources,
files, documents, tokens, mixture), the training and validation curves (loss spikes marked), the
loss spikes with the documents of their batches (RUN/spikes.jsonl), the checkpoint series table, and every analysis output found under DIR/analysis (each command's PNG and the first rows
of its CSV).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
from pathlib import Path

from pretrain.analysis import compare
from pretrain.analysis.common import load_run
from pretrain.analysis.spikes import read_spikes
from pretrain.checkpoint import read_index
from pretrain.series import format_bytes

CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
    "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    "pre{background:#f6f6f6;padding:8px;font-size:11px;max-height:400px;overflow:auto}"
    "img{max-width:100%}"
)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def provenance(run_dir: Path) -> str:
    path = run_dir / "data_order.json"
    if not path.exists():
        return "<p>no data_order.json</p>"
    fp = json.loads(path.read_text())
    rows = [
        [s["name"], s["n_docs"], f"{s['n_tokens']:,}", len(s["files"]), w]
        for s, w in zip(fp["sources"], fp.get("weights", [None] * len(fp["sources"])))
    ]
    table = _table(["source", "documents", "tokens", "files", "weight"], rows)
    return f"<p>seed {fp['seed']}, seq_len {fp['seq_len']}, shuffle {fp['shuffle']}</p>{table}"


def spikes_table(run_dir: Path) -> str:
    spikes = read_spikes(run_dir)
    if not spikes:
        return "<p>none flagged (RUN/spikes.jsonl)</p>"
    rows = []
    for s in spikes:
        d = (s.get("documents") or [{}])[0]
        top = f"{d['source']} doc {d['doc']} ({Path(d['file']).name}#{d['index']})" if d else ""
        z = f"{s['z_loss']:.1f}" if s.get("z_loss") is not None else "n/a"
        act = s["action"] + (f" to {s['rollback_to']}" if s.get("rollback_to") is not None else "")
        rows.append([s["step"], f"{s['previous_loss']:.4f}", f"{s['loss']:.4f}", z,
                     f"{s['grad_norm']:.3g}", act, top])  # fmt: skip
    header = ["step", "loss before", "loss", "z", "grad norm", "action", "top document"]
    return _table(header, rows)


def series_table(run_dir: Path) -> str:
    entries = read_index(run_dir)
    rows = [
        [e["step"], f"{e['tokens']:,}", e["kind"], format_bytes(e["bytes"]), e["path"]]
        for e in entries
    ]
    return _table(["step", "tokens", "kind", "size", "path"], rows)


def analysis_sections(run_dir: Path, max_rows: int = 12) -> list[str]:
    out = []
    for folder in sorted(p for p in (run_dir / "analysis").glob("*") if p.is_dir()):
        parts = [f"<h3>{html.escape(folder.name)}</h3>"]
        parts += [_img(png) for png in sorted(folder.glob("*.png"))]
        for table in sorted(folder.glob("*.csv")):
            with open(table, newline="") as fh:
                rows = list(csv.reader(fh))
            if rows:
                parts.append(f"<p>{table.name} (first {max_rows} of {len(rows) - 1} rows)</p>")
                parts.append(_table(rows[0], rows[1 : max_rows + 1]))
        out.append("".join(parts))
    return out


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    run = load_run(run_dir)
    out = run_dir / "analysis"
    curves = compare.plot(compare.run_points(run_dir), "step", out / "report_curves.png")
    found = analysis_sections(run_dir)
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_dir.name)}"
        f"</title><style>{CSS}</style></head><body><h1>Run {html.escape(str(run_dir))}</h1>",
        f"<p>model {html.escape(run.model.name)}, {run.trainer.max_steps} steps of "
        f"{run.trainer.global_batch_size} x {run.trainer.seq_len} tokens</p>",
        "<h2>Loss and validation curves</h2>",
        _img(curves),
        "<h2>Loss spikes</h2>",
        spikes_table(run_dir),
        "<h2>Data provenance</h2>",
        provenance(run_dir),
        "<h2>Checkpoint series</h2>",
        series_table(run_dir),
        "<h2>Analyses</h2>",
        *(found or ["<p>none yet (pretrain analyze eval / memorization / weights)</p>"]),
        "<h2>Config</h2>",
        f"<pre>{html.escape((run_dir / 'config.yaml').read_text())}</pre></body></html>",
    ]
    path = out / "report.html"
    path.write_text("\n".join(page))
    print(f"report: {path} ({path.stat().st_size / 1e3:.0f} KB, {len(found)} analyses)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page for a run")
    p.add_argument("--run", required=True)
    p.set_defaults(func=main)
