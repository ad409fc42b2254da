"""The deterministic data loader: a global sample order that is a pure function of the seed.

Sample k of the run (k = 0, 1, 2, ...) is fixed by (seed, data, seq_len) alone:

1. Mixing: the global sample stream is cut into blocks of `mix_block` samples. Each block holds
   the same number of samples from each source (weights x block, largest remainder; Megatron's
   BlendedDataset targets the same proportions), in an order permuted by the seed and the block
   index. So the mixture is exact within every block and sample k's source and its index within
   that source take O(block) to compute, with nothing precomputed for the whole run.
2. Within a source: its documents are packed into one stream with one EOS after each; sample j
   of one epoch is the window [j*seq_len, j*seq_len + seq_len + 1) of that stream (seq_len + 1
   tokens: inputs and the labels shifted by one, consecutive samples share a token as in
   Megatron). Each epoch visits the samples in an order permuted by (seed, source, epoch).
3. Step s (1-based) of the run consumes global samples [start_s, start_s + global_batch) where
   start_s is the running count of consumed samples; a data-parallel rank reads only its
   contiguous slice of that range. Ranges of samples can be skipped (a spike rollback's
   `spike.skip_batches`): a batch that would start inside one starts at its end instead; the
   ranges are part of the loader's state, so they hold after a resume. The split into ranks and micro-batches therefore never changes
   which samples form a global batch, and resuming at a recorded sample count is exact.

Nothing here depends on the process layout; `pretrain analyze batch` calls the same functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from configcore import ConfigError
from pretrain.data.sources import Source, open_source

_MIX_TAG, _EPOCH_TAG = 0x6D6978, 0x65706F  # keep the two seed streams apart


def resolve_eos(run) -> int:
    return run.data.eos_id if run.data.eos_id >= 0 else int(run.model.eos_token_id)


def resolve_npy_dtype(run) -> str:
    if run.data.npy_dtype != "auto":
        return run.data.npy_dtype
    return "uint16" if run.model.vocab_size <= 65536 else "uint32"


def block_quotas(weights: list[float], block: int) -> np.ndarray:
    """Samples per block from each source: largest remainder of weight share x block."""
    w = np.asarray(weights, dtype=np.float64)
    share = w / w.sum() * block
    q = np.floor(share).astype(np.int64)
    rest = block - int(q.sum())
    order = np.argsort(-(share - q), kind="stable")
    q[order[:rest]] += 1
    return q


@dataclass
class Sample:
    tokens: np.ndarray  # seq_len + 1 token ids
    source: int
    docs: np.ndarray  # document id (within the source) of each token
    offsets: np.ndarray  # offset of each token within its document


class DataOrder:
    """The global sample order of a run: sample index -> tokens and provenance."""

    def __init__(
        self,
        sources: list[Source],
        weights: list[float],
        seq_len: int,
        seed: int,
        shuffle: bool = True,
        mix_block: int = 4096,
    ):
        self.sources, self.seq_len, self.seed, self.shuffle = sources, seq_len, seed, shuffle
        self.weights = list(weights) if weights else [1.0] * len(sources)
        self.block = mix_block
        self.quotas = block_quotas(self.weights, mix_block)
        for i, (s, q) in enumerate(zip(sources, self.quotas)):
            if q == 0:
                raise ConfigError(
                    f"data source {s.name!r} gets 0 of every {mix_block} samples with weight "
                    f"{self.weights[i]}; raise its weight or data.mix_block"
                )
        self.per_epoch = []
        for s in sources:
            n = (s.n_tokens - 1) // seq_len
            if n < 1:
                raise ConfigError(
                    f"data source {s.name!r} has {s.n_tokens} tokens, fewer than one sample of "
                    f"seq_len+1={seq_len + 1}; add data or shorten trainer.seq_len"
                )
            self.per_epoch.append(n)
        self._block_cache = lru_cache(maxsize=8)(self._block)
        self._perm_cache = lru_cache(maxsize=4)(self._epoch_perm)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Source of each slot of block b, and each slot's rank among its source's slots."""
        assign = np.repeat(np.arange(len(self.sources)), self.quotas)
        if len(self.sources) > 1:
            rng = np.random.default_rng([self.seed, _MIX_TAG, b])
            assign = assign[rng.permutation(len(assign))]
        rank = np.empty(len(assign), dtype=np.int64)
        for s in range(len(self.sources)):
            idx = np.flatnonzero(assign == s)
            rank[idx] = np.arange(len(idx))
        return assign, rank

    def _epoch_perm(self, source: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _EPOCH_TAG, source, epoch])
        return rng.permutation(self.per_epoch[source])

    def locate(self, k: int) -> tuple[int, int, int]:
        """Global sample k -> (source, epoch, sample index within that source's epoch)."""
        if len(self.sources) == 1:
            s, j = 0, k
        else:
            b, r = divmod(k, self.block)
            assign, rank = self._block_cache(b)
            s = int(assign[r])
            j = b * int(self.quotas[s]) + int(rank[r])
        epoch, within = divmod(j, self.per_epoch[s])
        phys = int(self._perm_cache(s, epoch)[within]) if self.shuffle else within
        return s, epoch, phys

    def sample(self, k: int) -> Sample:
        s, _, phys = self.locate(k)
        start = phys * self.seq_len
        tokens, docs, offs = self.sources[s].read_stream(start, start + self.seq_len + 1)
        return Sample(tokens, s, docs, offs)

    def samples(self, start: int, end: int) -> list[Sample]:
        return [self.sample(k) for k in range(start, end)]

    def fingerprint(self) -> dict:
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "shuffle": self.shuffle,
            "mix_block": self.block,
            "weights": self.weights,
            "quotas": self.quotas.tolist(),
            "samples_per_epoch": self.per_epoch,
            "numpy": np.__version__,
            "sources": [s.fingerprint() for s in self.sources],
        }


def build_data_order(run) -> DataOrder:
    d = run.data
    if not d.paths:
        raise ConfigError(
            "data.paths is empty; give tokenized shards, e.g. "
            "data.paths=[data/tokens/train] (written by `pretrain data`)"
        )
    eos = resolve_eos(run)
    sources = [open_source(p, d.format, eos, resolve_npy_dtype(run)) for p in d.paths]
    vocab = run.model.vocab_size
    for s in sources:  # a token id past the vocabulary would index past the embedding: say so now
        probe = s.read_stream(0, min(s.n_tokens, 4096))[0]
        if probe.max(initial=0) >= vocab:
            raise ConfigError(
                f"data source {s.name!r} holds token id {int(probe.max())} >= "
                f"model.vocab_size={vocab}; the data was tokenized for another "
                "vocabulary (or set data.npy_dtype)"
            )
    return DataOrder(
        sources,
        list(d.weights),
        run.trainer.seq_len,
        run.trainer.seed,
        shuffle=d.shuffle,
        mix_block=d.mix_block,
    )


def batch_tensors(samples: list[Sample], reset_positions: bool) -> dict[str, torch.Tensor]:
    toks = torch.from_numpy(np.stack([s.tokens for s in samples]))
    out = {"inputs": toks[:, :-1].contiguous(), "labels": toks[:, 1:].contiguous()}
    docs = np.stack([s.docs for s in samples])[:, :-1]
    out["document_ids"] = torch.from_numpy(docs.copy())
    if reset_positions:
        # Positions restart where a new document begins inside the sample.
        pos = np.zeros(docs.shape, dtype=np.int64)
        for r in range(docs.shape[0]):
            starts = np.concatenate([[True], docs[r, 1:] != docs[r, :-1]])
            idx = np.arange(docs.shape[1])
            last_start = np.maximum.accumulate(np.where(starts, idx, 0))
            pos[r] = idx - last_start
        out["position_ids"] = torch.from_numpy(pos)
    return out


def batch_sha(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


class DataLoader:
    """Per-rank view of the global order: yields this rank's slice of each global batch."""

    def __init__(
        self,
        order: DataOrder,
        global_batch: int,
        dp_rank: int,
        dp_size: int,
        reset_positions: bool = False,
        consumed_samples: int = 0,
        pin_memory: bool = False,
    ):
        if global_batch % dp_size:
            raise ConfigError(
                f"global batch {global_batch} is not divisible by the data-parallel size {dp_size}"
            )
        self.order, self.global_batch = order, global_batch
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.local = global_batch // dp_size
        self.reset_positions = reset_positions
        self.consumed = consumed_samples
        # Page-locked batches (on CUDA): the engine's copy to the GPU is then asynchronous
        self.pin_memory = pin_memory
        self.skips: list[tuple[int, int]] = []  # [start, end) sample ranges never consumed
        self.jumped: tuple[int, int] | None = None  # the range skipped before the last batch

    def add_skip(self, start: int, end: int) -> None:
        if (start, end) not in self.skips:
            self.skips = sorted([*self.skips, (start, end)])

    def next_batch(self) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """This rank's slice of the next global batch, and the global sample range it belongs to."""
        start, self.jumped = self.consumed, None
        moved = True
        while moved:  # ranges may touch: skip them all
            moved = False
            for a, b in self.skips:
                if a <= start < b:
                    start, moved = b, True
        if start != self.consumed:
            self.jumped = (self.consumed, start)
        lo = start + self.dp_rank * self.local
        batch = batch_tensors(self.order.samples(lo, lo + self.local), self.reset_positions)
        if self.pin_memory:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        self.consumed = start + self.global_batch
        return batch, (start, start + self.global_batch)

    def state_dict(self) -> dict:
        out = {"consumed_samples": self.consumed, "global_batch": self.global_batch}
        if self.skips:
            out["skips"] = [list(r) for r in self.skips]
        return out

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed_samples"])
        self.skips = sorted((int(a), int(b)) for a, b in state.get("skips", []))


def global_batch(
    order: DataOrder, start: int, end: int, reset_positions: bool = False
) -> tuple[dict[str, torch.Tensor], list[Sample]]:
    samples = order.samples(start, end)
    return batch_tensors(samples, reset_positions), samples


def data_fingerprint_matches(saved: dict, order: DataOrder) -> str | None:
    """None when the data and order settings are those of the run, else what differs."""
    now = order.fingerprint()
    for key in ("seed", "seq_len", "shuffle", "mix_block", "weights"):
        if saved.get(key) != now.get(key):
            return f"{key}: run used {saved.get(key)!r}, now {now.get(key)!r}"
    for a, b in zip(saved.get("sources", []), now["sources"]):
        if a.get("doc_lengths_sha256") != b["doc_lengths_sha256"]:
            return f"the documents of {b['name']!r} differ from those the run read"
    if len(saved.get("sources", [])) != len(now["sources"]):
        return "the number of data sources differs"
    return None
