"""Requests per second of our lm-eval LM (`DecoderLM`, pretrain/analysis/decoder_lm.py) against
lm-eval's own `hf` model on the same requests, in the same run.

A BPE is trained on the bundled man pages (the `tokenizers` library, as `pretrain data` trains
one), a Llama-shaped decoder is initialised with our model code and exported with `export_hf`
(the folder lm-eval's `hf` model reads, tokenizer included); lm-eval builds the requests of three
local tasks written from other man pages (a cloze task and a multiple-choice task, both
`loglikelihood`, and a `loglikelihood_rolling` task; pretrain/analysis/text_tasks.py). Each model
then scores exactly those request lists, the two timed alternately `--repeats` times (best of
each: a shared machine slows both alike), same batch size, same context length, same dtype.
Prints requests/s of each, ours / theirs, and the largest relative difference of the scores.

    python benchmarks/downstream_lm.py [--docs 48] [--batch-size 16] [--d-model 256] \
        [--layers 4] [--vocab 4096] [--seq-len 256] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from model_zoo import build_model, get_model_config
from model_zoo.hf import export_hf
from pretrain.analysis.decoder_lm import DecoderLM
from pretrain.analysis.text_tasks import write_text_tasks
from pretrain.tokenizer import write_tokenizer_folder

SAMPLES = Path(__file__).resolve().parents[1] / "data_pipeline" / "samples" / "manpages_en.jsonl.gz"
EOS = "<|endoftext|>"


def train_bpe(texts: list[str], vocab: int, path: Path) -> Path:
    """A byte-level BPE on the texts (Hugging Face `tokenizers`, what `pretrain data` uses)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(texts, trainer)
    tk.save(str(path))
    return path


def requests_of(tasks_dir: Path, names: list[str], docs: int) -> dict[str, list]:
    """lm-eval's own request building for the tasks: {request type: [Instance]}."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    by_type: dict[str, list] = {}
    for task in manager.load(names)["tasks"].values():
        task.set_config(key="num_fewshot", value=0)
        task.build_all_requests(limit=docs, rank=0, world_size=1)
        for inst in task.instances:
            by_type.setdefault(inst.request_type, []).append(inst)
    return by_type


def score(lm, by_type: dict[str, list]) -> tuple[float, list[float]]:
    """Seconds to score every request with `lm`, and the log-likelihoods in request order."""
    t0 = time.perf_counter()
    out: list[float] = []
    for kind, reqs in by_type.items():
        for r in getattr(lm, kind)(reqs, disable_tqdm=True):
            out.append(r[0] if isinstance(r, tuple) else r)
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=48, help="documents per task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for name in ("lm-eval", "lm_eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    with gzip.open(SAMPLES, "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    tmp = Path(tempfile.mkdtemp(prefix="downstream-bench-"))
    tok_path = train_bpe(texts[:200], args.vocab, tmp / "tokenizer.json")
    names = [f"man_{k}" for k in ("cloze", "mc", "rolling")]
    write_text_tasks(texts[200:], tmp / "tasks", n=args.docs, kinds=["cloze", "mc", "rolling"])
    cfg = replace(
        get_model_config("llama3-tiny"),
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=max(1, args.d_model // 64),
        n_kv_heads=max(1, args.d_model // 128),
        ffn_hidden_size=4 * args.d_model,
        max_seq_len=args.seq_len,
        eos_token_id=0,  # EOS is the BPE's first token
        bos_token_id=None,
    ).validate()
    model = build_model(cfg, seed=0).eval().to(args.device)
    hf_dir = export_hf(cfg, model.state_dict(), tmp / "hf")
    write_tokenizer_folder(tok_path, hf_dir, cfg)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    by_type = requests_of(tmp / "tasks", names, args.docs)
    n = sum(len(v) for v in by_type.values())
    ours = DecoderLM(model, tokenizer, args.batch_size, args.seq_len, progress=False)
    theirs = HFLM(
        pretrained=str(hf_dir),
        device=args.device,
        batch_size=args.batch_size,
        dtype="float32",
        max_length=args.seq_len,
    )
    print(
        f"{n} requests ({', '.join(f'{len(v)} {k}' for k, v in by_type.items())}), model "
        f"d_model {args.d_model} x {args.layers} layers, vocab {args.vocab}, context "
        f"{args.seq_len}, batch {args.batch_size}, fp32 on {args.device}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    best = {"ours": float("inf"), "hf": float("inf")}
    for k in range(args.repeats):  # alternate, so drift on a shared machine hits both
        t_ours, s_ours = score(ours, by_type)
        t_hf, s_hf = score(theirs, by_type)
        best["ours"], best["hf"] = min(best["ours"], t_ours), min(best["hf"], t_hf)
        print(f"  repeat {k + 1}: ours {n / t_ours:.1f} requests/s, hf {n / t_hf:.1f} requests/s")
    diff = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(s_ours, s_hf, strict=True))
    rate = {k: n / v for k, v in best.items()}
    print(
        f"ours (DecoderLM) {rate['ours']:.1f} requests/s, lm-eval hf {rate['hf']:.1f} "
        f"requests/s: ours / hf = {rate['ours'] / rate['hf']:.2f}; scores agree to "
        f"{diff:.1e} relative"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
