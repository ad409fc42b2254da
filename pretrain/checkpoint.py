"""Checkpoint folders of ours, written with torch.distributed.checkpoint (DCP).

A checkpoint folder holds
    model/        DCP shards of the model state dict (parameter names of the single-device model)
    config.yaml   the resolved run config (the model config is what rebuilding needs)
    meta.json     step, kind ("weights" or "full"), dtype, and where it came from

DCP is used even for a single process because it is what the parallel engine writes: a checkpoint
saved under any layout (TP x PP x FSDP) has the same parameter names and is resharded on load, so
one reader serves every checkpoint. Without a process group DCP runs in its no-dist mode.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed.checkpoint as dcp

from model_zoo.config import ModelConfig
from model_zoo.model import Transformer, build_model
from pretrain.config import RunConfig, load_yaml, model_config_from_dict, to_yaml

MODEL_SUBDIR = "model"


@contextlib.contextmanager
def _no_dist_ok():
    # DCP warns that it runs without a process group; that is exactly the single-process case.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is .*uninitialized.*")
        yield


def save_weights(
    ckpt_dir: str | Path,
    model_state: dict[str, torch.Tensor],
    run: RunConfig,
    *,
    step: int = 0,
    kind: str = "weights",
    extra_meta: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{ckpt_dir} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # Tied weights appear under two names sharing storage; DCP stores each name, which keeps the
    # reader simple (load_state_dict re-ties them).
    state = {k: v.detach() for k, v in model_state.items()}
    with _no_dist_ok():
        dcp.save(state, checkpoint_id=str(ckpt_dir / MODEL_SUBDIR))
    (ckpt_dir / "config.yaml").write_text(to_yaml(run))
    meta = {"step": step, "kind": kind, **(extra_meta or {})}
    (ckpt_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return ckpt_dir


def read_checkpoint_config(ckpt_dir: str | Path) -> ModelConfig:
    ckpt_dir = Path(ckpt_dir)
    config_path = ckpt_dir / "config.yaml"
    if not (ckpt_dir / MODEL_SUBDIR / ".metadata").exists() or not config_path.exists():
        raise FileNotFoundError(
            f"{ckpt_dir} is not a checkpoint of ours (expected {MODEL_SUBDIR}/.metadata and "
            "config.yaml); for a Hugging Face folder use `pretrain import-hf` first"
        )
    return model_config_from_dict(load_yaml(config_path)["model"])


def load_weights(ckpt_dir: str | Path, device: str = "cpu") -> Transformer:
    """Rebuild the single-device model from a checkpoint written under any parallel layout."""
    ckpt_dir = Path(ckpt_dir)
    cfg = read_checkpoint_config(ckpt_dir)
    model = build_model(cfg, device="meta")
    model.to_empty(device=device)
    model.reset_rope_tables()
    state = model.state_dict()
    with _no_dist_ok():
        dcp.load(state, checkpoint_id=str(ckpt_dir / MODEL_SUBDIR))
    model.load_state_dict(state)
    return model
