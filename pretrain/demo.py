"""`make demo`: the main job end to end on the bundled real text (Debian man pages).

1. `pretrain data pipeline=dolma`: language ID, quality and content filters, dedup, mixing, a BPE
   tokenizer and Megatron shards with their metadata.json; report and chart.
2. `pretrain train` under torchrun over 4 local processes with tensor parallel 2 x data parallel
   2 (gloo on CPU; on a GPU machine the GPUs, as many ranks as GPUs up to 4): llama3-tiny, whose
   vocabulary and document separator come from the data, with a dense checkpoint series and
   validation on held-out documents (another shard of the pipeline's output) during training.
3. `pretrain analyze`: the series index and the exact batch of one step.
4. `pretrain export-hf RUN --step N`: a series checkpoint as a Hugging Face folder, loaded by
   transformers: its loss on the batch of step N+1 equals the loss training logged there, its
   logits match ours, and greedy decoding gives the same tokens in both; then it generates.

Each step prints one line: what was done and where its output is. The commands' own output is in
OUT/logs/, known third-party warnings in OUT/logs/warnings.log. Results: OUT/demo_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pretrain.quiet import route_known_warnings

SAMPLES = Path(__file__).resolve().parent.parent / "data_pipeline" / "samples"
STEPS = 40
PROMPT = "The ls command lists"


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_command(args: list[str], log_file: Path, env: dict, nproc: int = 1) -> None:
    """`pretrain ARGS` (under torchrun with nproc ranks); its output goes to log_file."""
    cmd = [sys.executable, "-m", "pretrain.cli", *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "pretrain.cli", *args]  # fmt: skip
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = log_file.read_text().splitlines()[-15:]
        raise SystemExit(
            f"demo: `pretrain {args[0]}` failed; {log_file} ends with:\n" + "\n".join(tail)
        )


def layout_for_machine() -> tuple[int, list[str], str]:
    """Ranks and parallel settings: TP2 x DP2 over 4 processes on CPU or 4+ GPUs, fewer GPUs
    get one rank each (TP over two of them)."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0 or gpus >= 4:
        where = "4 CPU processes (gloo)" if gpus == 0 else "4 GPUs (nccl)"
        return 4, ["parallel.tp=2", "parallel.dp_shard=2"], where
    tp = min(2, gpus)
    return gpus, [f"parallel.tp={tp}", f"parallel.dp_shard={gpus // tp}"], f"{gpus} GPU(s)"


def split_shards(tokens: Path) -> tuple[str, str]:
    """Training shard and held-out shard: the two largest shards of the pipeline's output (from
    its metadata.json), so validation reads documents training never sees."""
    meta = json.loads((tokens / "metadata.json").read_text())
    shards = sorted(meta["shards"], key=lambda s: -s["tokens"])
    return str(tokens / shards[0]["path"]), str(tokens / shards[1]["path"])


def step_data(out: Path, env: dict) -> Path:
    data = out / "data"
    run_command(
        [
            "data",
            "pipeline=dolma",
            f"input.paths=[{SAMPLES}/manpages_*.jsonl.gz]",
            f"output.dir={data}",
        ],  # fmt: skip
        out / "logs" / "data.log",
        env,
    )
    report = json.loads((data / "report.json").read_text())
    meta = json.loads((data / "tokens" / "metadata.json").read_text())
    log(
        f"1/4 data: {meta['documents']} of {report.get('input_records', '?')} documents kept, "
        f"{meta['tokens']:,} tokens of a {meta['tokenizer']['vocab_size']}-token BPE -> "
        f"{data / 'tokens'} (report {data / 'report.txt'}, chart {data / 'report.png'})"
    )
    return data / "tokens"


def step_train(out: Path, tokens: Path, env: dict) -> Path:
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    nproc, layout, where = layout_for_machine()
    train_shard, heldout = split_shards(tokens)
    args = [
        "train", "model=llama3-tiny", *layout,
        f"data.paths=[{train_shard}]", f"eval.paths=[{heldout}]", "eval.names=[heldout]",
        "eval.interval=10", "trainer.seq_len=64", "trainer.global_batch_size=16",
        "trainer.micro_batch_size=4", f"trainer.max_steps={STEPS}", "trainer.log_interval=1",
        "optim.lr=3e-3", "schedule.warmup_steps=5", "checkpoint.series=first+log2:32+every:10",
        "checkpoint.series_dtype=float32", "checkpoint.interval=20", f"run_dir={run_dir}",
    ]  # fmt: skip
    run_command(args, out / "logs" / "train.log", env, nproc=nproc)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    evals = [r for r in rows if any(k.startswith("eval") for k in r)]
    val = ""
    if evals:
        key = next(k for k in evals[-1] if k.startswith("eval") and "loss" in k)
        val = f"; held-out {key} {evals[0][key]:.3f} -> {evals[-1][key]:.3f}"
    log(
        f"2/4 train: llama3-tiny on {where}, {' '.join(layout)}, {STEPS} steps, loss "
        f"{losses[1]:.3f} -> {losses[STEPS]:.3f}{val} -> {run_dir} (log {out / 'logs/train.log'})"
    )
    return run_dir


def step_analyze(out: Path, run_dir: Path, env: dict) -> tuple[list[int], int, Path]:
    """The series index, and the batch of the step after the last series step inside the run
    (rebuilt from the data order and checked against the hash training logged)."""
    from pretrain.checkpoint import read_index

    run_command(["analyze", "series", "--run", str(run_dir)], out / "logs" / "analyze.log", env)
    series = sorted(e["step"] for e in read_index(run_dir) if e["kind"] == "weights")
    step = max(s for s in series if s < STEPS)  # its next step was trained and logged
    npz = out / f"batch_step{step + 1}.npz"
    run_command(
        ["analyze", "batch", "--run", str(run_dir), "--step", str(step + 1), "--out", str(npz)],
        out / "logs" / "analyze_batch.log",
        env,
    )
    log(
        f"3/4 analyze: {len(series)} series checkpoints {series}; the batch of step {step + 1} "
        f"rebuilt and checked against training's hash -> {npz}"
    )
    return series, step, npz


def step_export(out: Path, run_dir: Path, tokens: Path, step: int, npz: Path, env: dict) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers

    from pretrain.checkpoint import load_weights

    hf_root = out / "hf"
    run_command(
        [
            "export-hf",
            str(run_dir),
            "--step",
            str(step),
            "--out",
            str(hf_root),
            "--tokenizer",
            str(tokens / "tokenizer"),
            "--overwrite",
        ],  # fmt: skip
        out / "logs" / "export.log",
        env,
    )
    hf_dir = hf_root / f"step{step}"
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = load_weights(run_dir / "series" / f"step{step}").eval()
    batch = torch.from_numpy(np.load(npz)["tokens"].astype(np.int64))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(r["loss"] for r in rows if r.get("step") == step + 1 and "loss" in r)
    prompt = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        theirs = model(batch[:, :-1]).logits
        diff = (theirs - ours(batch[:, :-1])[..., : theirs.shape[-1]]).abs().max().item()
        loss = F.cross_entropy(theirs.flatten(0, 1), batch[:, 1:].flatten()).item()
        gen = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
        mine = prompt
        for _ in range(16):  # greedy without a KV cache: exactly what our logits say
            nxt = ours(mine)[:, -1, : theirs.shape[-1]].argmax(-1, keepdim=True)
            mine = torch.cat([mine, nxt], dim=1)
    same = torch.equal(gen, mine)
    log(
        f"4/4 export: step {step} -> {hf_dir} ({type(model).__name__}); transformers' loss on "
        f"the batch of step {step + 1} {loss:.5f} vs logged {logged:.5f}; max |logit diff| "
        f"{diff:.1e}; greedy tokens identical: {same}; it generates {tok.decode(gen[0])!r}"
    )
    return {
        "exported_step": step,
        "hf_dir": str(hf_dir),
        "hf_class": type(model).__name__,
        "hf_loss_on_next_batch": loss,
        "logged_loss_next_step": logged,
        "max_abs_logit_diff": diff,
        "generation_identical": same,
        "generated": tok.decode(gen[0]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="pretrain demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default="demo_out")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PRETRAIN_WARNINGS_LOG": str(out / "logs" / "warnings.log"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    os.environ["PRETRAIN_WARNINGS_LOG"] = env["PRETRAIN_WARNINGS_LOG"]
    route_known_warnings()
    start = time.time()
    tokens = step_data(out, env)
    run_dir = step_train(out, tokens, env)
    series, step, npz = step_analyze(out, run_dir, env)
    result = step_export(out, run_dir, tokens, step, npz, env)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in metrics if "loss" in r]
    result.update(
        first_loss=losses[0], final_loss=losses[-1], series_steps=series, steps=STEPS,
        seconds=round(time.time() - start, 1),
    )  # fmt: skip
    (out / "demo_results.json").write_text(json.dumps(result, indent=2))
    ok = (
        abs(result["hf_loss_on_next_batch"] - result["logged_loss_next_step"]) < 1e-4
        and result["max_abs_logit_diff"] < 1e-4
        and result["generation_identical"]
        and result["final_loss"] < result["first_loss"]
    )
    log(
        f"{'OK' if ok else 'MISMATCH'} in {result['seconds']:.0f} s: results in "
        f"{out / 'demo_results.json'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
