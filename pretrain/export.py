"""`pretrain import-hf` and `pretrain export-hf`: Hugging Face folders <-> checkpoints of ours.

An exported folder carries the run's tokenizer (the one its token data names, or `--tokenizer`)
with its special tokens named consistently with config.json (pretrain/tokenizer.py), so
transformers' AutoTokenizer and lm-eval's `hf` model read it as they read a published model."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from model_zoo.hf import export_hf, import_hf
from pretrain.checkpoint import check_checkpoint, load_weights, read_index, save_weights
from pretrain.config import RunConfig
from pretrain.tokenizer import checkpoint_tokenizer, write_tokenizer_folder


def import_hf_to_checkpoint(
    hf_dir: str | Path, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Write a step-0 weights checkpoint (continued pretraining starts from it)."""
    cfg, state = import_hf(hf_dir)
    # Default run settings with the imported model; the sequence length must fit the model.
    run = RunConfig(model=cfg)
    run.trainer.seq_len = min(run.trainer.seq_len, cfg.max_seq_len)
    return save_weights(
        out_dir,
        state,
        run,
        step=0,
        kind="weights",
        extra_meta={"imported_from": str(Path(hf_dir).resolve())},
        overwrite=overwrite,
    )


def export_checkpoint_to_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    tokenizer: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 1024**3,
    verify: str = "size",
) -> Path:
    # a series (weights) or a full training checkpoint, checked against its manifest
    model = load_weights(ckpt_dir, verify=verify)
    out = export_hf(
        model.cfg,
        model.state_dict(),
        out_dir,
        dtype=dtype,
        overwrite=overwrite,
        max_shard_bytes=max_shard_bytes,
    )
    _write_tokenizer(ckpt_dir, out, model.cfg, tokenizer)
    return out


def _write_tokenizer(ckpt_dir, out: Path, cfg, tokenizer: str | None) -> None:
    """The given tokenizer, else the run's (from its data's metadata.json); nothing when the run
    read raw shards without metadata and none was given."""
    found = checkpoint_tokenizer(ckpt_dir)
    if tokenizer is None and found is None:
        return
    same = found is not None and (tokenizer is None or Path(tokenizer).resolve() == found.path)
    pad_id = found.pad_id if same else None  # the data's pad id belongs to its own tokenizer
    write_tokenizer_folder(tokenizer or found.path, out, cfg, pad_id)


def export_run_steps(
    run_dir: str | Path,
    out_root: str | Path,
    steps: list[int] | None = None,
    verify: str = "size",
    **kw,
):
    """Export steps of a run folder to OUT/stepN (Pythia's revision names). For each step the
    series (weights) checkpoint is used when there is one, else the full checkpoint. Loading goes
    through DCP, which reassembles shards written under any layout in this single process."""
    run_dir, out_root = Path(run_dir), Path(out_root)
    entries = read_index(run_dir)
    if not entries:
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint_index.jsonl: not a training run "
            "folder, or no checkpoint was saved"
        )
    by_step: dict[int, dict] = {}
    for e in entries:  # prefer weights (series) over full at the same step: the export dtype
        if e["step"] not in by_step or e["kind"] == "weights":
            by_step[e["step"]] = e
    wanted = sorted(by_step) if steps is None else steps
    for step in wanted:  # every step checked before the first is written
        if step not in by_step:
            raise FileNotFoundError(
                f"step {step} has no checkpoint in {run_dir}; saved steps: "
                f"{', '.join(map(str, sorted(by_step)))}"
            )
        check_checkpoint(run_dir / by_step[step]["path"], verify)
    # A bar with rate and ETA when there are several (--all); callers print with tqdm.write.
    bar = tqdm(wanted, desc="export-hf", unit="ckpt", file=sys.stderr, disable=len(wanted) < 2)
    for step in bar:
        bar.set_postfix_str(f"step {step}")
        out = export_checkpoint_to_hf(
            run_dir / by_step[step]["path"], out_root / f"step{step}", verify="size", **kw
        )
        yield step, out
