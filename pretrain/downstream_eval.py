"""Downstream evaluation in the training loop: `eval.downstream.tasks=[...]`.

At every checkpoint-series step the run evaluates lm-eval tasks (the `lm-eval` package: its task
building, prompts, metrics and aggregation) with the training engine's own forward, so it works
under every layout validation does (TP, PP, FSDP/HSDP, EP, CP):

  * the tasks are loaded once, before any process group (`prepare_downstream`, called from the
    trainer's preflight: an unknown task, a missing tokenizer or a generation task is a
    ConfigError there), with the run's tokenizer (its token data's metadata.json), the same one
    `pretrain analyze downstream` uses; each request's tokens are encoded once and kept;
  * every rank runs lm-eval's `evaluate` on the same requests in the same order (lm-eval's
    instances are rebuilt from the loaded documents each time, which is cheap); `EngineLM` packs
    the loglikelihood requests into global batches of the training shape and scores them with
    `Engine.eval_label_scores` (the forward-only path of validation, per sequence, the same on
    every rank), so the model-parallel ranks run it together and rank 0 holds every score;
  * rank 0 aggregates with lm-eval (bootstrap stderrs included) and writes what `analyze
    downstream` writes, under RUN_DIR/analysis/downstream_in_loop/ (steps/stepN.TASK.json,
    downstream.csv / .jsonl, downstream_TASK.png, samples/ with eval.downstream.log_samples),
    and logs `downstream/<task>/<metric>` (and `.../stderr`) with the step to metrics.jsonl,
    TensorBoard and W&B, and one console line.

The figures of a step are those of `pretrain analyze downstream` on that step's series checkpoint
(tests/pretrain/test_downstream_in_loop.py: equal within float64 rounding in a float64 run, one
process and TP2 x DP2). In a mixed-precision run the loop scores with the training precision and
the post-hoc command with the series dtype, so they differ by that rounding.

lm-eval's seeds (those `analyze downstream` passes) are set around each task and the trainer's
RNG states restored afterwards, so the training trajectory is the same with and without it.
Generation tasks (`generate_until`) are refused: greedy decoding one token per forward through
the pipeline schedule is left to `pretrain analyze downstream`.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from configcore import ConfigError
from parallel.engine import IGNORE_INDEX
from pretrain.callbacks import Callback, TrainState

OUT_NAME = "downstream_in_loop"  # RUN_DIR/analysis/<OUT_NAME>, next to analyze's `downstream`


@dataclass
class DownstreamSuite:
    """The loaded tasks ({name: lm-eval's task dict of that task alone}) and the tokenizer."""

    tasks: dict[str, dict]
    tokenizer: object


def prepare_downstream(run) -> DownstreamSuite:
    """Everything that needs no process group: task names resolved and loaded, the tokenizer."""
    from pretrain.analysis.downstream import (
        _quiet_lm_eval,
        parse_tasks,
        run_hf_tokenizer,
        task_manager,
    )

    cfg = run.eval.downstream
    _quiet_lm_eval()
    names = parse_tasks(",".join(cfg.tasks))
    manager = task_manager(names, cfg.include_path or None, "eval.downstream.include_path")
    tokenizer = run_hf_tokenizer(run, run.model)
    if tokenizer is None:
        raise ConfigError(
            "eval.downstream needs the run's tokenizer, and the token data in data.paths has no "
            "metadata.json naming it; tokenize with `pretrain data` (it writes one)"
        )
    tasks = {}
    for name in names:
        loaded = manager.load([name])
        generating = [
            t
            for t, obj in loaded["tasks"].items()
            if obj.get_config("output_type") == "generate_until"
        ]
        if generating:
            raise ConfigError(
                f"eval.downstream.tasks: {', '.join(generating)} generate text (generate_until), "
                "which the training loop does not run; evaluate it on the series afterwards with "
                "`pretrain analyze downstream`, or drop it here"
            )
        tasks[name] = loaded
    return DownstreamSuite(tasks, tokenizer)


def _adjust_tasks(loaded: dict, num_fewshot: int | None, fewshot_seed: int) -> None:
    """What lm-eval's simple_evaluate does to the loaded tasks before `evaluate`: the few-shot
    count (a task whose config says 0 keeps 0; none given and none in the config: 0) and the
    few-shot sampler's seed, reset each time so every step sees the same examples."""
    for obj in loaded["tasks"].values():
        if num_fewshot is not None:
            if obj.get_config("num_fewshot") != 0:
                obj.set_config(key="num_fewshot", value=num_fewshot)
        elif obj.get_config("num_fewshot") is None:
            obj.set_config(key="num_fewshot", value=0)
        obj.set_fewshot_seed(seed=fewshot_seed)


def _engine_lm_class():
    from pretrain.analysis.decoder_lm import DecoderLM  # imports lm-eval: only when used

    class EngineLM(DecoderLM):
        """`DecoderLM` (its tokenization and rolling windows, lm-eval's conventions) with the
        loglikelihoods computed by the parallel engine: requests in global batches of the
        training shape (each rank passes its data-parallel slice), right-padded to seq_len
        with unscored positions."""

        def __init__(self, engine, tokenizer, seq_len: int):
            super(DecoderLM, self).__init__()  # TemplateLM's: DecoderLM's takes a model
            if tokenizer.eos_token_id is None:
                raise ConfigError("the run's tokenizer names no eos token (pretrain/tokenizer.py)")
            self.engine, self.tokenizer = engine, tokenizer
            self.max_length, self.max_gen_toks = seq_len, 0
            self.batch_size = engine.dp_size * engine.layout.local_batch_size
            self.progress = False
            self.forwards = 0
            self._encoded: dict[tuple[str, bool | None], list[int]] = {}

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw):
            key = (string, add_special_tokens)  # each request is tokenized once per run
            if key not in self._encoded:
                self._encoded[key] = super().tok_encode(string, add_special_tokens)
            return self._encoded[key]

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
            eng, width = self.engine, self.max_length
            local = eng.layout.local_batch_size
            lo = eng.dp_rank * local
            order = sorted(
                range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2])
            )
            out: list[tuple[float, bool] | None] = [None] * len(requests)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                inputs = torch.zeros(self.batch_size, width, dtype=torch.long)
                labels = torch.full((self.batch_size, width), IGNORE_INDEX, dtype=torch.long)
                for row, i in enumerate(chunk):
                    _, ctx, cont = requests[i]
                    if not ctx or not cont:
                        raise ValueError("a loglikelihood request needs context and continuation")
                    seq = torch.tensor((ctx + cont)[-(width + 1) :], dtype=torch.long)
                    n = len(seq) - 1
                    k = min(len(cont), n)  # the continuation's positions: the row's last k
                    inputs[row, :n] = seq[:-1]
                    labels[row, n - k : n] = seq[-k:]
                self.forwards += 1
                scores = eng.eval_label_scores(inputs[lo : lo + local], labels[lo : lo + local])
                for row, i in enumerate(chunk):
                    out[i] = (float(scores[row, 0]), bool(scores[row, 1] == 0))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise ConfigError("generate_until does not run in the training loop")

    return EngineLM


class _Seeded:
    """lm-eval's seeds inside, the trainer's RNG states (and DISABLE_MULTIPROC) restored after.
    DISABLE_MULTIPROC: lm-eval's bootstrap otherwise forks a process pool from a training
    process (its single-process path draws the same resamples: the same seeds per chunk)."""

    def __enter__(self):
        self.states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.env = os.environ.get("DISABLE_MULTIPROC")
        os.environ["DISABLE_MULTIPROC"] = "1"
        return self

    def seed(self, seeds: dict) -> None:
        random.seed(seeds["random_seed"])
        np.random.seed(seeds["numpy_random_seed"])
        torch.manual_seed(seeds["torch_random_seed"])

    def __exit__(self, *exc):
        random.setstate(self.states[0])
        np.random.set_state(self.states[1])
        torch.set_rng_state(self.states[2])
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        if self.env is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = self.env
        return False


class DownstreamEval(Callback):
    """eval.downstream: the tasks at every series step (step 0 included); see the module doc."""

    def __init__(self, suite: DownstreamSuite, series: list[int], run_dir: Path) -> None:
        self.suite, self.series = suite, set(series)
        self.out = Path(run_dir) / "analysis" / OUT_NAME
        self.lm = None

    def on_fit_start(self, state: TrainState) -> None:
        if state.step == 0 and 0 in self.series:
            self.evaluate(state)

    def on_step_end(self, state: TrainState) -> None:
        if state.step in self.series:
            self.evaluate(state)

    def evaluate(self, state: TrainState) -> list[dict]:
        import lm_eval.evaluator

        from pretrain.analysis.downstream import SEEDS, TaskSteps, metric_rows, sample_records

        t0 = time.perf_counter()
        cfg, step = state.run.eval.downstream, state.step
        tokens = step * state.tokens_per_step
        if self.lm is None:
            self.lm = _engine_lm_class()(
                state.engine, self.suite.tokenizer, state.run.trainer.seq_len
            )
        limit = cfg.limit if 0 < cfg.limit < 1 else (int(cfg.limit) or None)
        fewshot = cfg.num_fewshot if cfg.num_fewshot >= 0 else None
        rows: list[dict] = []
        with _Seeded() as seeded:
            for task, loaded in self.suite.tasks.items():
                seeded.seed(SEEDS)  # as simple_evaluate does before each `analyze` task
                _adjust_tasks(loaded, fewshot, SEEDS["fewshot_random_seed"])
                task_t0, calls = time.perf_counter(), self.lm.forwards
                results = lm_eval.evaluator.evaluate(
                    lm=self.lm,
                    task_dict=loaded,
                    limit=limit,
                    # the other ranks only score: rank 0 aggregates and writes
                    bootstrap_iters=cfg.bootstrap_iters if state.rank0 else 0,
                    log_samples=cfg.log_samples,
                )
                if not state.rank0:
                    continue
                mine = metric_rows(step, tokens, task, results["results"][task])
                rows += mine
                if cfg.log_samples:
                    samples = sample_records(results["samples"][task])
                    path = self.out / "samples" / f"step{step}.{task}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
                TaskSteps(self.out, task).write(
                    step,
                    {
                        "tokens": tokens,
                        "task": task,
                        "rows": mine,
                        "seconds": round(time.perf_counter() - task_t0, 3),
                        "forwards": self.lm.forwards - calls,
                    },
                )
        if state.rank0:
            self._tables()
            state.metrics_logger.log_downstream(step, tokens, rows)
        state.metrics_logger.exclude(time.perf_counter() - t0)  # not training time
        return rows

    def _tables(self) -> None:
        """downstream.csv / .jsonl and one PNG per task over every step evaluated so far."""
        from pretrain.analysis.common import write_table
        from pretrain.analysis.downstream import all_rows, plot_task

        rows = all_rows(self.out)
        write_table(rows, self.out / "downstream.csv", self.out / "downstream.jsonl")
        for task in self.suite.tasks:
            if any(r["task"] == task for r in rows):
                plot_task(rows, task, self.out / f"downstream_{task}.png", "tokens")


__all__ = ["DownstreamEval", "DownstreamSuite", "prepare_downstream"]
