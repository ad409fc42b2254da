"""The parallel layout config. Lives in parallel/ (not pretrain/) so the engine can validate a
layout without importing the training code; pretrain/config.py composes it into the run config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParallelConfig:
    """Sizes of the device-mesh axes. -1 means "whatever is left of the world size"."""

    tp: int = 1
    pp: int = 1
    dp_shard: int = -1
    dp_replicate: int = 1
    ep: int = 1
