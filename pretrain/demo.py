"""`make demo`: everything that exists so far, end to end, on bundled real text.

1. Read the bundled sample (Debian man pages as Dolma documents) and train a byte-level BPE
   tokenizer on it with Hugging Face `tokenizers`.
2. For the tiny model of each family (Pythia/GPT-NeoX, OLMo-2, Llama-3): build it from the zoo,
   run it on the real text (its loss at initialisation is ~ln(vocab)), save a checkpoint of ours.
3. `pretrain export-hf` the checkpoint with the tokenizer, load it with `transformers`
   (AutoModelForCausalLM + AutoTokenizer), compare logits, and generate a few tokens greedily with
   both implementations: the tokens must agree.

4. Tokenize the text into Megatron .bin/.idx shards (megatron-core's builder), train the Llama-3
   tiny model on them with `pretrain train`'s loop for a few dozen steps, keeping a checkpoint
   series (step 0, 1, 2, 4, ..., and the last), export one series step with
   `pretrain export-hf RUN_DIR --step N`, check it in `transformers`, and rebuild the batch of one
   step with `pretrain analyze batch`.

Output lands in --out (default demo_out/).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from model_zoo import build_model, get_model_config
from pretrain.checkpoint import save_weights
from pretrain.config import RunConfig
from pretrain.export import export_checkpoint_to_hf

SAMPLE = (
    Path(__file__).resolve().parent.parent / "data_pipeline" / "samples" / "manpages_en.jsonl.gz"
)
FAMILIES = ("pythia-tiny", "olmo2-tiny", "llama3-tiny")
EOS = "<|endoftext|>"


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_documents(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def train_tokenizer(texts: list[str], vocab_size: int, out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": EOS,
                "bos_token": EOS,
                "model_max_length": 256,
            },
            indent=2,
        )
    )
    return out


@torch.no_grad()
def greedy(model, tokens: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding without a KV cache: simple, and exactly what the logits say."""
    for _ in range(new_tokens):
        next_id = model(tokens)[:, -1, : model.cfg.vocab_size].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_id], dim=1)
    return tokens


def run_family(name: str, tokenizer_dir: Path, token_ids: list[int], out: Path) -> dict:
    import transformers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos_id = tok.token_to_id(EOS)
    cfg = replace(
        get_model_config(name),
        vocab_size=tok.get_vocab_size(),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    ).validate()
    model = build_model(cfg, seed=0).eval()
    seq = min(cfg.max_seq_len, 128)
    batch = torch.tensor(token_ids[: 4 * (seq + 1)]).view(4, seq + 1)
    with torch.no_grad():
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).item()
    log(
        f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, loss on real text "
        f"{loss:.3f} at initialisation (ln vocab = {math.log(cfg.padded_vocab_size):.3f})"
    )

    ckpt = save_weights(
        out / name / "checkpoint", model.state_dict(), RunConfig(model=cfg), overwrite=True
    )
    hf_dir = export_checkpoint_to_hf(
        ckpt, out / name / "hf", tokenizer=str(tokenizer_dir), overwrite=True
    )
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    prompt = "The ls command lists"
    prompt_ids = torch.tensor([hf_tok(prompt)["input_ids"]])
    with torch.no_grad():
        diff = (hf_model(batch[:, :-1]).logits - logits).abs().max().item()
    ours_gen = greedy(model, prompt_ids, 12)
    theirs_gen = hf_model.generate(
        prompt_ids, max_new_tokens=12, do_sample=False, pad_token_id=eos_id
    )
    same = torch.equal(ours_gen, theirs_gen)
    log(
        f"{name}: exported as {type(hf_model).__name__} -> {hf_dir}; max |logit diff| vs "
        f"transformers {diff:.2e}; greedy generation identical: {same}"
    )
    log(f"{name}: transformers generates {hf_tok.decode(theirs_gen[0])!r}")
    return {
        "model": name,
        "hf_class": type(hf_model).__name__,
        "loss_at_init": loss,
        "max_abs_logit_diff": diff,
        "generation_identical": same,
    }


def write_shards(
    texts: list[str], tok, eos_id: int, prefix: Path, docs_per_shard: int
) -> list[str]:
    """Megatron .bin/.idx shards with megatron-core's own builder (what `pretrain data` writes)."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    prefix.parent.mkdir(parents=True, exist_ok=True)
    encoded = [np.asarray(e.ids + [eos_id], dtype=np.uint16) for e in tok.encode_batch(texts)]
    prefixes = []
    for k in range(0, len(encoded), docs_per_shard):
        name = f"{prefix}-{k // docs_per_shard:04d}"
        builder = IndexedDatasetBuilder(name + ".bin", dtype=np.uint16)
        for arr in encoded[k : k + docs_per_shard]:
            builder.add_document(arr, [len(arr)])
        builder.finalize(name + ".idx")
        prefixes.append(name)
    return prefixes


def train_demo(
    texts: list[str], tok, eos_id: int, tokenizer_dir: Path, out: Path, steps: int
) -> dict:
    import shutil

    import transformers

    from pretrain.analyze import batch_of_step
    from pretrain.checkpoint import load_weights, read_index
    from pretrain.config import compose_config
    from pretrain.export import export_run_steps
    from pretrain.train import train

    shards = write_shards(texts, tok, eos_id, out / "tokens" / "manpages", docs_per_shard=100)
    log(
        f"tokenized {len(texts)} documents into {len(shards)} Megatron shards under {out / 'tokens'}"
    )
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run = compose_config(
        [
            "model=llama3-tiny",
            f"model.vocab_size={tok.get_vocab_size()}",
            f"model.eos_token_id={eos_id}",
            f"model.bos_token_id={eos_id}",
            "trainer.seq_len=64",
            "trainer.global_batch_size=16",
            "trainer.micro_batch_size=8",
            f"trainer.max_steps={steps}",
            "trainer.log_interval=5",
            "optim.lr=3e-3",
            "schedule.warmup_steps=5",
            f"data.paths=[{out / 'tokens'}]",
            "checkpoint.series=first+log2:1024+last",
            "checkpoint.series_dtype=float32",
            f"checkpoint.interval={max(1, steps // 2)}",
            f"run_dir={run_dir}",
        ]
    )
    log(f"training llama3-tiny for {steps} steps on the man pages -> {run_dir}")
    result = train(run, log=lambda m: log(m))
    losses = result["losses"]
    series = [e["step"] for e in read_index(run_dir) if e["kind"] == "weights"]
    step = max(s for s in series if s < steps)  # a series step inside the run, not the last
    log(
        f"loss {losses[1]:.3f} at step 1 -> {losses[steps]:.3f} at step {steps}; series steps "
        f"{series}; exporting step {step} with `pretrain export-hf {run_dir} --step {step}`"
    )
    (hf_dir,) = [
        p
        for _, p in export_run_steps(
            run_dir, out / "hf_series", [step], tokenizer=str(tokenizer_dir), overwrite=True
        )
    ]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ours = load_weights(run_dir / "series" / f"step{step}").eval()
    batch = torch.from_numpy(batch_of_step(run_dir, step + 1)["tokens"])
    with torch.no_grad():
        theirs = hf_model(batch[:, :-1]).logits
        diff = (theirs - ours(batch[:, :-1])[..., : theirs.shape[-1]]).abs().max().item()
        loss = F.cross_entropy(theirs.flatten(0, 1), batch[:, 1:].flatten()).item()
    log(
        f"{hf_dir}: transformers loss on the batch of step {step + 1} (from `pretrain analyze "
        f"batch`) {loss:.5f}, training logged {losses[step + 1]:.5f}; max |logit diff| {diff:.2e}"
    )
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    prompt = torch.tensor([hf_tok("The ls command lists")["input_ids"]])
    gen = hf_model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=eos_id)
    log(f"after {steps} steps, transformers generates {hf_tok.decode(gen[0])!r}")
    return {
        "model": "llama3-tiny (trained)",
        "steps": steps,
        "first_loss": losses[1],
        "final_loss": losses[steps],
        "series_steps": series,
        "exported_step": step,
        "hf_loss_on_next_batch": loss,
        "logged_loss_next_step": losses[step + 1],
        "max_abs_logit_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="pretrain demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--steps", type=int, default=40, help="training steps of the tiny model")
    args = ap.parse_args(argv)
    out = Path(args.out)
    texts = read_documents(SAMPLE)
    log(f"read {len(texts)} documents ({sum(map(len, texts)) / 1e6:.1f} MB) from {SAMPLE.name}")
    tokenizer_dir = train_tokenizer(texts, vocab_size=1024, out=out / "tokenizer")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos_id = tok.token_to_id(EOS)
    token_ids: list[int] = []
    for encoding in tok.encode_batch(texts[:40]):
        token_ids.extend(encoding.ids + [eos_id])
    log(
        f"trained a {tok.get_vocab_size()}-token BPE tokenizer; {len(token_ids):,} tokens from "
        "40 documents"
    )
    results = [run_family(name, tokenizer_dir, token_ids, out) for name in FAMILIES]
    trained = train_demo(texts, tok, eos_id, tokenizer_dir, out, steps=args.steps)
    results.append(trained)
    (out / "demo_results.json").write_text(json.dumps(results, indent=2))
    ok = all(r["max_abs_logit_diff"] < 1e-4 and r["generation_identical"] for r in results[:-1])
    ok = (
        ok
        and trained["max_abs_logit_diff"] < 1e-4
        and trained["final_loss"] < trained["first_loss"]
    )
    log(f"{'OK' if ok else 'MISMATCH'}: results in {out / 'demo_results.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
