"""Shared by the parity tests and the worker processes they launch: real-text data, the
single-process reference run, and launching N ranks as a torchrun-like launcher would.

Data: the bundled Debian man pages (real English text nobody here wrote), byte-level encoded
(ids 0..255, within every tiny model's vocabulary), cut into consecutive windows of seq_len + 1.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model_zoo.layers import upcast
from model_zoo.moe import set_aux_loss_scale
from parallel.config import param_dtype
from parallel.env import free_port, local_rank_env
from pretrain.config import OptimizerConfig
from pretrain.evaluation import loss_on_windows
from pretrain.optim import build_optimizers as pretrain_optimizers

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data_pipeline" / "samples" / "manpages_en.jsonl.gz"
WORKER = "pretrain.parity.worker"  # run as a module (python -m) from the repository root

# The relative tolerance of every float64 parity claim (a layout, a resume, a reshard against one
# process). Such runs sum the same terms in another order (row-parallel matmuls, reduce-scatters,
# micro-batches), so they differ by rounding alone: float64's unit roundoff is 1.1e-16. AdamW
# amplifies the rounding of near-cancelling gradient elements (the update lr * g / (|g| + eps)
# keeps g's relative error); the worst amplification these runs showed in fp32 was ~200x
# (1.2e-5 from fp32's 6e-8: the old suite's seed lottery), ~2e-14 at float64's roundoff.
# 1e-10 leaves four decades over that for any CPU's summation paths and thread counts, and sits
# more than two decades below a single fp32 rounding (6e-8) anywhere in the path, which is what
# a dtype bug (an intermediate cast to fp32) or a wrong reduction shows.
FP64_TOL = 1e-10


def text_batches(steps: int, global_batch: int, seq_len: int, offset: int = 0) -> torch.Tensor:
    """[steps, global_batch, seq_len + 1] byte ids of real text (deterministic)."""
    need = steps * global_batch * (seq_len + 1) + offset
    buf = bytearray()
    with gzip.open(SAMPLES, "rt", encoding="utf-8") as f:
        for line in f:
            buf += json.loads(line)["text"].encode("utf-8") + b"\n"
            if len(buf) >= need:
                break
    ids = torch.tensor(list(buf[offset:need]), dtype=torch.long)
    return ids.view(steps, global_batch, seq_len + 1)


def held_out_batch(data: torch.Tensor) -> torch.Tensor:
    """[global_batch, seq_len + 1] windows of the text right after `data` (text_batches' output):
    what the forward-only (validation) path is checked on."""
    steps, global_batch, width = data.shape
    return text_batches(1, global_batch, width - 1, offset=data.numel())[0]


def packed_ids(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Treat each line of text as a document (a new one starts after every newline byte):
    document ids for the model's intra-document mask and position ids restarting per document."""
    starts = torch.zeros_like(inputs)
    starts[:, 1:] = (inputs[:, :-1] == ord("\n")).long()
    doc = starts.cumsum(1)
    idx = torch.arange(inputs.shape[1]).expand_as(inputs)
    first = torch.where(starts.bool() | (idx == 0), idx, torch.zeros_like(idx)).cummax(1).values
    return doc, idx - first


def build_optimizers(model_parts, lr: float) -> list[torch.optim.Optimizer]:
    """The optimizers `pretrain train` builds (pretrain.optim: one AdamW per model part, its one
    weight-decay rule by module type), for the reference model and for every layout's engine.
    Hyperparameters: weight decay 0.1 and torch's AdamW betas/eps, the parity runs' settings."""
    cfg = OptimizerConfig(lr=lr, weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8, fused="false")
    return pretrain_optimizers(list(model_parts), cfg, torch.device("cpu"))


def reference_run(
    model_cfg,
    steps: int,
    global_batch: int,
    seq_len: int,
    seed: int = 0,
    lr: float = 1e-3,
    clip: float = 1.0,
    snapshot_steps=(),
    packed: bool = False,
    micro_batch: int | None = None,
    evaluate: bool = False,
    precision: str = "fp64",
) -> dict:
    """The definition of right: one process, plain model, the whole global batch at once (or
    accumulated over `micro_batch`-sized pieces: the same math summed in another order).
    `precision`: the parameters' dtype, fp64 (the parity runs: `parallel.precision=fp64` on the
    layout's side) or fp32. `snapshot_steps`: also keep the parameters after these steps
    (params_at[step]); `evaluate`: also the final model's loss_on_windows (sum, tokens) on
    `held_out_batch` (eval)."""
    from model_zoo.model import build_model

    torch.manual_seed(seed)
    model = build_model(model_cfg, seed=seed).to(param_dtype(precision))
    (opt,) = build_optimizers([model], lr)
    data = text_batches(steps, global_batch, seq_len)
    micro = micro_batch or global_batch
    # MoE balancing losses: each micro-batch's weighted by its share of the batch's tokens, the
    # engine's definition (set_aux_loss_scale); it is a loss per micro-batch, so only a
    # reference cut into the layout's micro-batches can match a layout that uses them
    set_aux_loss_scale(model, micro / global_batch)
    losses, norms, snaps = [], [], {}
    for step in range(steps):
        loss_sum = 0.0
        for first in range(0, global_batch, micro):
            inputs = data[step, first : first + micro, :-1]
            labels = data[step, first : first + micro, 1:]
            if packed:
                doc, pos = packed_ids(inputs)
                logits = model(inputs, position_ids=pos, document_ids=doc)
            else:
                logits = model(inputs)
            # the mean over the global batch's tokens, however the batch is cut
            loss = F.cross_entropy(
                upcast(logits.flatten(0, 1)), labels.flatten(), reduction="sum"
            ) / (global_batch * seq_len)
            loss.backward()
            loss_sum += float(loss.detach())
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        losses.append(loss_sum)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step + 1 in snapshot_steps:
            snaps[step + 1] = {k: v.detach().clone() for k, v in model.named_parameters()}
    return {
        "eval": loss_on_windows(model, held_out_batch(data), global_batch) if evaluate else None,
        "losses": losses,
        "grad_norms": norms,
        "params_at": snaps,
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
    }


def launch(
    world_size: int,
    spec: dict,
    out_dir: Path,
    timeout: float = 400,
    worker: str = WORKER,
    threads: int | None = None,
) -> list[dict]:
    """Run `worker` (a module: pretrain.parity.worker by default) on `world_size` ranks with
    torchrun's environment variables and return one result per run of the spec (written by
    rank 0). Fails on any non-zero exit; as
    soon as one rank fails the others are killed, so a failure does not wait for a timeout.
    A rendezvous port taken by another program between our probe and rank 0's bind
    (EADDRINUSE: other test suites run beside this one) is retried with a new port. Each rank
    runs `threads` intra-op threads (by default this process's OMP_NUM_THREADS, else one: what
    torchrun does)."""
    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    for attempt in range(3):
        codes = _run_ranks(world_size, spec_path, out_dir, timeout, worker, threads)
        if all(c == 0 for c in codes):
            break
        logs = {r: (out_dir / f"rank{r}.log").read_text() for r in range(world_size)}
        if attempt < 2 and any("EADDRINUSE" in text for text in logs.values()):
            continue
        report = "\n".join(
            f"--- rank {r} (exit {c}) ---\n" + logs[r][-3000:]
            for r, c in enumerate(codes)
            if c != 0
        )
        raise AssertionError(f"worker exit codes {codes}\n{report}")
    return [
        torch.load(out_dir / f"run{i}.pt", weights_only=False) for i in range(len(spec["runs"]))
    ]


def _run_ranks(
    world_size: int, spec_path: Path, out_dir: Path, timeout: float, worker: str, threads: int
) -> list:
    port = free_port()
    procs, logs = [], []
    for rank in range(world_size):
        env = local_rank_env(rank, world_size, port)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        env["OMP_NUM_THREADS"] = str(threads)
        logs.append(open(out_dir / f"rank{rank}.log", "w"))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", worker, str(spec_path), str(out_dir)],
                env=env,
                cwd=ROOT,
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.time() + timeout
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return codes
            if any(c not in (None, 0) for c in codes) or time.time() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                for p in procs:
                    p.wait()
                return [p.returncode if time.time() <= deadline else "timeout" for p in procs]
            time.sleep(0.2)
    finally:
        for log in logs:
            log.close()


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def max_rel_param_diff(params: dict, ref: dict) -> float:
    """The largest ||p - ref|| / ||ref|| over the tensors, computed in float64."""
    worst = 0.0
    for k, v in ref.items():
        p, r = params[k].double(), v.double()
        worst = max(worst, float((p - r).norm() / max(float(r.norm()), 1e-300)))
    return worst
