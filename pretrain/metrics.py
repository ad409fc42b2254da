"""Training metrics: console, RUN_DIR/metrics.jsonl, TensorBoard, and optionally Weights & Biases.

MFU = achieved model FLOP/s per device / the device's dense peak. The FLOPs per token come from
`model_zoo.counting.training_flops_per_token` (6 x (non-embedding + output) parameters + attention
counted in full, not halved for causality); the peak from the table below or trainer.peak_flops.
"""

from __future__ import annotations

import importlib.util
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch

from configcore import ConfigError
from model_zoo.counting import count_parameters, training_flops_per_token
from pretrain.evaluation import eval_record

# Dense bf16 peak FLOP/s per device (vendor datasheets, without sparsity).
PEAK_FLOPS_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 70e12,
    "L40S": 362e12,
    "L4": 121e12,
    "MI300X": 1307e12,
}


def device_peak_flops(device: torch.device, override: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: the override when given, else the table by device name, else
    None (CPU, unknown GPU: MFU is then not reported rather than made up)."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS_BF16, key=len, reverse=True):  # most specific name first
        if key.lower() in name.lower():
            return PEAK_FLOPS_BF16[key]
    return None


def flops_accounting(cfg, seq_len: int) -> dict:
    """The numerator of MFU, split into its terms (training FLOPs per token)."""
    count = count_parameters(cfg)
    total = training_flops_per_token(cfg, seq_len, count)
    dense = 6 * (count.active_non_embedding + cfg.padded_vocab_size * cfg.d_model)
    return {
        "active_parameters": count.active,
        "total_parameters": count.total,
        "matmul_flops_per_token": dense,
        "attention_flops_per_token": total - dense,
        "flops_per_token": total,
        "attention_counting": "full (not halved for causality)",
    }


def memory_stats(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "mem_alloc_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9,
        }
    # Peak resident set size of this process (Linux reports KiB).
    return {"mem_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


class MetricsLogger:
    """Writes on rank 0 only; every rank calls `log` so the timing windows stay aligned.

    Training records (every trainer.log_interval steps) carry loss, grad_norm, lr, throughput and
    memory; validation results join the record of their step as `eval/<source>/loss`, `.../ppl`
    and `.../tokens`, or form a record of their own (step, tokens and the eval keys, no "loss")
    at a step that is not logged (e.g. step 0). TensorBoard gets `train/<key>` and the eval keys
    as they are; W&B (metrics.wandb=true) the same keys."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        tensorboard: bool,
        world_size: int,
        flops_per_token: int,
        peak_flops: float | None,
        device: torch.device,
        wandb_cfg=None,
    ):
        self.enabled, self.world, self.device = enabled, world_size, device
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None
        self.tb = open_tensorboard(run_dir) if enabled and tensorboard else None
        self.wandb = open_wandb(run_dir, wandb_cfg) if enabled and wandb_cfg else None
        self._t0, self._tokens = time.perf_counter(), 0

    def reset_window(self) -> None:
        self._t0, self._tokens = time.perf_counter(), 0

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (e.g. spent evaluating) out of the current tokens/s window."""
        self._t0 += seconds

    def count(self, tokens: int) -> None:
        self._tokens += tokens

    def log(self, step: int, values: dict, extra: dict | None = None, evals=None) -> dict:
        dt = max(time.perf_counter() - self._t0, 1e-9)
        tps = self._tokens / dt
        rec = {
            "step": step,
            **values,
            "tokens_per_s": tps,
            "tokens_per_s_per_device": tps / self.world,
        }
        rec["mfu"] = (tps / self.world * self.flops_per_token / self.peak) if self.peak else None
        rec.update(memory_stats(self.device))
        if extra:
            rec.update(extra)
        if evals:
            rec.update(eval_record(evals))
        self.reset_window()
        if not self.enabled:
            return rec
        self._write(step, rec)
        mfu = f" mfu {rec['mfu'] * 100:.1f}%" if rec["mfu"] is not None else ""
        mem = rec.get("mem_alloc_gb", rec.get("mem_rss_gb", 0.0))
        print(
            f"step {step:>6} | loss {rec['loss']:.4f} | lr {rec['lr']:.3e} | grad_norm "
            f"{rec['grad_norm']:.3f} | {tps:,.0f} tok/s ({tps / self.world:,.0f}/device){mfu} | "
            f"mem {mem:.2f} GB",
            file=sys.stdout,
            flush=True,
        )
        if evals:
            print(eval_line(step, evals), file=sys.stdout, flush=True)
        return rec

    def log_eval(self, step: int, tokens: int, evals) -> dict:
        """A validation record of its own (a step without a training record)."""
        rec = {"step": step, "tokens": tokens, **eval_record(evals)}
        if self.enabled:
            self._write(step, rec)
            print(eval_line(step, evals), file=sys.stdout, flush=True)
        return rec

    def log_downstream(self, step: int, tokens: int, rows: list[dict]) -> dict:
        """A record of the in-loop lm-eval results of a step (pretrain/downstream_eval.py):
        `downstream/<task>/<metric>` and `downstream/<task>/<metric>/stderr`."""
        rec: dict = {"step": step, "tokens": tokens}
        for r in rows:
            rec[f"downstream/{r['task']}/{r['metric']}"] = r["value"]
            if r["stderr"] is not None:
                rec[f"downstream/{r['task']}/{r['metric']}/stderr"] = r["stderr"]
        if self.enabled:
            self._write(step, rec)
            print(downstream_line(step, rows), file=sys.stdout, flush=True)
        return rec

    def _write(self, step: int, rec: dict) -> None:
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        scalars = {
            (k if k.startswith(("eval/", "downstream/")) else f"train/{k}"): v
            for k, v in rec.items()
            if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def eval_line(step: int, evals) -> str:
    parts = [
        f"{n} loss {r.loss:.4f} ppl {r.ppl:.2f} ({r.tokens:,} tokens)" for n, r in evals.items()
    ]
    return f"eval {step:>6} | " + " | ".join(parts)


def downstream_line(step: int, rows: list[dict]) -> str:
    """The console line of a step's lm-eval results: each task's headline metrics."""
    parts = []
    for r in rows:
        if r["metric"] in ("acc", "acc_norm", "perplexity", "word_perplexity", "exact_match"):
            err = r["stderr"]
            shown = f" +- {err:.2g}" if err is not None and math.isfinite(err) else ""
            parts.append(f"{r['task']} {r['metric']} {r['value']:.4g}{shown}")
    return f"downstream {step:>6} | " + " | ".join(parts)


def open_tensorboard(run_dir: Path):
    # Imported here: tensorboard takes seconds to import, paid only by rank 0 of a run that
    # writes it (trainer.tensorboard=true), not by every process that imports this module.
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


def open_wandb(run_dir: Path, cfg):
    """A W&B run for metrics.wandb=true: project and name from the config (name defaults to the
    run folder's), files under RUN_DIR/wandb; offline mode needs no network (`wandb sync` later)."""
    if not wandb_available():
        raise ConfigError("metrics.wandb=true needs the wandb package: pip install wandb")
    import wandb  # optional dependency, imported only when asked for

    return wandb.init(
        project=cfg.wandb_project,
        name=cfg.wandb_run_name or Path(run_dir).resolve().name,
        dir=str(run_dir),
        mode=cfg.wandb_mode,
        reinit=True,
    )
