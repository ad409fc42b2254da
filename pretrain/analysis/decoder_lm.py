"""Our decoder as an lm-evaluation-harness model: `DecoderLM(model, tokenizer)` is an
`lm_eval.api.model.LM` (through lm-eval's `TemplateLM`, which splits each request into context and
continuation tokens exactly as its `hf` model does), so every lm-eval task runs on a checkpoint of
ours without exporting it.

The scoring follows lm-eval's `hf` model (lm_eval/models/huggingface.py) step by step, so the two
give the same numbers on the same weights (tests/pretrain/test_downstream.py):
- loglikelihood: the context + continuation tokens, the last one dropped, left-truncated to
  `max_length`; log-softmax over the model's whole (padded) vocabulary; the continuation's summed
  log-probability and whether greedy argmax reproduces it. An empty context is the prefix token
  (bos when the tokenizer has one, else eos: what preceded every document in training).
- loglikelihood_rolling: lm-eval's own disjoint rolling windows (`get_rolling_token_windows`,
  context 1, prefix token first), summed per document.
- generate_until: greedy decoding of up to max_gen_toks tokens after the context (left-truncated
  to max_length - max_gen_toks), stopped at eos or when a stop string appears; the text is cut at
  the first stop string.

Requests are sorted by length (longest first) and scored `batch_size` at a time, right-padded:
under the causal mask a padded position never changes the logits of the real ones before it.
Decoding recomputes the whole prefix each step (the model has no KV cache), one batch of
requests at a time, each row's next token read at its own last position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.models.utils import postprocess_generated_text as cut_at_stop
from tqdm import tqdm

from configcore import ConfigError


class DecoderLM(TemplateLM):
    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 16,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        progress: bool = True,
    ):
        super().__init__()
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                "the tokenizer names no eos token; write it with pretrain/tokenizer.py "
                "(`pretrain export-hf` does) or give a tokenizer folder whose config names it"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        limit = model.cfg.max_seq_len
        self.max_length = min(max_length or limit, limit)
        self.max_gen_toks = max_gen_toks
        self._device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.progress = progress
        self.forwards = 0  # model calls, for the benchmark's and the log's accounting

    # ---- tokens ---------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list[int]:
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos is not None and string.startswith(bos):
            kwargs["add_special_tokens"] = False  # the text already starts with bos
        return self.tokenizer.encode(string, **kwargs)

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ---- scoring --------------------------------------------------------------------------
    @torch.no_grad()
    def _log_probs(self, rows: list[list[int]]) -> torch.Tensor:
        """Log-softmax of the model's logits for right-padded rows: (batch, longest, vocab)."""
        width = max(len(r) for r in rows)
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        self.forwards += 1
        logits = self.model(batch.to(self._device))
        # lm-eval's hf model takes the log-softmax in the logits' own dtype (fp32 / fp64)
        return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)

    def _bar(self, total: int, desc: str, disable: bool):
        return tqdm(total=total, desc=desc, disable=disable or not self.progress, leave=False)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
        """[(request key, context ids, continuation ids)] -> [(log-prob, is greedy)]."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = self._bar(len(requests), "loglikelihood", disable_tqdm)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows, conts = [], []
            for i in chunk:
                _, ctx, cont = requests[i]
                if not ctx or not cont:
                    raise ValueError("a loglikelihood request needs context and continuation")
                rows.append((ctx + cont)[-(self.max_length + 1) :][:-1])
                conts.append(cont)
            logp = self._log_probs(rows)
            for i, row, cont, lp in zip(chunk, rows, conts, logp):
                scored = lp[len(row) - len(cont) : len(row)]  # the continuation's positions
                target = torch.tensor(cont, device=scored.device)
                greedy = bool((scored.argmax(-1) == target).all())
                out[i] = (float(scored.gather(1, target[:, None]).sum()), greedy)
            bar.update(len(chunk))
        bar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for k, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[k] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        args = [req.args for req in requests]
        enc = [self.tok_encode(ctx) for ctx, _ in args]
        groups: dict[str, list[int]] = {}
        for i, (_, gen) in enumerate(args):
            groups.setdefault(repr(sorted(gen.items())), []).append(i)
        out: list[str | None] = [None] * len(requests)
        bar = self._bar(len(requests), "generate_until", disable_tqdm)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(args[members[0]][1], self.max_gen_toks)
            if kwargs.get("do_sample"):
                raise ConfigError(
                    "generate_until with do_sample=true: this model decodes greedily only; "
                    "drop do_sample from the task's generation_kwargs"
                )
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            new = int(kwargs.pop("max_gen_toks"))
            if new >= self.max_length:
                raise ConfigError(
                    f"max_gen_toks {new} leaves no room for a context in max_length "
                    f"{self.max_length}; lower max_gen_toks or raise --max-length"
                )
            members.sort(key=lambda i: -len(enc[i]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                for i, text in zip(chunk, self._greedy([enc[i] for i in chunk], new, until)):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
                bar.update(len(chunk))
        bar.close()
        return out

    def _greedy(self, contexts: list[list[int]], new: int, until: list[str]) -> list[str]:
        seqs = [c[-(self.max_length - new) :] for c in contexts]
        gen: list[list[int]] = [[] for _ in seqs]
        live = list(range(len(seqs)))
        for _ in range(new):
            logp = self._log_probs([seqs[i] + gen[i] for i in live])
            still = []
            for row, i in enumerate(live):
                tok = int(logp[row, len(seqs[i]) + len(gen[i]) - 1].argmax())
                gen[i].append(tok)
                text = self.tok_decode(gen[i])
                if tok != self.eot_token_id and not any(s and s in text for s in until):
                    still.append(i)
            live = still
            if not live:
                break
        return [cut_at_stop(self.tok_decode(g), until, None) for g in gen]
