"""The summary of benchmarks/gpu_acceptance.sh: its result files in, summary.json and
summary.md (a table ready for docs/benchmarks.md) out, each goal of the GPU path marked. In the
package so that the tests check it without importing a benchmark; benchmarks/acceptance_summary.py
is its command line.

    python benchmarks/acceptance_summary.py OUT_DIR

Reads OUT_DIR/parity.json and fp8_loss.json (benchmarks/gpu_checks.py) and throughput_bf16.json /
throughput_fp8_tensorwise.json (benchmarks/train_throughput.py); a file that is missing is
reported as not run, never guessed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MFU_GOAL = 0.55  # OLMo2-1B at seq 4096 on one H100, bf16
FP8_SPEEDUP_GOAL = 1.25  # FP8 tokens/s over bf16's
THROUGHPUT = {"bf16": "throughput_bf16.json", "fp8": "throughput_fp8_tensorwise.json"}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def summarize(out_dir: Path) -> dict:
    """Every figure and goal of the run in OUT_DIR (None where a step did not run)."""
    parity = _read(out_dir / "parity.json")
    fp8_loss = _read(out_dir / "fp8_loss.json")
    cp_parity = _read(out_dir / "cp_parity.json")  # written only where >= 2 GPUs ran it
    runs = {k: _read(out_dir / name) for k, name in THROUGHPUT.items()}
    bf16, fp8 = runs["bf16"], runs["fp8"]
    speedup = (
        fp8["tokens_per_s_per_device"] / bf16["tokens_per_s_per_device"] if bf16 and fp8 else None
    )
    goals = {
        "parity on CUDA": parity["pass"] if parity else None,
        "FP8 loss within 1% of bf16 at the last step": fp8_loss["pass"] if fp8_loss else None,
        "context parallel cp=2 (ring, alltoall) on CUDA": cp_parity["pass"] if cp_parity else None,
        f"bf16 MFU above {MFU_GOAL:.0%}": (
            bf16["mfu"] > MFU_GOAL if bf16 and bf16.get("mfu") is not None else None
        ),
        f"FP8 at least {FP8_SPEEDUP_GOAL}x bf16": (
            speedup >= FP8_SPEEDUP_GOAL if speedup is not None else None
        ),
    }
    return {
        "parity": parity,
        "fp8_loss": fp8_loss,
        "cp_parity": cp_parity,
        "throughput": runs,
        "fp8_speedup": speedup,
        "goals": goals,
    }


def _fmt(value, spec: str) -> str:
    return "not run" if value is None else format(value, spec)


def markdown(summary: dict) -> str:
    lines = [
        "| run | tok/s/device | TFLOP/s | MFU (datasheet) | of measured bf16 GEMM | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in summary["throughput"].items():
        r = r or {}
        lines.append(
            f"| {r.get('model', '?')} {name} compile={r.get('compile', '?')} "
            f"seq {r.get('seq_len', '?')} | {_fmt(r.get('tokens_per_s_per_device'), ',.0f')} | "
            f"{_fmt(r.get('tflops_per_device'), '.1f')} | {_fmt(r.get('mfu'), '.1%')} | "
            f"{_fmt(r.get('mfu_vs_gemm'), '.2f')} | {_fmt(r.get('peak_memory_gb'), '.1f')} GB |"
        )
    lines.append(f"\nFP8 / bf16 tokens/s: {_fmt(summary['fp8_speedup'], '.2f')}")
    if summary["parity"]:
        for case in summary["parity"]["cases"]:
            lines.append(
                f"- parity {case['case']}: loss {case['loss']:.1e}, grad norm "
                f"{case['grad_norm']:.1e}, params {case['params']:.1e} (tolerance "
                f"{case['tolerance']:.0e})"
            )
    cp = summary.get("cp_parity")
    for case in cp["cases"] if cp else []:
        lines.append(
            f"- parity {case['case']}: loss {case['loss']:.1e}, grad norm "
            f"{case['grad_norm']:.1e}, params {case['params']:.1e} (tolerance "
            f"{cp['tolerance']:.0e})"
        )
    if summary["fp8_loss"]:
        f = summary["fp8_loss"]
        gaps = ", ".join(f"{k} {v:.2%}" for k, v in f["relative_to_bf16"].items())
        lines.append(f"- FP8 loss at step {f['steps']} relative to bf16: {gaps}")
    lines.append("\n| goal | met |\n|---|---|")
    for goal, met in summary["goals"].items():
        lines.append(f"| {goal} | {'not run' if met is None else ('yes' if met else 'NO')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="the folder gpu_acceptance.sh wrote")
    args = p.parse_args(argv)
    if not args.out_dir.is_dir():
        p.error(f"{args.out_dir} is not a folder of gpu_acceptance.sh results")
    summary = summarize(args.out_dir)
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    text = markdown(summary)
    (args.out_dir / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
