"""Real-text tokenized shards for the training tests, written with megatron-core's own builder.

Text: the bundled Debian man pages. Tokens: byte + 1 (so 1..256, inside every tiny model's
vocabulary), EOS = 0 at the end of each document, as `pretrain data` writes them (add_eos)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from parallel.env import free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data_pipeline" / "samples" / "manpages_en.jsonl.gz"
EOS = 0


def documents(n: int, start: int = 0, max_bytes: int = 3000) -> list[np.ndarray]:
    out = []
    with gzip.open(SAMPLES, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < start:
                continue
            if len(out) == n:
                break
            raw = json.loads(line)["text"].encode("utf-8")[:max_bytes]
            out.append(np.frombuffer(raw, dtype=np.uint8).astype(np.uint16) + 1)
    return out


def write_megatron(
    prefix: str, docs: list[np.ndarray], add_eos: bool = True, per_shard: int = 0
) -> list[str]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    per_shard = per_shard or len(docs)
    prefixes = []
    for k in range(0, len(docs), per_shard):
        name = f"{prefix}-{k // per_shard:04d}"
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        b = IndexedDatasetBuilder(name + ".bin", dtype=np.uint16)
        for d in docs[k : k + per_shard]:
            arr = np.append(d, EOS).astype(np.uint16) if add_eos else d
            b.add_document(arr, [len(arr)])
        b.finalize(name + ".idx")
        prefixes.append(name)
    return prefixes


def write_npy(path: str, docs: list[np.ndarray], dtype=np.uint16) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate([np.append(d, EOS) for d in docs]).astype(dtype)
    flat.tofile(path)  # OLMo's format: a raw memmap, no header
    return path


def tiny_overrides(run_dir: Path, data: list[str], steps: int = 6, **extra) -> list[str]:
    o = {
        "model": "llama3-tiny",
        "model.vocab_size": 260,
        "model.eos_token_id": EOS,
        "model.bos_token_id": EOS,
        "trainer.seq_len": 32,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 2,
        "trainer.max_steps": steps,
        "trainer.log_interval": 1,
        "schedule.warmup_steps": 2,
        "optim.lr": 3e-3,
        "checkpoint.interval": 0,
        "run_dir": str(run_dir),
        "data.paths": "[" + ",".join(data) + "]",
        "trainer.tensorboard": "false",
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def run_cli(args: list[str], nproc: int = 1, timeout: int = 240, env_extra: dict | None = None):
    """`pretrain ARGS` as one process or under torchrun with nproc ranks."""
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        **(env_extra or {}),
    }
    if nproc == 1:
        cmd = [sys.executable, "-m", "pretrain.cli", *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
    for attempt in range(3):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            f"--master-port={free_port()}",
            "-m",
            "pretrain.cli",
            *args,
        ]
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
        # the port was free when probed, then taken (by a test on another xdist worker) before
        # the rendezvous bound it: nothing ran, so a new port is a clean retry
        if res.returncode == 0 or "EADDRINUSE" not in res.stderr or attempt == 2:
            return res


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l]
