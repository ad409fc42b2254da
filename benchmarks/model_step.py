"""Training-step time of our decoder relative to Hugging Face `transformers` on the same weights.

For each family, a small model is built by us, exported, and loaded by transformers; both run the
same forward + backward on the same batch. Prints our time / their time (lower is better, 1.00 is
parity) so regressions in the model code show up as a ratio, not an absolute time.

    python benchmarks/model_step.py [--steps 10] [--seq-len 256] [--batch 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
import transformers

from model_zoo import build_model, get_model_config
from model_zoo.hf import export_hf

SHAPE = dict(
    vocab_size=8192, d_model=256, n_layers=4, n_heads=8, ffn_hidden_size=1024, max_seq_len=1024
)


def _time_steps(step, steps: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]  # median: robust to a noisy shared machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(
        f"forward+backward, batch {args.batch} x seq {args.seq_len}, fp32, "
        f"{torch.get_num_threads()} threads, median of {args.steps}"
    )
    print(f"{'family':<10} {'ours ms':>9} {'transformers ms':>16} {'ours/theirs':>12}")
    for zoo_name in ("pythia-tiny", "olmo2-tiny", "llama3-tiny"):
        cfg = replace(get_model_config(zoo_name), **SHAPE).validate()
        ours = build_model(cfg, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            export_hf(cfg, ours.state_dict(), tmp)
            theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp)
        tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
        x, y = tokens[:, :-1], tokens[:, 1:]

        def our_step():
            loss = F.cross_entropy(ours(x).flatten(0, 1), y.flatten())
            loss.backward()
            ours.zero_grad(set_to_none=True)

        def their_step():
            loss = F.cross_entropy(theirs(x).logits.flatten(0, 1), y.flatten())
            loss.backward()
            theirs.zero_grad(set_to_none=True)

        t_ours = _time_steps(our_step, args.steps)
        t_theirs = _time_steps(their_step, args.steps)
        print(
            f"{cfg.family:<10} {t_ours * 1e3:>9.1f} {t_theirs * 1e3:>16.1f} {t_ours / t_theirs:>12.2f}"
        )


if __name__ == "__main__":
    main()
