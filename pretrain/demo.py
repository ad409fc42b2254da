"""`make demo`: the main job end to end on the bundled real text (Debian man pages).

1. `pretrain data pipeline=dolma`: language ID, quality and content filters, dedup, mixing, a BPE
   tokenizer (1,024 tokens: llama3-tiny's own vocabulary size) and Megatron shards with their
   metadata.json; report and chart.
2. `pretrain train` under torchrun over 4 local processes with tensor parallel 2 x data parallel
   2 (gloo on CPU; on a GPU machine the GPUs, as many ranks as GPUs up to 4): llama3-tiny, whose
   vocabulary and document separator come from the data, with a dense checkpoint series and
   validation on held-out documents (another shard of the pipeline's output) during training.
   The trainer's spike detector flags the run's loss spike (step 11 on the CPU run: 61 of its
   64 sequences are above step 10's loss, median 8.8 against 5.97, so the weights broke with
   step 10's update at the peak LR, not a few documents) with its batch: one console line here,
   RUN/spikes.jsonl, and `pretrain analyze spikes` in step 4 (its table and plot join the
   report, whose curves mark the spike).
3. `pretrain analyze series` and `batch`: the series index and the exact batch of one step.
4. `pretrain analyze eval`, `memorization`, `downstream`, `weights`, `report`: held-out loss of
   every series checkpoint, Pythia's memorization of training sequences, lm-eval accuracy on a
   cloze and a multiple-choice task written by `analyze text-tasks` from the held-out half of the
   English pages (lm-eval's own request building and metrics, our decoder underneath),
   per-parameter weight change, and one HTML page of the run with every plot.
5. `pretrain export-hf RUN --step N`: a series checkpoint as a Hugging Face folder, loaded by
   transformers: its loss on the batch of step N+1 equals the loss training logged there, its
   logits match ours, and greedy decoding gives the same tokens in both; then it generates from
   a line of real man-page text, shown as text and as tokens.

Each step prints one line: what was done, where its output is and how long it took. The commands'
own output is in OUT/logs/, known third-party warnings in OUT/logs/warnings.log (torch, torchao
and transformers are imported inside the steps, after `route_known_warnings()` has run, so their
import-time warnings go there too). Results and step times: OUT/demo_results.json.
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
# The opening of every page in the sample's English part (gcloud's manual): real text whose
# continuation a 40-step model can have learned (the page structure, not yet facts).
PROMPT = "NAME\n       gcloud"
STEP_COUNT = 5
EVAL_TOKENS = 8192  # held-out tokens per evaluation (128 windows of 64)
HELDOUT_DOCS = 150  # the English file's second half (300 pages): the held-out shard's pages
DOWNSTREAM_TASKS = "man_cloze,man_mc"


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
            f"demo: `pretrain {' '.join(args[:2])}` failed; {log_file} ends with:\n"
            + "\n".join(tail)
        )


def layout_for_machine() -> tuple[int, list[str], str]:
    """Ranks and parallel settings: TP2 x DP2 over 4 processes on CPU or 4+ GPUs, fewer GPUs
    get one rank each (TP over two of them)."""
    import torch  # heavy; imported after main() routed the known warnings (see the docstring)

    gpus = torch.cuda.device_count()
    if gpus == 0 or gpus >= 4:
        where = "4 CPU processes (gloo)" if gpus == 0 else "4 GPUs (nccl)"
        return 4, ["parallel.tp=2", "parallel.dp_shard=2"], where
    tp = min(2, gpus)
    return gpus, [f"parallel.tp={tp}", f"parallel.dp_shard={gpus // tp}"], f"{gpus} GPU(s)"


def split_shards(tokens: Path) -> tuple[str, str]:
    """Training shard and held-out shard: the two largest shards of the pipeline's output (from
    its metadata.json), the two halves of the English pages (`input.task_bytes` below splits
    that file into two ingest tasks), so validation reads like documents training never sees."""
    meta = json.loads((tokens / "metadata.json").read_text())
    shards = sorted(meta["shards"], key=lambda s: -s["tokens"])
    return str(tokens / shards[0]["path"]), str(tokens / shards[1]["path"])


def step_data(out: Path, env: dict) -> tuple[Path, str]:
    data = out / "data"
    run_command(
        [
            "data",
            "pipeline=dolma",
            f"input.paths=[{SAMPLES}/manpages_*.jsonl.gz]",
            f"output.dir={data}",
            "tokenizer.train.vocab_size=1024",  # the tiny model's size: it learns context sooner
            "input.task_bytes=200000",  # the English file (0.4 MB) in two shards: train, held out
        ],  # fmt: skip
        out / "logs" / "data.log",
        env,
    )
    report = json.loads((data / "report.json").read_text())
    meta = json.loads((data / "tokens" / "metadata.json").read_text())
    return data / "tokens", (
        f"data: {meta['documents']} of {report['input_docs']} documents kept, "
        f"{meta['tokens']:,} tokens of a {meta['tokenizer']['vocab_size']}-token BPE -> "
        f"{data / 'tokens'} (report {data / 'report.txt'}, chart {data / 'report.png'})"
    )


def step_train(out: Path, tokens: Path, env: dict) -> tuple[Path, str]:
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    nproc, layout, where = layout_for_machine()
    train_shard, heldout = split_shards(tokens)
    args = [
        "train", "model=llama3-tiny", *layout,
        f"data.paths=[{train_shard}]", f"eval.paths=[{heldout}]", "eval.names=[heldout]",
        f"eval.max_tokens={EVAL_TOKENS}", "eval.interval=10", "trainer.seq_len=64", "trainer.global_batch_size=64",
        "trainer.micro_batch_size=16", f"trainer.max_steps={STEPS}", "trainer.log_interval=1",
        "optim.lr=1e-2", "schedule.warmup_steps=5", "checkpoint.series=first+log2:32+every:10",
        "checkpoint.series_dtype=float32", "checkpoint.interval=20", f"run_dir={run_dir}",
    ]  # fmt: skip
    run_command(args, out / "logs" / "train.log", env, nproc=nproc)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    val = [r["eval/heldout/loss"] for r in rows if "eval/heldout/loss" in r]
    return run_dir, (
        f"train: llama3-tiny on {where}, {' '.join(layout)}, {STEPS} steps of 64 x 64 tokens, "
        f"loss {losses[1]:.3f} -> {losses[STEPS]:.3f}; held-out loss {val[0]:.3f} -> "
        f"{val[-1]:.3f} ({len(val)} evaluations) -> {run_dir} (log {out / 'logs/train.log'})"
    )


def step_series_batch(out: Path, run_dir: Path, env: dict) -> tuple[list[int], int, Path, str]:
    """The series index, and the batch of the step after the last series step inside the run
    (rebuilt from the data order and checked against the hash training logged)."""
    from pretrain.checkpoint import read_index  # imports torch: after the warnings are routed

    run_command(["analyze", "series", "--run", str(run_dir)], out / "logs" / "series.log", env)
    series = sorted(e["step"] for e in read_index(run_dir) if e["kind"] == "weights")
    step = max(s for s in series if s < STEPS)  # its next step was trained and logged
    npz = out / f"batch_step{step + 1}.npz"
    run_command(
        ["analyze", "batch", "--run", str(run_dir), "--step", str(step + 1), "--out", str(npz)],
        out / "logs" / "batch.log",
        env,
    )
    return (
        series,
        step,
        npz,
        (
            f"analyze series/batch: {len(series)} series checkpoints {series}; the batch of step "
            f"{step + 1} rebuilt and checked against training's hash -> {npz}"
        ),
    )


def step_analyses(out: Path, run_dir: Path, tokens: Path, env: dict) -> tuple[Path, str]:
    """Held-out loss across the series, memorization, weight change and the HTML report; each
    command's own summary line goes to its log, the figures are read back from the tables."""
    logs = out / "logs"
    _, heldout = split_shards(tokens)
    run_command(
        ["analyze", "eval", str(run_dir), "--data", heldout, "--max-tokens", str(EVAL_TOKENS)],
        logs / "eval.log",
        env,
    )
    run_command(
        ["analyze", "memorization", "--run", str(run_dir), "--samples", "64"],
        logs / "memorization.log",
        env,
    )
    tasks = out / "tasks"
    run_command(
        ["analyze", "text-tasks", "--input", str(SAMPLES / "manpages_en.jsonl.gz"),
         "--out", str(tasks), "--kinds", "cloze,mc", "--skip-docs", str(HELDOUT_DOCS)],
        logs / "text_tasks.log",
        env,
    )  # fmt: skip
    run_command(
        ["analyze", "downstream", "--run", str(run_dir), "--tasks", DOWNSTREAM_TASKS,
         "--include-path", str(tasks), "--device", "cpu"],
        logs / "downstream.log",
        env,
    )  # fmt: skip
    run_command(["analyze", "weights", "--run", str(run_dir)], logs / "weights.log", env)
    run_command(["analyze", "spikes", "--run", str(run_dir)], logs / "spikes.log", env)
    run_command(["analyze", "report", "--run", str(run_dir)], logs / "report.log", env)
    analysis = run_dir / "analysis"
    evals = [json.loads(x) for x in (analysis / "eval/eval.jsonl").read_text().splitlines()]
    key = next(k for k in evals[0] if k.startswith("loss/"))
    best = min(evals, key=lambda r: r[key])
    mem_rows = (analysis / "memorization" / "memorization.jsonl").read_text().splitlines()
    mem = [json.loads(x) for x in mem_rows]
    down_rows = (analysis / "downstream" / "downstream.jsonl").read_text().splitlines()
    down = [json.loads(x) for x in down_rows]
    acc = {
        task: sorted((r for r in down if r["task"] == task and r["metric"] == "acc"),
                     key=lambda r: r["step"])
        for task in DOWNSTREAM_TASKS.split(",")
    }  # fmt: skip
    return analysis, (
        f"analyze eval/memorization/downstream/weights/report: held-out loss at {len(evals)} "
        f"checkpoints, lowest {best[key]:.3f} at step {best['step']}; "
        f"{(mem[-1]['memorized'] or 0):.0%} of 64 training sequences memorized at step "
        f"{mem[-1]['step']}; "
        + "; ".join(
            f"{task} acc {rows[0]['value']:.3f} (step {rows[0]['step']}) -> "
            f"{rows[-1]['value']:.3f} +- {rows[-1]['stderr']:.3f} (step {rows[-1]['step']})"
            for task, rows in acc.items()
        )
        + f"; plots {analysis}/{{eval,memorization,downstream,weights}}/*.png; "
        f"page {analysis / 'report.html'}"
    )


def transformers_checks(model, tok, ours, batch, logged: float) -> dict:
    """transformers' model against ours on a step's batch (loss, logits) and on greedy decoding
    of PROMPT; then a seeded sample."""
    import torch  # heavy, and imported only after main() routed the known warnings
    import torch.nn.functional as F

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
        torch.manual_seed(0)  # a sample shows more of what was learned than greedy's loop
        sampled = model.generate(
            prompt, max_new_tokens=24, do_sample=True, top_k=20, pad_token_id=0
        )
    new = gen[0, prompt.shape[1] :]
    return {
        "hf_loss_on_next_batch": loss,
        "logged_loss_next_step": logged,
        "max_abs_logit_diff": diff,
        "generation_identical": torch.equal(gen, mine),
        "prompt": PROMPT,
        "generated": tok.decode(new),
        "generated_tokens": tok.convert_ids_to_tokens(new.tolist()),
        "sampled_top_k20_seed0": tok.decode(sampled[0, prompt.shape[1] :]),
    }


def step_export(
    out: Path, run_dir: Path, tokens: Path, step: int, npz: Path, env: dict
) -> tuple[dict, str]:
    # heavy, and imported only after main() routed the known third-party warnings to the log
    import numpy as np
    import torch
    import transformers

    from pretrain.checkpoint import load_weights

    hf_root = out / "hf"
    run_command(
        ["export-hf", str(run_dir), "--step", str(step), "--out", str(hf_root),
         "--tokenizer", str(tokens / "tokenizer"), "--overwrite"],
        out / "logs" / "export.log",
        env,
    )  # fmt: skip
    hf_dir = hf_root / f"step{step}"
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = load_weights(run_dir / "series" / f"step{step}").eval()
    batch = torch.from_numpy(np.load(npz)["tokens"].astype(np.int64))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(r["loss"] for r in rows if r.get("step") == step + 1 and "loss" in r)
    result = {
        "exported_step": step,
        "hf_dir": str(hf_dir),
        "hf_class": type(model).__name__,
        **transformers_checks(model, tok, ours, batch, logged),
    }
    return result, (
        f"export: step {step} -> {hf_dir} ({type(model).__name__}); transformers' loss on "
        f"the batch of step {step + 1} {result['hf_loss_on_next_batch']:.5f} vs logged "
        f"{logged:.5f}; max |logit diff| {result['max_abs_logit_diff']:.1e}; greedy tokens "
        f"identical: {result['generation_identical']}; greedy {PROMPT!r} -> "
        f"{result['generated']!r} (tokens {' '.join(result['generated_tokens'])}); sampled "
        f"(top-k 20) -> {result['sampled_top_k20_seed0']!r}"
    )


def spike_lines(run_dir: Path) -> tuple[list[dict], list[str]]:
    """The run's spikes (RUN/spikes.jsonl) and one line for each: step, loss and grad norm before
    and at it, z-scores, and the document of its batch that explains most of the jump."""
    path = run_dir / "spikes.jsonl"
    spikes = [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []
    lines = []
    for s in spikes:
        d, (lo, med, hi) = s["documents"][0], s["sequence_loss_range"]
        n, above = s["n_sequences"], s["sequences_above_previous"]
        # most sequences above the last loss: the weights broke (the previous update); a few:
        # their documents
        whose = (
            f"the jump is the weights' (step {s['step'] - 1}'s update), not a few documents'"
            if med > s["previous_loss"]
            else "the jump is a few documents'"
        )
        why = (
            f"{above} of its {n} sequences above step {s['step'] - 1}'s "
            f"{s['previous_loss']:.2f} (per-sequence loss {lo:.2f}, median {med:.2f}, max "
            f"{hi:.2f}): {whose}"
        )
        lines.append(
            f"spike at step {s['step']}: loss {s['previous_loss']:.3f} -> {s['loss']:.3f} "
            f"(z {s['z_loss']:.1f}), grad norm {s['previous_grad_norm']:.2f} -> "
            f"{s['grad_norm']:.2f} (z {s['z_grad_norm']:.1f}) at lr {s['lr']:.2g}; {why}; top "
            f"document {d['source']} doc {d['doc']} ({Path(d['file']).name}#{d['index']}, "
            f"{d['tokens']} tokens, loss {d['loss']:.2f}); {s['action']} -> {path}, table "
            f"`pretrain analyze spikes --run {run_dir}`"
        )
    return spikes, lines or [f"no loss spike flagged ({path} is empty)"]


def timed(step: int, seconds: dict, name: str, fn, *args):
    """Run one demo step, print its line with the time it took, record the time."""
    start = time.time()
    *values, line = fn(*args)
    seconds[name] = round(time.time() - start, 1)
    log(f"{step}/{STEP_COUNT} {line} [{seconds[name]:.0f} s]")
    return values[0] if len(values) == 1 else values


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
    start, seconds = time.time(), {}
    tokens = timed(1, seconds, "data", step_data, out, env)
    run_dir = timed(2, seconds, "train", step_train, out, tokens, env)
    spikes, lines = spike_lines(run_dir)
    for line in lines:
        log(f"   {line}")
    series, step, npz = timed(3, seconds, "series_batch", step_series_batch, out, run_dir, env)
    timed(4, seconds, "analyze", step_analyses, out, run_dir, tokens, env)
    result = timed(5, seconds, "export", step_export, out, run_dir, tokens, step, npz, env)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in metrics if "loss" in r]
    result.update(
        first_loss=losses[0], final_loss=losses[-1], series_steps=series, steps=STEPS,
        step_seconds=seconds, seconds=round(time.time() - start, 1),
        spikes=[{k: s[k] for k in ("step", "loss", "z_loss", "grad_norm", "z_grad_norm")}
                | {"top_documents": s["documents"][:3]} for s in spikes],
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
