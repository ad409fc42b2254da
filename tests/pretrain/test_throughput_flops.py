"""The FLOP accounting of benchmarks/train_throughput.py (the numerator of its MFU,
`pretrain.metrics.flops_accounting`) against hand counts from the published architectures, and
the benchmark itself on CPU (a tiny model, run as the script it is: tests never import benchmarks).

Convention (stated by the benchmark): training FLOPs per token = 6 x (active non-embedding
parameters + the output projection) + attention score and value matmuls counted in full, not
halved for causality: 3 (forward + backward) x 2 x seq x (qk_dim + v_dim) per head and layer.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_zoo.zoo import get_model_config
from pretrain import acceptance
from pretrain.metrics import flops_accounting
from pretrain.parity import gpu_checks

ROOT = Path(__file__).resolve().parents[2]


def train_throughput(args: list[str]) -> str:
    """benchmarks/train_throughput.py run as a script; its stdout."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), *args],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_llama_3_1_8b_at_seq_8192():
    """Llama-3.1-8B (Meta's config.json): d 4096, 32 layers, 32 query / 8 KV heads of 128,
    SwiGLU hidden 14336, vocabulary 128256, untied output, RMSNorm weights."""
    d, layers, heads, kv, hd, ffn, vocab, seq = 4096, 32, 32, 8, 128, 14336, 128256, 8192
    attention_weights = d * heads * hd * 2 + d * kv * hd * 2  # wq, wo; wk, wv
    per_layer = attention_weights + 3 * d * ffn + 2 * d  # + w1, w2, w3 and two norms
    non_embedding = layers * per_layer + d + vocab * d  # + final norm + output layer
    assert non_embedding + vocab * d == 8_030_261_248  # Meta's published count, "8B"
    matmul = 6 * non_embedding
    attention = 3 * 2 * seq * (hd + hd) * heads * layers
    got = flops_accounting(get_model_config("llama3.1-8b"), seq)
    assert got["matmul_flops_per_token"] == matmul == 45_029_548_032
    assert got["attention_flops_per_token"] == attention == 12_884_901_888
    assert got["flops_per_token"] == matmul + attention


def test_deepseek_v3_active_parameters_and_mla():
    """DeepSeek-V3 (its config.json): d 7168, 61 layers, the first 3 dense (hidden 18432), then
    MoE: 256 routed experts of hidden 2048, top 8, one shared expert, a 256 x 7168 router.
    MLA with 128 heads: q_lora 1536, kv_lora 512, qk_nope 128 + qk_rope 64, v 128. Vocabulary
    129280, untied. The paper's figures: 671B total, 37B activated per token."""
    d, layers, dense_layers, vocab, seq = 7168, 61, 3, 129280, 4096
    heads, q_lora, kv_lora, nope, rope, v = 128, 1536, 512, 128, 64, 128
    mla = (
        d * q_lora  # wq_a
        + q_lora  # q latent norm
        + q_lora * heads * (nope + rope)  # wq_b
        + d * (kv_lora + rope)  # wkv_a: latent and the shared rope key
        + kv_lora  # kv latent norm
        + kv_lora * heads * (nope + v)  # wkv_b
        + heads * v * d  # wo
    )
    expert = 3 * d * 2048
    moe_layers = layers - dense_layers
    total = (
        2 * vocab * d  # embedding and output
        + d  # final norm
        + layers * (mla + 2 * d)
        + dense_layers * 3 * d * 18432
        + moe_layers * (256 * expert + expert + 256 * d)  # routed, shared, router
    )
    active_non_embedding = total - vocab * d - moe_layers * (256 - 8) * expert
    assert round(total / 1e9) == 671 and 37e9 < active_non_embedding + vocab * d < 38e9
    matmul = 6 * active_non_embedding  # the output layer is among them (untied)
    attention = 3 * 2 * seq * ((nope + rope) + v) * heads * layers
    got = flops_accounting(get_model_config("deepseek-v3"), seq)
    assert got["total_parameters"] == total
    assert got["active_parameters"] == active_non_embedding + vocab * d
    assert got["matmul_flops_per_token"] == matmul
    assert got["attention_flops_per_token"] == attention
    assert got["flops_per_token"] == matmul + attention


def test_benchmark_runs_on_cpu(tmp_path):
    out = tmp_path / "r.json"
    printed = train_throughput(
        ["--model", "llama3-tiny", "--seq-len", "64", "--warmup", "1", "--steps", "2"]
        + ["--precision", "fp32", "--gemm-size", "256", "--json", str(out)]
    )
    result = json.loads(out.read_text())
    flops = flops_accounting(get_model_config("llama3-tiny"), 64)["flops_per_token"]
    assert result["tokens_per_s_per_device"] > 0 and result["gemm_bf16_tflops"] > 0
    tflops = result["tokens_per_s_per_device"] * flops / 1e12
    assert abs(result["tflops_per_device"] - tflops) <= 1e-9 * tflops  # float64 products
    assert result["mfu"] is None  # no datasheet peak for a CPU: not made up
    assert result["mfu_vs_gemm"] == result["tflops_per_device"] / result["gemm_bf16_tflops"]
    assert "tok/s/device" in printed


def test_acceptance_script_without_cuda_and_its_summary(tmp_path):
    """gpu_acceptance.sh cannot run here: it says so and exits 2 before running anything. Its
    plain-Python parts run: gpu_checks' argument parsing and CUDA refusal, and the summary
    writer on real throughput results (this CPU's, of the tiny model) with the other checks
    missing, which it reports as not run rather than guessing."""
    script = ROOT / "benchmarks" / "gpu_acceptance.sh"
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "acc")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
    assert not (tmp_path / "acc").exists()
    assert gpu_checks.parse_args(["fp8-loss"]).steps == 50
    assert gpu_checks.parse_args(["parity"]).steps == 10
    with pytest.raises(SystemExit) as err:
        gpu_checks.main(["parity"])
    assert err.value.code == 2
    # the command line gpu_acceptance.sh runs is these checks' main
    refused = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_checks.py"), "parity"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "needs a CUDA device" in refused.stderr
    out = tmp_path / "out"
    out.mkdir()
    train_throughput(
        ["--model", "llama3-tiny", "--seq-len", "64", "--warmup", "1", "--steps", "2"]
        + ["--precision", "bf16", "--gemm-size", "256", "--json", str(out / "throughput_bf16.json")]
    )
    acceptance.main([str(out)])
    summary = json.loads((out / "summary.json").read_text())
    bf16 = summary["throughput"]["bf16"]
    assert bf16 == json.loads((out / "throughput_bf16.json").read_text())
    assert summary["throughput"]["fp8"] is None and summary["fp8_speedup"] is None
    assert summary["goals"]["parity on CUDA"] is None  # not run, not guessed
    assert summary["goals"]["bf16 MFU above 55%"] is None  # no datasheet peak for a CPU
    table = (out / "summary.md").read_text()
    assert f"| {bf16['tokens_per_s_per_device']:,.0f} |" in table
    assert "FP8 / bf16 tokens/s: not run" in table
    assert "| parity on CUDA | not run |" in table
    assert "| context parallel cp=2 (ring, alltoall) on CUDA | not run |" in table
    # a 2-GPU run's cp parity file is read: its cases and its goal reach the summary
    case = {"case": "cp=2 ring", "loss": 1e-7, "grad_norm": 2e-6, "params": 3e-6, "pass": False}
    cp = {"check": "cp_parity", "tolerance": 1e-4, "cases": [case], "pass": False}
    (out / "cp_parity.json").write_text(json.dumps(cp))
    # this time through its command line (benchmarks/acceptance_summary.py)
    summarized = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "acceptance_summary.py"), str(out)],
        capture_output=True,
        text=True,
    )
    assert summarized.returncode == 0, summarized.stderr
    table = (out / "summary.md").read_text()
    assert "- parity cp=2 ring: loss 1.0e-07, grad norm 2.0e-06, params 3.0e-06" in table
    assert "| context parallel cp=2 (ring, alltoall) on CUDA | NO |" in table
