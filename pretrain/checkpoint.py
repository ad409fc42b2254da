"""Checkpoint folders of ours, written with torch.distributed.checkpoint (DCP).

A checkpoint folder holds
    model/        DCP shards of the model state dict (parameter names of the single-device model)
    config.yaml   the resolved run config (the model config is what rebuilding needs)
    meta.json     step, kind ("weights" or "full"), dtype, and where it came from
    manifest.json every file's size and sha256: every load checks it (check_checkpoint)

DCP is used even for a single process because it is what the parallel engine writes: a checkpoint
saved under any layout (TP x PP x FSDP) has the same parameter names and is resharded on load, so
one reader serves every checkpoint. Without a process group DCP runs in its no-dist mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from configcore import ConfigError
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
    extra_meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{ckpt_dir} exists and is not empty; pass --overwrite to replace it"
            )
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
    write_manifest(ckpt_dir)  # every load checks the files against it (check_checkpoint)
    return ckpt_dir


class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded as it is on disk; the message names the file and the
    fix. A ConfigError, so every command reports it in one line and exits with status 2."""

    label = "checkpoint error"


_DAMAGED_FIX = (
    "copy the checkpoint again from where it was written, or load another step "
    "(`pretrain analyze series --run RUN_DIR` lists them)"
)


def check_checkpoint(ckpt_dir: str | Path, verify: str = "size") -> Path:
    """Raise CheckpointError unless `ckpt_dir` is one of our checkpoints and every file matches
    its manifest: sizes always, sha256 too with verify="checksum". Returns the folder."""
    ckpt_dir = Path(ckpt_dir)
    if verify not in ("size", "checksum"):
        raise ConfigError(f"verify={verify!r} is not size or checksum")
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir} does not exist (or is not a folder)")
    if not (ckpt_dir / "config.yaml").exists() or not (
        (ckpt_dir / MODEL_SUBDIR / ".metadata").exists() or (ckpt_dir / ".metadata").exists()
    ):
        raise CheckpointError(
            f"{ckpt_dir} is not a checkpoint of ours (expected config.yaml and DCP .metadata); "
            "for a Hugging Face folder use `pretrain import-hf` first"
        )
    problem = verify_checkpoint(ckpt_dir, verify)
    if problem is not None:
        raise CheckpointError(f"checkpoint {ckpt_dir}: {problem}; {_DAMAGED_FIX}")
    return ckpt_dir


def read_checkpoint_config(ckpt_dir: str | Path) -> ModelConfig:
    """The model config a checkpoint was saved with (its config.yaml)."""
    config_path = Path(ckpt_dir) / "config.yaml"
    if not config_path.exists():
        raise CheckpointError(
            f"{ckpt_dir} is not a checkpoint of ours (no config.yaml); for a Hugging Face folder "
            "use `pretrain import-hf` first"
        )
    return model_config_from_dict(load_yaml(config_path)["model"])


def stored_param_dtype(ckpt_dir: str | Path) -> torch.dtype:
    """float64 for a checkpoint of a float64 run (parallel.precision=fp64, or a float64 series),
    so its single-device model computes as the run did; float32 otherwise (bf16/fp16 series are
    widened, as before)."""
    meta_path, config_path = Path(ckpt_dir) / "meta.json", Path(ckpt_dir) / "config.yaml"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except ValueError:
        # a damaged meta.json is check_checkpoint's to refuse, in one line, not this helper's
        meta = {}
    if meta.get("dtype") == "float64":
        return torch.float64
    if meta.get("kind") == "full" and config_path.exists():
        run = load_yaml(config_path)
        if (run.get("parallel") or {}).get("precision") == "fp64":
            return torch.float64
    return torch.float32


def load_model_state(
    ckpt_dir: str | Path, state: dict[str, torch.Tensor], process_group=None
) -> dict[str, torch.Tensor]:
    """Fill `state` (plain or DTensor model parameters, by FQN) from a series/imported checkpoint
    (DCP under model/) or a full training checkpoint (DCP "model.*" keys; the optimizer state is
    not read). DCP reshards from whatever layout wrote it. Call check_checkpoint first."""
    ckpt_dir = Path(ckpt_dir)
    with _no_dist_ok():
        if (ckpt_dir / MODEL_SUBDIR / ".metadata").exists():
            dcp.load(state, checkpoint_id=str(ckpt_dir / MODEL_SUBDIR), process_group=process_group)
        else:
            dcp.load({"model": state}, checkpoint_id=str(ckpt_dir), process_group=process_group)
    return state


def load_weights(ckpt_dir: str | Path, device: str = "cpu", verify: str = "size") -> Transformer:
    """The single-device model of any checkpoint of ours (series, imported, or full of any
    layout), checked against its manifest first."""
    ckpt_dir = check_checkpoint(ckpt_dir, verify)
    cfg = read_checkpoint_config(ckpt_dir)
    model = build_model(cfg, device="meta").to(stored_param_dtype(ckpt_dir))
    model.to_empty(device=device)
    model.reset_rope_tables()
    model.load_state_dict(load_model_state(ckpt_dir, model.state_dict()))
    return model


def load_init_weights(engine, init_from: str | Path, verify: str = "size") -> None:
    """`checkpoint.init_from`: the engine's (sharded) parameters from a weights checkpoint;
    the trainer calls this. The model config was matched against DIR's when the config was
    composed (pretrain/config.py)."""
    ckpt_dir = check_checkpoint(init_from, verify)
    state = load_model_state(ckpt_dir, engine.model_state_dict())
    engine.load_model_state_dict(state)


# =================================================================================================
# Training checkpoints: full (resumable) and weights-only series, atomic, with manifest and index
# =================================================================================================
#
# RUN_DIR/
#   checkpoints/step_0001000/   full: model/ (DCP: "model.*" and "optim.*" keys), rng/rank_R.pt,
#                               config.yaml, meta.json (step, tokens, data position, schedule),
#                               manifest.json (every file's size and sha256)
#   series/step1000/            weights: model/ (DCP, plain FQNs, series dtype), config.yaml,
#                               meta.json, manifest.json; readable by load_weights / export-hf
#   checkpoint_index.jsonl      one line per checkpoint on disk: step, tokens, kind, path, bytes,
#                               checksum (sha256 of its manifest)
#
# A checkpoint is written under NAME.tmp and renamed to NAME only after every rank finished and
# the manifest was written, so a crash leaves either a complete checkpoint or a .tmp folder that
# resume ignores. The manifest lets resume detect a truncated or corrupted file as well.


MANIFEST = "manifest.json"
INDEX = "checkpoint_index.jsonl"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def write_manifest(ckpt_dir: Path, known: dict | None = None) -> dict:
    """Write manifest.json: every file's size and sha256. `known` holds entries hashed already
    (by the rank that wrote the file), so rank 0 only hashes what nobody else did."""
    files = {}
    known = known or {}
    for p in sorted(ckpt_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = str(p.relative_to(ckpt_dir))
            entry = known.get(rel)
            if entry is None or entry["bytes"] != p.stat().st_size:
                entry = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            files[rel] = entry
    manifest = {"files": files, "bytes": sum(f["bytes"] for f in files.values())}
    text = json.dumps(manifest, indent=1)
    _write_durable(ckpt_dir / MANIFEST, text)
    manifest["checksum"] = hashlib.sha256(text.encode()).hexdigest()
    return manifest


def _write_durable(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def verify_checkpoint(ckpt_dir: Path, mode: str = "checksum") -> str | None:
    """None when complete and intact, else what is wrong (missing manifest, file, size, hash)."""
    mpath = ckpt_dir / MANIFEST
    if not mpath.exists():
        return "no manifest.json (the save did not finish)"
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError:
        return "manifest.json is not valid JSON"
    for rel, info in manifest["files"].items():
        p = ckpt_dir / rel
        if not p.exists():
            return f"{rel} is missing"
        if p.stat().st_size != info["bytes"]:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {info['bytes']}"
        if mode == "checksum" and sha256_file(p) != info["sha256"]:
            return f"{rel} does not match its sha256 in the manifest (corrupted)"
    return None


def full_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def series_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "series" / f"step{step}"


def list_full_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    out = []
    for p in root.glob("step_*") if root.exists() else []:
        if p.is_dir() and not p.name.endswith(".tmp") and p.name[5:].isdigit():
            out.append((int(p.name[5:]), p))
    return sorted(out)


def find_latest_complete(run_dir: Path, verify: str = "checksum", report=print) -> Path | None:
    """The newest full checkpoint that verifies; broken ones are reported and skipped."""
    root = Path(run_dir) / "checkpoints"
    for tmp in sorted(root.glob("*.tmp")) if root.exists() else []:
        report(f"resume: ignoring {tmp} (an interrupted save)")
    for step, path in reversed(list_full_checkpoints(run_dir)):
        problem = verify_checkpoint(path, verify)
        if problem is None:
            return path
        report(f"resume: skipping checkpoint {path} (step {step}): {problem}")
    return None


def read_index(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / INDEX
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def drop_checkpoints_after(run_dir: Path, step: int) -> list[str]:
    """Delete the full and series checkpoints of steps after `step` (a spike rollback abandons
    that trajectory: resume=auto and the analyses must not find them); returns their paths.
    Rank 0 only, with no save in flight."""
    run_dir = Path(run_dir)
    entries, dropped = read_index(run_dir), []
    for e in entries:
        if e["step"] > step:
            shutil.rmtree(run_dir / e["path"], ignore_errors=True)
            dropped.append(e["path"])
    for s, path in list_full_checkpoints(run_dir):  # also any not (yet) in the index
        if s > step and path.exists():
            shutil.rmtree(path, ignore_errors=True)
    _write_index(run_dir, [e for e in entries if e["step"] <= step])
    return dropped


def _write_index(run_dir: Path, entries: list[dict]) -> None:
    entries = sorted(entries, key=lambda e: (e["step"], e["kind"]))
    tmp = Path(run_dir) / (INDEX + ".tmp")
    _write_durable(tmp, "".join(json.dumps(e) + "\n" for e in entries))
    os.replace(tmp, Path(run_dir) / INDEX)


def flat_optim_state(model_parts, optimizers) -> dict:
    """Optimizer state keyed by parameter FQN, merged over model parts (layout-independent)."""
    opts = StateDictOptions(flatten_optimizer_state_dict=True)
    state: dict = {}
    for part, opt in zip(model_parts, optimizers):
        state.update(get_optimizer_state_dict(part, opt, options=opts))
    return state


def load_flat_optim_state(model_parts, optimizers, state: dict) -> None:
    opts = StateDictOptions(flatten_optimizer_state_dict=True)
    for part, opt in zip(model_parts, optimizers):
        set_optimizer_state_dict(part, opt, optim_state_dict=state, options=opts)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Saves and loads the checkpoints of one run on every rank; rank 0 does the file work.

    `pg` is a gloo group reserved for checkpoint I/O so that an async save's collectives (in DCP's
    background thread) never interleave with training collectives or with our own barriers, which
    use `ctrl_pg`."""

    def __init__(
        self, run_dir: Path, run: RunConfig, rank: int = 0, world_size: int = 1, log=print
    ):
        self.run_dir, self.run, self.rank, self.world = Path(run_dir), run, rank, world_size
        self.log = log
        self.dist = dist.is_available() and dist.is_initialized() and world_size > 1
        self.pg = dist.new_group(backend="gloo") if self.dist else None
        self.ctrl_pg = dist.new_group(backend="gloo") if self.dist else None
        self.pending: tuple[Future, Path, int, dict] | None = None
        self.stall_s = 0.0  # training time spent blocked in saves (async: staging only)

    # ---- helpers -----------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.dist:
            dist.barrier(group=self.ctrl_pg)

    def _all_true(self, flag: bool) -> bool:
        if not self.dist:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.ctrl_pg)
        return bool(t.item())

    def _prepare(self, final: Path, rng_dir: bool = False) -> Path:
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            if final.exists():  # re-saving a step (e.g. after a resume from an older one)
                shutil.rmtree(final)
            (tmp / "rng" if rng_dir else tmp).mkdir(parents=True)
        self._barrier()
        return tmp

    def _hash_own(self, tmp: Path) -> dict:
        """sha256 of the files this rank wrote (its DCP shards `__R_*.distcp`, its RNG state;
        rank 0 also the DCP .metadata), so hashing a checkpoint is spread over all ranks instead
        of rank 0 reading every byte; for async saves it runs in the background thread."""
        out = {}
        pats = [f"**/__{self.rank}_*.distcp", f"rng/rank_{self.rank}.pt"]
        if self.rank == 0:
            pats.append("**/.metadata")
        for pat in pats:
            for p in tmp.glob(pat):
                out[str(p.relative_to(tmp))] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        return out

    def _finalize(
        self, tmp: Path, final: Path, step: int, kind: str, meta: dict, own: dict | None = None
    ) -> None:
        """Every rank has written its shards: rank 0 writes metadata, manifest, renames, indexes."""
        own = self._hash_own(tmp) if own is None else own
        if self.dist:
            parts: list = [None] * self.world
            dist.all_gather_object(parts, own, group=self.ctrl_pg)
            own = {k: v for part in parts for k, v in part.items()}
        if self.rank == 0:
            (tmp / "config.yaml").write_text(to_yaml(self.run))
            _write_durable(tmp / "meta.json", json.dumps(meta, indent=2))
            manifest = write_manifest(tmp, known=own)
            os.replace(tmp, final)
            entries = [
                e for e in read_index(self.run_dir) if not (e["step"] == step and e["kind"] == kind)
            ]
            entries.append(
                {
                    "step": step,
                    "tokens": meta.get("tokens", 0),
                    "kind": kind,
                    "path": str(final.relative_to(self.run_dir)),
                    "bytes": manifest["bytes"],
                    "checksum": manifest["checksum"],
                }
            )
            if kind == "full":
                entries = self._retain(entries)
            _write_index(self.run_dir, entries)
            self.log(
                f"checkpoint: {kind} step {step} -> {final} ({manifest['bytes'] / 1e6:.1f} MB)"
            )
        self._barrier()

    def _retain(self, entries: list[dict]) -> list[dict]:
        c = self.run.checkpoint
        full = sorted(e["step"] for e in entries if e["kind"] == "full")
        keep = set(full[-c.keep_last :]) if c.keep_last > 0 else set(full)
        if c.keep_every > 0:
            keep |= {s for s in full if s % c.keep_every == 0}
        out = []
        for e in entries:
            if e["kind"] == "full" and e["step"] not in keep:
                shutil.rmtree(self.run_dir / e["path"], ignore_errors=True)
                self.log(
                    f"checkpoint: removed {e['path']} (retention: keep_last={c.keep_last}, "
                    f"keep_every={c.keep_every})"
                )
                continue
            out.append(e)
        return out

    # ---- full checkpoints ----------------------------------------------------------------------
    def save_full(
        self, step: int, engine, optimizers, meta: dict, async_save: bool = False
    ) -> None:
        self.wait()  # one save in flight at a time: the next one would race the same files
        t0 = time.perf_counter()
        final = full_dir(self.run_dir, step)
        tmp = self._prepare(final, rng_dir=True)
        state = {
            "model": engine.model_state_dict(),
            "optim": flat_optim_state(engine.model_parts, optimizers),
        }
        torch.save(rng_state(), tmp / "rng" / f"rank_{self.rank}.pt")
        meta = {"step": step, "kind": "full", "world_size": self.world, **meta}
        with _no_dist_ok():
            if async_save:
                write = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self.pg)
                # hash this rank's files in the background too, once they are written
                fut = self._executor().submit(lambda: (write.result(), self._hash_own(tmp))[1])
                self.pending = (fut, tmp, step, meta)
            else:
                dcp.save(state, checkpoint_id=str(tmp), process_group=self.pg)
        self.stall_s += time.perf_counter() - t0
        if not async_save:
            self._finalize(tmp, final, step, "full", meta)

    def _executor(self):
        if getattr(self, "_pool", None) is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-hash")
        return self._pool

    def poll(self) -> None:
        """Finish an async save once every rank's background write is done (non-blocking)."""
        if self.pending is not None and self._all_true(self.pending[0].done()):
            self._complete_pending()

    def wait(self) -> None:
        if self.pending is not None:
            self._complete_pending()

    def _complete_pending(self) -> None:
        fut, tmp, step, meta = self.pending
        self.pending = None
        own = fut.result()  # re-raises a failed background write here, on the training thread
        self._finalize(tmp, full_dir(self.run_dir, step), step, "full", meta, own=own)

    def load_full(self, path: Path, engine, optimizers) -> dict:
        """Load model and optimizer (resharded to this layout by DCP) and return meta.json."""
        state = {
            "model": engine.model_state_dict(),
            "optim": flat_optim_state(engine.model_parts, optimizers),
        }
        with _no_dist_ok():
            dcp.load(state, checkpoint_id=str(path), process_group=self.pg)
        engine.load_model_state_dict(state["model"])
        load_flat_optim_state(engine.model_parts, optimizers, state["optim"])
        meta = json.loads((Path(path) / "meta.json").read_text())
        rng_file = Path(path) / "rng" / f"rank_{self.rank}.pt"
        # RNG streams are per rank: they only carry over to the same world size. Nothing in the
        # dense model draws random numbers during training today (no dropout), so this is for
        # models that do; data order never depends on them (it is a function of the seed).
        if meta.get("world_size") == self.world and rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return meta

    # ---- weights-only series ------------------------------------------------------------------
    def save_series(self, step: int, engine, dtype: str, meta: dict) -> None:
        t0 = time.perf_counter()
        final = series_dir(self.run_dir, step)
        tmp = self._prepare(final)
        tdtype = getattr(torch, dtype)
        state = {k: v.detach().to(tdtype) for k, v in engine.model_state_dict().items()}
        with _no_dist_ok():
            dcp.save(state, checkpoint_id=str(tmp / MODEL_SUBDIR), process_group=self.pg)
        self.stall_s += time.perf_counter() - t0
        self._finalize(
            tmp, final, step, "weights", {"step": step, "kind": "weights", "dtype": dtype, **meta}
        )
