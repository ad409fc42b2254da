"""MoE feed-forward step time: grouped matmul vs per-expert loop vs Hugging Face's MoE block.

Same weights, same tokens, forward + backward of one MoE layer on CPU (fp32). Prints each time
relative to transformers' Mixtral sparse-MoE block measured in the same run (lower is better).

    python benchmarks/moe_experts.py [--tokens 4096] [--experts 8] [--top-k 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import transformers

from model_zoo import get_model_config
from model_zoo.moe import MoE


def median_time(fn, steps: int) -> float:
    fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    base = get_model_config("mixtral-tiny")
    cfg = replace(
        base,
        d_model=args.d_model,
        n_heads=4,
        n_kv_heads=2,
        moe=replace(
            base.moe, n_experts=args.experts, top_k=args.top_k, expert_hidden_size=args.hidden
        ),
    ).validate()
    x = torch.randn(1, args.tokens, args.d_model)

    hf_cfg = transformers.MixtralConfig(
        hidden_size=args.d_model,
        intermediate_size=args.hidden,
        num_local_experts=args.experts,
        num_experts_per_tok=args.top_k,
    )
    hf_cfg._experts_implementation = "eager"  # the per-expert loop of modeling_mixtral.py
    hf_block = transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(hf_cfg)
    with torch.no_grad():
        for p in hf_block.parameters():
            p.normal_(0, 0.05)
    ours = {}
    for grouped in (True, False):
        moe = MoE(replace(cfg, moe=replace(cfg.moe, grouped_mm="auto" if grouped else "off")))
        with torch.no_grad():  # the same weights as the HF block
            moe.router.gate.weight.copy_(hf_block.gate.weight)
            gate, up = hf_block.experts.gate_up_proj.chunk(2, dim=1)
            moe.experts.w1.copy_(gate)
            moe.experts.w3.copy_(up)
            moe.experts.w2.copy_(hf_block.experts.down_proj)
        ours["grouped_mm" if grouped else "loop"] = moe

    def step(module):
        def run():
            out = module(x)
            out = out[0] if isinstance(out, tuple) else out
            out.square().mean().backward()
            module.zero_grad(set_to_none=True)

        return run

    with torch.no_grad():
        ref = hf_block(x)
        ref = ref[0] if isinstance(ref, tuple) else ref
        diff = max((ours[k](x) - ref).abs().max().item() for k in ours)
    t_hf = median_time(step(hf_block), args.steps)
    print(
        f"MoE layer fwd+bwd, {args.tokens} tokens, d={args.d_model}, hidden={args.hidden}, "
        f"{args.experts} experts top-{args.top_k}, fp32, {torch.get_num_threads()} threads; "
        f"max |output diff| vs transformers {diff:.1e}"
    )
    print(f"{'implementation':<26} {'ms':>8} {'/ transformers':>15}")
    print(f"{'transformers Mixtral block':<26} {t_hf * 1e3:>8.1f} {1.0:>15.2f}")
    for name, module in ours.items():
        t = median_time(step(module), args.steps)
        print(f"{'ours, ' + name:<26} {t * 1e3:>8.1f} {t / t_hf:>15.2f}")


if __name__ == "__main__":
    main()
