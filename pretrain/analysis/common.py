"""What every `pretrain analyze` command shares: the run folder, its checkpoints (ours or Hugging
Face folders, one per step), resumable per-step results, progress bars and PNG figures.

Results are one small JSON file per analysed step (OUT/steps/stepN.json, written atomically), so a
command that is interrupted, or a Slurm array task, leaves only finished steps behind and the next
invocation skips them; the table (CSV/JSONL) and the PNG are rebuilt from those files at the end.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from configcore import ConfigError
from model_zoo.hf import import_hf  # noqa: E402
from model_zoo.model import Transformer, build_model  # noqa: E402
from pretrain.checkpoint import CheckpointError, check_checkpoint, load_weights, read_index  # noqa: E402
from pretrain.config import RunConfig, load_yaml, run_config_from_dict  # noqa: E402
from pretrain.series import series_steps  # noqa: E402


def load_run(run_dir: str | Path) -> RunConfig:
    cfg = Path(run_dir) / "config.yaml"
    if not cfg.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    return run_config_from_dict(load_yaml(cfg))


def read_order_log(run_dir: str | Path) -> dict[int, dict]:
    """data_order.jsonl by step: the global sample range each optimizer step consumed."""
    path = Path(run_dir) / "data_order.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the run recorded no data order")
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in recs}


@dataclass
class Checkpoint:
    """One step of a series: a checkpoint of ours or a Hugging Face folder."""

    step: int
    tokens: int | None  # tokens seen; None when unknown (an HF folder without --tokens-per-step)
    path: Path
    kind: str  # weights | full | hf


def _run_checkpoints(run_dir: Path) -> list[Checkpoint]:
    by_step: dict[int, dict] = {}
    for e in read_index(run_dir):  # the series (weights) wins over a full checkpoint of a step
        if e["step"] not in by_step or e["kind"] == "weights":
            by_step[e["step"]] = e
    return [
        Checkpoint(s, e["tokens"], run_dir / e["path"], e["kind"])
        for s, e in sorted(by_step.items())
    ]


def _hf_checkpoints(root: Path, tokens_per_step: int | None) -> list[Checkpoint]:
    """Pythia's layout: ROOT/step0, ROOT/step1000, ... each a Hugging Face model folder."""
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step") and p.name[4:].isdigit():
            if (p / "config.json").exists():
                s = int(p.name[4:])
                out.append(Checkpoint(s, s * tokens_per_step if tokens_per_step else None, p, "hf"))
    return sorted(out, key=lambda c: c.step)


def find_checkpoints(
    run_or_root: str | Path,
    steps: str | None = None,
    verify: str = "size",
    tokens_per_step: int | None = None,
) -> list[Checkpoint]:
    """The checkpoints of a run folder (its index) or of a folder of HF `stepN` folders, narrowed
    to a series spec (`--steps log2:64+every:1000`), each checked before any work starts."""
    root = Path(run_or_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist")
    found = _run_checkpoints(root) if (root / "checkpoint_index.jsonl").exists() else []
    if not found:
        found = _hf_checkpoints(root, tokens_per_step)
    if not found:
        raise FileNotFoundError(
            f"{root} has no checkpoints: neither a run folder with checkpoint_index.jsonl nor a "
            "folder of Hugging Face model folders named stepN"
        )
    if steps:
        wanted = set(series_steps(steps, max(c.step for c in found)))
        missing = sorted(wanted - {c.step for c in found})
        found = [c for c in found if c.step in wanted]
        if not found:
            raise ConfigError(
                f"--steps {steps} selects none of the saved steps "
                f"({', '.join(str(c.step) for c in _run_or_hf(root, tokens_per_step))})"
            )
        if missing and len(missing) < len(wanted):
            print(f"note: steps without a checkpoint skipped: {missing[:8]}", file=sys.stderr)
    for c in found:
        if c.kind != "hf":
            check_checkpoint(c.path, verify)
    return found


def _run_or_hf(root: Path, tokens_per_step: int | None) -> list[Checkpoint]:
    return _run_checkpoints(root) or _hf_checkpoints(root, tokens_per_step)


def load_model(ckpt: Checkpoint, device: str = "cpu") -> Transformer:
    """Our single-device model of one step, in eval mode (HF folders via our importer, so every
    checkpoint runs the same model code)."""
    if ckpt.kind != "hf":
        return load_weights(ckpt.path, device).eval()
    try:
        cfg, state = import_hf(ckpt.path)
    except (OSError, ValueError, RuntimeError) as err:  # safetensors: truncated / corrupted file
        raise CheckpointError(
            f"{ckpt.path}: the Hugging Face folder cannot be read ({str(err).splitlines()[0]}); "
            "download it again"
        ) from None
    model = build_model(cfg, device="meta")
    model.to_empty(device=device)
    model.init_buffers()  # RoPE tables and MoE routing state: not in the HF files
    missing, _ = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if cfg.tie_embeddings and k.startswith("output.")}
    if set(missing) - tied:  # a tied output weight shares the embedding's storage
        raise CheckpointError(
            f"{ckpt.path}: weights missing from the folder: {sorted(missing)[:4]}"
        )
    return model.eval()


class StepResults:
    """OUT/steps/stepN.json per finished step; `rows()` is the table in step order."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, step: int) -> Path:
        return self.dir / f"step{step}.json"

    def done(self, step: int) -> bool:
        return self._path(step).exists()

    def write(self, step: int, record: dict[str, Any]) -> None:
        tmp = self._path(step).with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"step": step, **record}))
        os.replace(tmp, self._path(step))  # a reader never sees half a record

    def rows(self) -> list[dict[str, Any]]:
        recs = [json.loads(p.read_text()) for p in self.dir.glob("step*.json")]
        return sorted(recs, key=lambda r: r["step"])


def write_table(rows: list[dict[str, Any]], csv_path: Path, jsonl_path: Path | None = None) -> None:
    """CSV of the scalar columns (nested values stay in the JSONL), and the JSONL of everything."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols += [k for k, v in r.items() if k not in cols and not isinstance(v, (list, dict))]
    # written aside and renamed: Slurm array tasks rewrite the same table concurrently
    tmp = csv_path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    if jsonl_path is not None:
        tmp = jsonl_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, jsonl_path)


def progress(items: Iterable, total: int, desc: str, unit: str = "ckpt") -> Iterator:
    """A tqdm bar (count, rate, ETA) on stderr; silent on ranks other than 0."""
    rank = int(os.environ.get("RANK", "0"))
    return iter(tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, disable=rank != 0))


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)  # concurrent writers (array tasks) never leave half a PNG
    return path


def x_of(ckpt_or_row, x: str = "tokens") -> float:
    """Tokens seen when known (log axes need > 0, so step 0 sits at 1 token), else the step."""
    get = ckpt_or_row.get if isinstance(ckpt_or_row, dict) else ckpt_or_row.__getattribute__
    value = get("tokens") if x == "tokens" else None
    value = get("step") if value is None else value
    return max(float(value), 1.0)


def resolve_device(name: str) -> str:
    """auto: the GPU of this process (LOCAL_RANK under torchrun) when there is one, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no GPU visible here; use --device cpu")
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    if name != "cpu":
        raise ConfigError(f"--device {name!r} is not auto, cpu or cuda")
    return name


def out_dir_for(run_or_root: str | Path, command: str, out: str | None) -> Path:
    return Path(out) if out else Path(run_or_root) / "analysis" / command
