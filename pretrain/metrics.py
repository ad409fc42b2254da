"""Training metrics: console, RUN_DIR/metrics.jsonl, and TensorBoard when it is installed.

MFU = achieved model FLOP/s per device / the device's dense peak. The FLOPs per token come from
`model_zoo.counting.training_flops_per_token` (6 x (non-embedding + output) parameters + attention
counted in full, not halved for causality); the peak from the table below or trainer.peak_flops.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import torch

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


def memory_stats(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "mem_alloc_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9,
        }
    # Peak resident set size of this process (Linux reports KiB).
    return {"mem_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def expert_load(model_parts) -> dict | None:
    """Per MoE layer of this rank's stages, the fraction of the step's routed tokens each expert
    received (model_zoo.moe counts them, the engine sums them over data-parallel ranks); None for
    a dense model. Must be read before the bias update, which resets the counts."""
    from model_zoo.moe import expert_load as layer_loads

    loads = {}
    for part in model_parts:
        loads.update({name: frac.tolist() for name, frac in layer_loads(part).items()})
    return loads or None


class MetricsLogger:
    """Writes on rank 0 only; every rank calls `log` so the timing windows stay aligned."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        tensorboard: bool,
        world_size: int,
        flops_per_token: int,
        peak_flops: float | None,
        device: torch.device,
    ):
        self.enabled, self.world, self.device = enabled, world_size, device
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # optional: the package is not a dependency
                self.tb = None
        self._t0, self._tokens = time.perf_counter(), 0

    def reset_window(self) -> None:
        self._t0, self._tokens = time.perf_counter(), 0

    def count(self, tokens: int) -> None:
        self._tokens += tokens

    def log(self, step: int, values: dict, extra: dict | None = None) -> dict:
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
        self.reset_window()
        if not self.enabled:
            return rec
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if (
                    isinstance(v, (int, float))
                    and k != "step"
                    and v is not None
                    and math.isfinite(v)
                ):
                    self.tb.add_scalar(f"train/{k}", v, step)
        mfu = f" mfu {rec['mfu'] * 100:.1f}%" if rec["mfu"] is not None else ""
        mem = rec.get("mem_alloc_gb", rec.get("mem_rss_gb", 0.0))
        print(
            f"step {step:>6} | loss {rec['loss']:.4f} | lr {rec['lr']:.3e} | grad_norm "
            f"{rec['grad_norm']:.3f} | {tps:,.0f} tok/s ({tps / self.world:,.0f}/device){mfu} | "
            f"mem {mem:.2f} GB",
            file=sys.stdout,
            flush=True,
        )
        return rec

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
