"""Loss spikes: detected at every step read, explained by their data, survived by rollback.

`SpikeDetector` (a Trainer callback, on by default: `spike.*` in pretrain/config.py) keeps the
last `spike.window` steps' training loss and log grad norm. The statistic is the step-to-step
change: a step's change from the previous kept step, minus the median change over the window,
over 1.4826 x the MAD of those changes (the robust sigma). The change, not the level, because the
loss trends: early in training the window's spread is the descent itself (the demo's steps 1-10
fall 1 nat, so a level z of its 2.4-nat spike at step 11 is only 5), while the changes' spread is
the step-to-step noise. A flagged step stays out of the window. Both values are reduced over all
ranks by the engine (identical bits on every rank), so every rank takes the same decision with no
collective of its own.

A spike goes to RUN/spikes.jsonl (rank 0): step, loss, grad norm, both z-scores, LR, the global
samples, and what the batch held, top offenders first: each sequence's loss with its source and
documents, and each document's loss over its tokens of the batch. The per-token losses come from
the training forward itself: `RowLosses` wraps the engine's loss function and, under no_grad,
keeps the token cross-entropies of the step (no host read between log steps; gathered over the
ranks only at log steps and spikes). The same rows give the training loss per source of a
mixture at each log step (metrics.jsonl `loss/<source>`).

spike.action=rollback: the spiking step's update is not applied; every rank returns to the newest
saved state before the spike (a host-memory snapshot every spike.snapshot_interval steps, or the
newest full checkpoint), adds the sample range of spike.skip_batches batches starting at the
spiking one to the loader's skips (kept in every later checkpoint's data state, so a resumed run
skips them too), discards checkpoints past that state, and trains on. The steps in between are
trained again on the same batches, bit for bit; the step numbers stay, so the checkpoint series is
the one asked for. After spike.max_rollbacks rollbacks the next spike stops the run (SpikeStop).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from model_zoo.layers import upcast
from pretrain.callbacks import Callback, TrainState
from pretrain.checkpoint import drop_checkpoints_after, list_full_checkpoints
from pretrain.evaluation import source_names
from pretrain.optim import lr_at

if TYPE_CHECKING:
    from pretrain.config import SpikeConfig

IGNORE_INDEX = -100
MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): the MAD of a Gaussian is 0.6745 sigma


class SpikeStop(RuntimeError):
    """A spike after spike.max_rollbacks rollbacks (or with no saved state before it)."""


def robust_z(values: list[float], x: float) -> tuple[float | None, float, float]:
    """z of x's change from values[-1] against the changes within `values`: (z, median change,
    robust sigma). z is None when the changes have no spread (MAD 0) or x is not finite."""
    d = np.diff(np.asarray(values, dtype=np.float64))
    med = float(np.median(d))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(d - med)))
    if sigma <= 0 or not math.isfinite(x):
        return None, med, sigma
    return (x - values[-1] - med) / sigma, med, sigma


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class RowLosses:
    """The token cross-entropies of the training forward, per micro-batch in order, recorded
    while armed. Wraps Engine._loss_fn (and the pipeline schedule's copy of it, which torch
    stores at build time): the loss it returns is the original's, unchanged; the recorded CE is
    computed apart under no_grad from the detached logits (under loss_parallel when TP shards
    the vocabulary), so training's numbers do not change. Validation runs disarmed."""

    def __init__(self, engine) -> None:
        self.engine, self.armed, self.chunks = engine, False, []
        original = engine._loss_fn

        def loss_fn(logits, labels, *args, **kwargs):
            if self.armed:
                with torch.no_grad():
                    ce = F.cross_entropy(
                        upcast(logits.detach().flatten(0, 1)),
                        labels.flatten(0, 1),
                        reduction="none",
                        ignore_index=IGNORE_INDEX,
                    )
                self.chunks.append((ce, labels != IGNORE_INDEX))
            return original(logits, labels, *args, **kwargs)

        engine._loss_fn = loss_fn  # pp == 1: forward_backward looks it up at each call
        if engine._schedule is not None:
            engine._schedule._loss_fn = loss_fn
        lay = engine.layout
        # who holds a share of the loss: the last stage's first tp rank (tp ranks hold copies)
        self.contributes = engine.holds_last_stage and engine.mesh["tp"].get_local_rank() == 0
        self.local, self.cp = lay.local_batch_size, lay.cp

    def start(self) -> None:
        self.chunks, self.armed = [], True

    def take(self) -> list:
        chunks, self.chunks, self.armed = self.chunks, [], False
        return chunks

    def _local_matrix(self, chunks) -> tuple[torch.Tensor, torch.Tensor]:
        """[local_batch, tokens of this rank] CE (float64) and label mask (collective over tp)."""
        ce = torch.cat([_full(c).reshape(-1) for c, _ in chunks]).to(torch.float64)
        valid = torch.cat([_full(v).reshape(-1) for _, v in chunks])
        return ce.view(self.local, -1), valid.view(self.local, -1)

    def rows(self, chunks, global_batch: int) -> torch.Tensor:
        """[global_batch, 2]: each sequence's CE sum and label tokens, on every rank (one
        all_reduce: dp ranks fill their rows, cp ranks add their shares)."""
        out = torch.zeros(global_batch, 2, dtype=torch.float64, device=self.engine.device)
        if chunks:
            ce, valid = self._local_matrix(chunks)
            if self.contributes:
                lo = self.engine.dp_rank * self.local
                out[lo : lo + self.local, 0] = ce.sum(1)
                out[lo : lo + self.local, 1] = valid.sum(1).to(torch.float64)
        dist.all_reduce(out)
        return out.cpu()

    def tokens(self, chunks, global_batch: int, seq_len: int) -> torch.Tensor | None:
        """[global_batch, seq_len] token CE on every rank (None under context parallel, where a
        rank's tokens are a load-balanced shard of each sequence)."""
        if self.cp > 1:
            return None
        out = torch.zeros(global_batch, seq_len, dtype=torch.float64, device=self.engine.device)
        if chunks:
            ce, _ = self._local_matrix(chunks)
            if self.contributes:
                lo = self.engine.dp_rank * self.local
                out[lo : lo + self.local] = ce
        dist.all_reduce(out)
        return out.cpu()


class HostSnapshot:
    """This rank's parameters, buffers and optimizer state copied to host memory, restored in
    place (spike.snapshot_interval: a rollback without reading a checkpoint back)."""

    def __init__(self, state: TrainState, detector_state: dict) -> None:
        self.step, self.data = state.step, state.loader.state_dict()
        self.detector = detector_state
        self.model = [
            [_local(t).detach().to("cpu", copy=True) for t in self._tensors(part)]
            for part in state.engine.model_parts
        ]
        self.optim = []
        for opt in state.optimizers:
            saved = []
            for p in self._params(opt):
                st = opt.state.get(p, {})
                saved.append(
                    {
                        k: _local(v).detach().to("cpu", copy=True) if torch.is_tensor(v) else v
                        for k, v in st.items()
                    }
                )
            self.optim.append(saved)

    @staticmethod
    def _tensors(part) -> list[torch.Tensor]:
        return [p for _, p in part.named_parameters()] + [b for _, b in part.named_buffers()]

    @staticmethod
    def _params(opt) -> list:
        return [p for g in opt.param_groups for p in g["params"]]

    @torch.no_grad()
    def restore(self, state: TrainState) -> None:
        for part, saved in zip(state.engine.model_parts, self.model):
            for live, value in zip(self._tensors(part), saved):
                _local(live).copy_(value)
        for opt, saved in zip(state.optimizers, self.optim):
            for p, st in zip(self._params(opt), saved):
                if not st:  # no step had been taken: AdamW starts its moments afresh
                    opt.state.pop(p, None)
                    continue
                live = opt.state[p]
                for k, v in st.items():
                    if torch.is_tensor(v):
                        _local(live[k]).copy_(v)
                    else:
                        live[k] = v


class SpikeDetector(Callback):
    """See the module docstring. Runs on every rank; rank 0 writes RUN/spikes.jsonl."""

    def __init__(self, cfg: SpikeConfig) -> None:
        self.cfg = cfg
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.log_gnorm: list[float] = []
        self.rollbacks = 0
        self.recorder: RowLosses | None = None
        self.stash: dict[int, list] = {}  # step -> recorded chunks, until its values are read
        self.pending: list[tuple] = []  # unread steps (nan_check=log): step, loss, gnorm, rng
        self.source_loss: tuple[int, dict] | None = None
        self.snapshot: HostSnapshot | None = None
        self.fh = None
        self.found: list[dict] = []  # this process's spike records (every rank)

    # ---- state (checkpoint meta.json "spike") ---------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "steps": list(self.steps),
            "loss": list(self.loss),
            "log_grad_norm": list(self.log_gnorm),
            "rollbacks": self.rollbacks,
        }

    def checkpoint_entries(self) -> dict:
        return {"spike": self.state_dict()}

    def _load_window(self, state: dict | None) -> None:
        state = state or {}
        self.steps = [int(s) for s in state.get("steps", [])]
        self.loss = [float(x) for x in state.get("loss", [])]
        self.log_gnorm = [float(x) for x in state.get("log_grad_norm", [])]

    # ---- events ----------------------------------------------------------------------------------
    def on_fit_start(self, state: TrainState) -> None:
        self.recorder = RowLosses(state.engine)
        self.names = source_names(list(state.run.data.paths))
        if state.resume_meta is not None:
            saved = state.resume_meta.get("spike")
            self._load_window(saved)
            self.rollbacks = int((saved or {}).get("rollbacks", 0))
        if self.cfg.action == "rollback" and state.step == 0:
            # a spike before the first full checkpoint still has a state to return to
            self.snapshot = HostSnapshot(state, self.state_dict())
        if state.rank0:
            path = state.run_dir / "spikes.jsonl"
            keep = []
            if state.step > 0 and path.exists():  # a resumed run: later steps come again
                keep = [ln for ln in path.read_text().splitlines() if ln.strip()]
                keep = [ln for ln in keep if json.loads(ln)["step"] <= state.step]
            path.write_text("".join(ln + "\n" for ln in keep))
            self.fh = open(path, "a")

    def on_batch(self, state: TrainState, batch: dict, sample_range) -> None:
        self.recorder.start()

    def on_before_update(self, state: TrainState, loss, grad_norm, batch, sample_range) -> None:
        step = state.step + 1
        self.stash[step] = self.recorder.take()
        todo = self.pending + [(step, loss, grad_norm, tuple(sample_range))]
        self.pending = []
        for k, loss_k, gnorm_k, rng_k in todo:
            if self._check(state, k, float(loss_k), float(gnorm_k), rng_k):
                return  # rolled back (or stopped): the rest belongs to an abandoned trajectory
        if len(self.names) > 1 and state.is_log_step(step):
            self.source_loss = (step, self._per_source(state, step, sample_range))
        self.stash.clear()

    def on_step_end(self, state: TrainState) -> None:
        out = state.out
        if self.recorder.armed or self.recorder.chunks:  # not read this step (nan_check=log)
            self.stash[out.step] = self.recorder.take()
            self.pending.append((out.step, out.loss, out.grad_norm, tuple(out.sample_range)))
        if self.source_loss is not None and self.source_loss[0] == out.step:
            out.source_loss, self.source_loss = self.source_loss[1], None
        c = self.cfg
        if c.action == "rollback" and c.snapshot_interval and out.step % c.snapshot_interval == 0:
            self.snapshot = HostSnapshot(state, self.state_dict())

    def on_checkpoint(self, state: TrainState, kind: str, step: int) -> None:
        if kind == "full" and self.cfg.snapshot_interval == 0:
            self.snapshot = None  # the start's snapshot is superseded by a checkpoint on disk

    def close(self, state: TrainState) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    # ---- detection -------------------------------------------------------------------------------
    def _check(self, state: TrainState, step: int, loss: float, gnorm: float, rng) -> bool:
        """Score one step; record a spike and act on it. True when the state was rolled back."""
        c = self.cfg
        lg = math.log(gnorm) if gnorm > 0 else -math.inf
        z_loss = z_gnorm = None
        med = sigma = math.nan
        if len(self.loss) >= c.min_steps:
            z_loss, med, sigma = robust_z(self.loss, loss)
            z_gnorm = robust_z(self.log_gnorm, lg)[0]
        over = {
            "loss": z_loss is not None and z_loss > c.z,
            "grad_norm": z_gnorm is not None and z_gnorm > c.z,
        }
        flagged = over["loss"] or over["grad_norm"] if c.signal == "either" else over[c.signal]
        if not flagged:
            self.steps.append(step)
            self.loss.append(loss)
            self.log_gnorm.append(lg)
            del self.steps[: -c.window], self.loss[: -c.window], self.log_gnorm[: -c.window]
            return False
        rec = {
            "step": step,
            "loss": loss,
            "grad_norm": gnorm,
            "z_loss": z_loss,
            "z_grad_norm": z_gnorm,
            "trigger": [k for k, v in over.items() if v],
            "lr": lr_at(step, state.run.optim.lr, state.run.schedule, state.run.trainer.max_steps),
            "previous_loss": self.loss[-1],
            "median_loss_change": med,
            "loss_sigma": sigma,
            "previous_grad_norm": math.exp(self.log_gnorm[-1]),
            "window": len(self.loss),
            "samples": list(rng),
            "action": c.action,
        }
        rec.update(self._explain(state, step, rng))
        if c.action == "rollback":
            self._rollback(state, step, rng, rec)
        # what each rank decided (one gather, at spikes only): the same by construction, since
        # the loss and norm are reduced values; recorded so a run shows it
        mine = [
            step,
            z_loss,
            z_gnorm,
            rec["action"],
            rec.get("rollback_to"),
            rec.get("skipped_samples"),
        ]
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        rec["ranks_agree"] = all(r == mine for r in ranks)
        rec["ranks"] = len(ranks)
        self._write(state, rec)
        if not rec["ranks_agree"]:  # the ranks' states would now differ: nothing sane follows
            raise SpikeStop(f"spike at step {step}: the ranks decided differently: {ranks}")
        return c.action == "rollback"

    def _per_source(self, state: TrainState, step: int, rng) -> dict[str, float]:
        rows = self.recorder.rows(self.stash.get(step, []), rng[1] - rng[0]).numpy()
        src = np.array([state.order.locate(k)[0] for k in range(rng[0], rng[1])])
        out = {}
        for i, name in enumerate(self.names):
            sel = rows[src == i]
            if len(sel) and sel[:, 1].sum() > 0:
                out[name] = float(sel[:, 0].sum() / sel[:, 1].sum())
        return out

    def _explain(self, state: TrainState, step: int, rng) -> dict:
        """The batch's sequences and documents by loss (collective: every rank gathers)."""
        chunks, (a, b) = self.stash.get(step, []), rng
        seq_len = state.run.trainer.seq_len
        rows = self.recorder.rows(chunks, b - a).numpy()
        # every rank joins both gathers (a pipeline's first stages recorded nothing)
        tokens = self.recorder.tokens(chunks, b - a, seq_len)
        if not state.rank0:
            return {}
        order, top = state.order, self.cfg.top
        samples = order.samples(a, b)
        seq_loss = rows[:, 0] / np.maximum(rows[:, 1], 1)
        docs: dict[tuple[int, int], list[float]] = {}
        sequences = []
        for i, s in enumerate(samples):
            label_docs = s.docs[1:]  # the document of each predicted token
            ids = [int(d) for d in dict.fromkeys(label_docs.tolist())]
            sequences.append(
                {
                    "sample": a + i,
                    "loss": float(seq_loss[i]),
                    "source": self.names[s.source],
                    "docs": ids,
                }
            )
            for d in ids:
                if tokens is not None:
                    sel = tokens[i].numpy()[label_docs == d]
                    acc = docs.setdefault((s.source, d), [0.0, 0])
                    acc[0], acc[1] = acc[0] + float(sel.sum()), acc[1] + len(sel)
                else:  # context parallel: only per-sequence sums exist
                    acc = docs.setdefault((s.source, d), [0.0, 0])
                    acc[0], acc[1] = max(acc[0], float(seq_loss[i])), 1
        # a document's excess: its tokens' loss above the loss of the last step before the spike,
        # summed: how much of the jump it explains (a mean alone would rank one-token tails
        # first; a batch median would call nothing unusual in a batch that is all poison)
        base = self.loss[-1]
        documents = []
        for (src, d), (total, n) in docs.items():
            loc = order.sources[src].locate(d)
            documents.append(
                {
                    "source": self.names[src],
                    "doc": d,
                    "file": loc.file,
                    "index": loc.index,
                    "tokens": n,
                    "loss": total / max(n, 1),
                    "excess": total - n * base,
                }
            )
        documents.sort(key=lambda r: -r["excess"])
        sequences.sort(key=lambda r: -r["loss"])
        return {
            "batch_loss": float(rows[:, 0].sum() / max(rows[:, 1].sum(), 1)),
            # how broad the jump is: a batch whose every sequence is above the last step's loss
            # points at the weights (the previous update), a few high ones at their documents
            "sequence_loss_range": [float(x) for x in np.quantile(seq_loss, [0, 0.5, 1])],
            "sequences_above_previous": int((seq_loss > base).sum()),
            "n_sequences": len(samples),
            "document_loss": "tokens" if tokens is not None else "max over its sequences",
            "sequences": sequences[:top],
            "documents": documents[:top],
            "n_documents": len(documents),
        }

    def _write(self, state: TrainState, rec: dict) -> None:
        self.found.append(rec)
        if self.fh is not None:
            self.fh.write(json.dumps(rec) + "\n")
            self.fh.flush()
        gz = f"{rec['z_grad_norm']:.1f}" if rec["z_grad_norm"] is not None else "n/a"
        zl = f"{rec['z_loss']:.1f}" if rec["z_loss"] is not None else "n/a"
        doc = rec.get("documents", [{}])[0] if rec.get("documents") else None
        who = (
            f"; top document {doc['source']} doc {doc['doc']} ({doc['file']}#{doc['index']}) "
            f"loss {doc['loss']:.3f} over {doc['tokens']} tokens"
            if doc
            else ""
        )
        spread = (
            f"; {rec['sequences_above_previous']}/{rec['n_sequences']} sequences above the "
            "last step's loss"
            if "n_sequences" in rec
            else ""
        )
        act = (
            f"rolled back to step {rec['rollback_to']} and skipped samples "
            f"{rec['skipped_samples'][0]}..{rec['skipped_samples'][1] - 1} "
            f"(rollback {rec['rollback']}/{self.cfg.max_rollbacks})"
            if "rollback_to" in rec
            else "the run stops"
            if rec["action"] == "stop"
            else "logged (spike.action=log)"
        )
        state.say(
            f"spike at step {rec['step']}: loss {rec['previous_loss']:.4f} -> {rec['loss']:.4f} "
            f"(z {zl}), grad norm {rec['previous_grad_norm']:.3g} -> {rec['grad_norm']:.3g} "
            f"(z {gz}), lr {rec['lr']:.3g}{spread}{who}; {act} -> "
            f"{state.run_dir / 'spikes.jsonl'}"
        )

    # ---- rollback --------------------------------------------------------------------------------
    def _stop(self, state: TrainState, step: int, rec: dict, why: str) -> None:
        rec["action"] = "stop"
        self._write(state, rec)
        state.engine.zero_grad()
        state.stop_reason = "spike"
        state.callbacks.on_stop(state)  # the last good state (step - 1) is saved
        z = f"{rec['z_loss']:.1f}" if rec["z_loss"] is not None else "n/a"
        raise SpikeStop(
            f"spike at step {step} (loss {rec['loss']:.4f}, z {z}): {why}; stopped "
            f"at step {state.step}, saved in {state.run_dir / 'checkpoints'}. Its data: "
            f"`pretrain analyze spikes --run {state.run_dir}`; raise spike.max_rollbacks or "
            "spike.skip_batches, or lower optim.lr"
        )

    def _rollback(self, state: TrainState, step: int, rng, rec: dict) -> None:
        c = self.cfg
        if self.rollbacks >= c.max_rollbacks:
            self._stop(
                state, step, rec, f"{self.rollbacks} rollbacks already (spike.max_rollbacks)"
            )
        state.engine.zero_grad()
        state.ckpt.wait()
        choice: list = [None]
        if state.rank0:  # every rank sees the same folder; rank 0's listing decides for all
            fulls = [(s, str(p)) for s, p in list_full_checkpoints(state.run_dir) if s < step]
            choice = [fulls[-1] if fulls else None]
        dist.broadcast_object_list(choice, src=0)
        snap = self.snapshot if self.snapshot is not None and self.snapshot.step < step else None
        if snap is not None and (choice[0] is None or snap.step >= choice[0][0]):
            snap.restore(state)
            to, data, window, where = snap.step, snap.data, snap.detector, "host snapshot"
        elif choice[0] is not None:
            to, path = choice[0]
            meta = state.ckpt.load_full(path, state.engine, state.optimizers)
            data, window, where = meta["data"], meta.get("spike"), path
        else:
            self._stop(state, step, rec, "no saved state before it to return to")
        skips = list(state.loader.skips)
        state.loader.load_state_dict(data)
        for r in skips:  # skips are the run's, not the state's: an older state lacks the newer
            state.loader.add_skip(*r)
        skip = (rng[0], rng[0] + c.skip_batches * state.run.trainer.global_batch_size)
        state.loader.add_skip(*skip)
        self._load_window(window)
        self.rollbacks += 1
        self.pending, self.stash = [], {}
        dropped = drop_checkpoints_after(state.run_dir, to) if state.rank0 else []
        dist.barrier()
        rec.update(
            rollback_to=to,
            restored_from=where,
            skipped_samples=list(skip),
            rollback=self.rollbacks,
            discarded_checkpoints=dropped,
        )
        state.rewind(to)
        state.callbacks.on_rollback(state, to)
