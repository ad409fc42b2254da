"""Held-out evaluation data and the loss on it, usable without a process group.

An `EvalSet` holds, for each held-out source (`eval.paths`, read with the same readers and rules
as training data: Megatron `.bin/.idx` or OLMo `.npy`, one EOS after every document), the first
windows of its packed token stream: window j is `[j*seq_len, j*seq_len + seq_len + 1)`, exactly
how training cuts samples, but in stream order (no shuffling) so the set is a fixed, deterministic
function of the files, seq_len and max_tokens. Each source is reported on its own.

`loss_on_windows(model, windows, micro_batch)` is the definition of the validation loss on one
device: the sum of token cross-entropies over every label token, and the token count; the mean
is their quotient and the perplexity its exponential. The parallel engine's forward-only path
(`Engine.eval_loss`) computes the same two numbers under any layout; the trainer's validation
callback and `pretrain analyze eval` both use this module, so there is one loss definition.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from configcore import ConfigError
from model_zoo.layers import upcast
from pretrain.data.loader import resolve_eos, resolve_npy_dtype
from pretrain.data.sources import open_source

IGNORE_INDEX = -100  # label value that contributes neither loss nor tokens (padding windows)


@dataclass
class EvalSource:
    name: str  # label used in metrics keys: eval/<name>/loss
    path: str
    windows: torch.Tensor  # int64 [n, seq_len + 1]: inputs are [:, :-1], labels [:, 1:]

    @property
    def n_tokens(self) -> int:
        """Label tokens of this source (what its loss is averaged over)."""
        return self.windows.shape[0] * (self.windows.shape[1] - 1)


@dataclass
class EvalResult:
    loss: float  # mean token cross-entropy (nats)
    tokens: int  # label tokens it is averaged over

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @classmethod
    def from_sums(cls, loss_sum: float, n_tokens: int) -> EvalResult:
        return cls(loss_sum / max(n_tokens, 1), int(n_tokens))


def source_names(paths: list[str], names: list[str] | None = None) -> list[str]:
    """Labels for the sources: the given names, else each path's last component without a
    shard suffix (`data/val/en` -> `en`, `wiki.npy` -> `wiki`), made unique with `_1`, `_2`."""
    if names:
        if len(names) != len(paths):
            raise ConfigError(
                f"eval.names has {len(names)} entries but eval.paths has {len(paths)}; "
                "give one name per path or none"
            )
        return list(names)
    out: list[str] = []
    for p in paths:
        base = Path(p.rstrip("/")).name.replace("*", "") or "eval"
        for suffix in (".npy", ".bin", ".idx"):
            base = base.removesuffix(suffix)
        label, k = base, 1
        while label in out:
            label, k = f"{base}_{k}", k + 1
        out.append(label)
    return out


def stream_windows(stream: torch.Tensor, seq_len: int, n: int) -> torch.Tensor:
    """The first n training-style windows of a packed stream (consecutive windows share one
    token, as samples do): [n, seq_len + 1]."""
    return stream[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)[:n].contiguous()


@dataclass
class EvalSet:
    sources: list[EvalSource]
    seq_len: int

    @classmethod
    def from_paths(
        cls,
        paths: list[str],
        seq_len: int,
        max_tokens: int,
        eos_id: int,
        fmt: str = "megatron",
        npy_dtype: str = "uint16",
        vocab_size: int | None = None,
        names: list[str] | None = None,
    ) -> EvalSet:
        """Read each path's first windows: max_tokens label tokens per source (rounded down to
        whole windows, at least one window), or all of it with max_tokens=0."""
        if not paths:
            raise ConfigError("eval.paths is empty; give held-out token data, e.g. [data/val]")
        sources = []
        for name, path in zip(source_names(list(paths), names), paths):
            src = open_source(path, fmt, eos_id, npy_dtype)
            available = (src.n_tokens - 1) // seq_len
            if available < 1:
                raise ConfigError(
                    f"eval source {path!r} has {src.n_tokens} tokens, fewer than one window of "
                    f"seq_len+1={seq_len + 1}; add data or shorten trainer.seq_len"
                )
            n = available if max_tokens <= 0 else max(1, min(available, max_tokens // seq_len))
            tokens = torch.from_numpy(src.read_stream(0, n * seq_len + 1)[0])
            if vocab_size is not None and int(tokens.max()) >= vocab_size:
                raise ConfigError(
                    f"eval source {path!r} holds token id {int(tokens.max())} >= "
                    f"model.vocab_size={vocab_size}; it was tokenized for another vocabulary"
                )
            sources.append(EvalSource(name, path, stream_windows(tokens, seq_len, n)))
        return cls(sources, seq_len)

    @classmethod
    def from_run(cls, run) -> EvalSet | None:
        """The run's held-out set (`eval.*`, read with the training data's format rules), or None
        when eval.paths is empty."""
        e = run.eval
        if not e.paths:
            return None
        return cls.from_paths(
            list(e.paths),
            run.trainer.seq_len,
            e.max_tokens,
            resolve_eos(run),
            fmt=run.data.format,
            npy_dtype=resolve_npy_dtype(run),
            vocab_size=run.model.vocab_size,
            names=list(e.names),
        )

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]


def eval_batches(windows: torch.Tensor, global_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(inputs, labels) of `global_batch` windows at a time, the shape a training step has, so
    the parallel engine evaluates with its training layout (pipeline micro-batches included).
    The last batch is filled up with rows whose labels are all -100: they add no loss and no
    tokens, so the result is exactly that of the windows alone."""
    for start in range(0, windows.shape[0], global_batch):
        chunk = windows[start : start + global_batch]
        inputs, labels = chunk[:, :-1], chunk[:, 1:]
        short = global_batch - chunk.shape[0]
        if short:
            inputs = torch.cat([inputs, inputs.new_zeros(short, inputs.shape[1])])
            labels = torch.cat([labels, labels.new_full((short, labels.shape[1]), IGNORE_INDEX)])
        yield inputs, labels


def _logits(output) -> torch.Tensor:
    # Our zoo models return logits; a Hugging Face model returns an output object holding them.
    return output.logits if hasattr(output, "logits") else output


@torch.no_grad()
def loss_on_windows(model, windows: torch.Tensor, micro_batch: int = 8) -> tuple[float, int]:
    """(sum of token cross-entropies, number of label tokens) of a single-device model on
    windows [n, seq_len + 1], `micro_batch` windows per forward. Labels equal to -100 are
    ignored. Sums are float64, so the result does not depend on micro_batch beyond rounding."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        for start in range(0, windows.shape[0], max(1, micro_batch)):
            chunk = windows[start : start + micro_batch].to(device)
            inputs, labels = chunk[:, :-1], chunk[:, 1:]
            logits = _logits(model(inputs))
            loss = F.cross_entropy(
                upcast(logits.flatten(0, 1)),
                labels.flatten(),
                reduction="sum",
                ignore_index=IGNORE_INDEX,
            )
            total += loss.to(torch.float64).cpu()
            count += int((labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return float(total), count


def evaluate_model(model, evalset: EvalSet, micro_batch: int = 8) -> dict[str, EvalResult]:
    """Loss and perplexity of a single-device model on every source of the set."""
    return {
        s.name: EvalResult.from_sums(*loss_on_windows(model, s.windows, micro_batch))
        for s in evalset.sources
    }


def eval_record(results: dict[str, EvalResult]) -> dict[str, float]:
    """Flat metrics keys, as metrics.jsonl, TensorBoard and W&B carry them."""
    rec: dict[str, float] = {}
    for name, r in results.items():
        rec[f"eval/{name}/loss"] = r.loss
        rec[f"eval/{name}/ppl"] = r.ppl
        rec[f"eval/{name}/tokens"] = r.tokens
    return rec
