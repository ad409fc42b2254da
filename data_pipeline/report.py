"""The run report: DIR/report.json, a readable table (report.txt, printed), and report.png.

Accounting: every input record is a document or a quarantine entry (ingest); every document is kept or
removed with a step and reason (mix). `accounting.balanced` checks input = kept + removed + quarantined.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .executor import read_marker

STEP_NAMES = ["language", "quality", "content", "dedup", "mix"]


def _stats(run, stage: str) -> list[dict]:
    spec = run.specs.get(stage)
    if spec is None:
        return []
    return [(read_marker(run.dir, stage, i) or {}).get("stats", {}) for i in range(spec.n)]


def stage_timings(run) -> dict[str, dict]:
    """Per stage, from its tasks' markers: wall time (first start to last finish), task seconds
    (summed over tasks: core-seconds busy), CPU seconds, input MB, MB/s, MB/s per core (MB over
    task seconds), MB per CPU second, and how many cores were busy on average (task seconds over
    wall time)."""
    out: dict[str, dict] = {}
    for name, spec in run.specs.items():
        marks = [read_marker(run.dir, name, i) for i in range(spec.n)]
        marks = [m for m in marks if m and "started" in m]
        if name == "report" or not marks:
            continue
        wall = max(m["finished"] for m in marks) - min(m["started"] for m in marks)
        busy = sum(m["finished"] - m["started"] for m in marks)
        mb = sum(m.get("bytes", 0) for m in marks) / 1e6
        cpu = sum(m.get("cpu_s", 0.0) for m in marks)
        out[name] = {
            "tasks": len(marks),
            "wall_s": round(wall, 3),
            "task_s": round(busy, 6),
            "cpu_s": round(cpu, 6),
            "mb": round(mb, 6),
            "mb_per_s": round(mb / wall, 3) if wall > 0 else None,
            "mb_per_s_per_core": round(mb / busy, 3) if busy > 0 else None,
            # per CPU second: what a core does when nothing else shares it (robust to load)
            "mb_per_cpu_s": round(mb / cpu, 3) if cpu > 0 else None,
            "cores_busy": round(busy / wall, 2) if wall > 0 else None,
        }
    return out


def build_report(run) -> dict:
    ing = _stats(run, "ingest")
    mix = [s for s in _stats(run, "mix") if s]
    tok = [s for s in _stats(run, "tokenize") if s]
    cl = [s for s in _stats(run, "dedup-cluster") if s]
    para = [s for s in _stats(run, "dedup-paragraph") if s]
    tt = [s for s in _stats(run, "tokenizer-train") if s]

    quarantined: dict[str, int] = {}
    for s in ing:
        for k, v in s.get("quarantined", {}).items():
            quarantined[k] = quarantined.get(k, 0) + v
    input_docs = sum(s.get("records", 0) for s in ing)
    docs = sum(s.get("docs", 0) for s in ing)
    removed: dict[str, int] = {}
    removed_bytes: dict[str, int] = {}
    fired: dict[str, int] = {}
    reps: dict[str, int] = {}
    per_source: dict[str, dict] = {}
    for s in mix:
        for d_in, d_out in (
            (s["removed"], removed),
            (s["removed_bytes"], removed_bytes),
            (s["fired"], fired),
            (s["replacements"], reps),
        ):
            for k, v in d_in.items():
                d_out[k] = d_out.get(k, 0) + v
        for src, ps in s["per_source"].items():
            agg = per_source.setdefault(src, {k: 0 for k in ps})
            for k, v in ps.items():
                agg[k] = agg.get(k, 0) + v
    kept = sum(s["kept"] for s in mix)
    output_docs = sum(s["output_docs"] for s in mix)
    tokens = sum(s["tokens"] for s in tok)
    for s in tok:
        for src, n in s.get("tokens_per_source", {}).items():
            per_source.setdefault(src, {})["tokens"] = per_source.get(src, {}).get("tokens", 0) + n
    by_step = {st: 0 for st in STEP_NAMES}
    for k, v in removed.items():
        by_step[k.split(":", 1)[0]] = by_step.get(k.split(":", 1)[0], 0) + v
    kept_bytes = sum(ps.get("kept_bytes", 0) for ps in per_source.values())
    bytes_per_token = (
        (sum(ps.get("kept_bytes", 0) for ps in per_source.values()) / tokens) if tokens else None
    )
    removed_tokens_est = (
        {k: round(v / bytes_per_token) for k, v in removed_bytes.items()} if bytes_per_token else {}
    )
    qsum = sum(quarantined.values())
    rsum = sum(removed.values())
    report = {
        "pipeline": run.cfg.name,
        "output_dir": str(run.dir),
        "input_files": len(run.inputs),
        "input_docs": input_docs,
        "documents_after_ingest": docs,
        "kept_docs": kept,
        "output_docs": output_docs,  # kept documents including upsampled copies
        "quarantined_docs": qsum,
        "quarantined_by_reason": dict(sorted(quarantined.items())),
        "removed_docs": dict(sorted(removed.items())),
        "removed_docs_total": rsum,
        "removed_by_step": by_step,
        "removed_bytes": dict(sorted(removed_bytes.items())),
        "removed_tokens_estimated": removed_tokens_est,  # bytes / (kept bytes per token)
        "rules_fired": dict(sorted(fired.items())),  # every rule that fired, also after the first
        "replacements": reps,
        "per_source": per_source,
        "dedup": (cl[0] if cl else {}) | ({"paragraph": para[0]} if para else {}),
        "tokenizer": tt[0] if tt else {},
        "tokens": tokens,
        "token_shards": sorted(sh for s in tok for sh in s.get("shards", [])),
        "token_dtype": tok[0]["dtype"] if tok else None,
        "kept_bytes": kept_bytes,
        "stages": stage_timings(run),
        "accounting": {
            "input_docs": input_docs,
            "kept_plus_removed_plus_quarantined": kept + rsum + qsum,
            "balanced": input_docs == kept + rsum + qsum if mix else None,
        },
    }
    (run.dir / "report.json").write_text(json.dumps(report, indent=1))
    table = render_table(report)
    (run.dir / "report.txt").write_text(table)
    try:
        chart(report, run.dir / "report.png")
    except Exception as err:  # the chart is a convenience; the JSON is the record
        print(f"report.png not written: {err}")
    return report


def render_table(rep: dict) -> str:
    console = Console(record=True, width=100, file=open("/dev/null", "w"))
    t = Table(title=f"data pipeline report: {rep['output_dir']}")
    t.add_column("what")
    t.add_column("docs", justify="right")
    t.add_column("bytes", justify="right")
    t.add_row("input records", str(rep["input_docs"]), "")
    for k, v in rep["quarantined_by_reason"].items():
        t.add_row(f"  quarantined: {k}", str(v), "")
    for k, v in rep["removed_docs"].items():
        t.add_row(f"  removed {k}", str(v), str(rep["removed_bytes"].get(k, "")))
    t.add_row("kept", str(rep["kept_docs"]), str(rep["kept_bytes"]))
    t.add_row("output docs (with copies)", str(rep["output_docs"]), "")
    t.add_row("tokens", str(rep["tokens"]), "")
    console.print(t)
    s = Table(title="per source")
    for col in ("source", "input", "kept", "removed", "output docs", "tokens"):
        s.add_column(col, justify="right" if col != "source" else "left")
    for src, ps in sorted(rep["per_source"].items()):
        s.add_row(
            src, *(str(ps.get(k, 0)) for k in ("input", "kept", "removed", "output_docs", "tokens"))
        )
    console.print(s)
    st = Table(title="stages (wall time, input MB/s, per busy core)")
    for col in ("stage", "tasks", "wall s", "MB", "MB/s", "MB/s/core", "MB/cpu-s", "cores busy"):
        st.add_column(col, justify="right" if col != "stage" else "left")
    for name, x in rep.get("stages", {}).items():
        st.add_row(
            name,
            str(x["tasks"]),
            f"{x['wall_s']:.2f}",
            f"{x['mb']:.2f}",
            *(
                f"{x[k]:.2f}" if x[k] is not None else "-"
                for k in ("mb_per_s", "mb_per_s_per_core", "mb_per_cpu_s")
            ),
            f"{x['cores_busy']:.2f}" if x["cores_busy"] is not None else "-",
        )
    console.print(st)
    acc = rep["accounting"]
    console.print(
        f"accounting: input {acc['input_docs']} = kept + removed + quarantined "
        f"{acc['kept_plus_removed_plus_quarantined']}: {'OK' if acc['balanced'] else 'MISMATCH'}"
    )
    return console.export_text()


def chart(rep: dict, path: Path) -> None:
    import matplotlib  # heavy (~1 s): imported only when the chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [("input", 0), ("quarantine", rep["quarantined_docs"])] + [
        (s, rep["removed_by_step"].get(s, 0)) for s in STEP_NAMES
    ]
    remaining = rep["input_docs"]
    labels, left, removed = [], [], []
    for name, n in steps[1:]:
        labels.append(name)
        removed.append(n)
        remaining -= n
        left.append(remaining)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(labels, left, label="documents remaining", color="#4c72b0")
    ax.bar(labels, removed, bottom=left, label="removed at this step", color="#dd8452")
    for x, (l, r) in enumerate(zip(left, removed)):
        ax.text(x, l + r, f"-{r}", ha="center", va="bottom", fontsize=8)
    ax.set_title(
        f"{rep['input_docs']} input documents -> {rep['kept_docs']} kept, {rep['tokens']:,} tokens"
    )
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
