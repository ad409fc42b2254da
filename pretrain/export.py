"""`pretrain import-hf` and `pretrain export-hf`: Hugging Face folders <-> checkpoints of ours."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from model_zoo.hf import export_hf, import_hf
from pretrain.checkpoint import load_weights, save_weights
from pretrain.config import RunConfig


def import_hf_to_checkpoint(hf_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a step-0 weights checkpoint (continued pretraining starts from it)."""
    cfg, state = import_hf(hf_dir)
    # Default run settings with the imported model; the sequence length must fit the model.
    run = RunConfig(model=cfg)
    run.trainer.seq_len = min(run.trainer.seq_len, cfg.max_seq_len)
    return save_weights(out_dir, state, run, step=0, kind="weights",
                        extra_meta={"imported_from": str(Path(hf_dir).resolve())},
                        overwrite=overwrite)


def export_checkpoint_to_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    tokenizer: Optional[str] = None,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    model = load_weights(ckpt_dir)
    return export_hf(model.cfg, model.state_dict(), out_dir, dtype=dtype, tokenizer=tokenizer,
                     overwrite=overwrite, max_shard_bytes=max_shard_bytes)
