#!/usr/bin/env bash
# The GPU path in one command, on one H100/H200, in under 8 minutes:
#   1. the parity tests' single-device cases on CUDA/NCCL against the CPU reference
#      (dense Llama, packed documents through FlexAttention, DeepSeek-V3 MoE + MLA);
#   2. 50 steps of a small model in bf16 and in FP8 (tensorwise, rowwise): FP8's last loss
#      within 1% of bf16's;
#   3. throughput of OLMo2-1B at seq 4096, bf16 and FP8 (tensorwise, torchtitan's auto-filter),
#      torch.compile on: tokens/s, TFLOP/s, MFU against the datasheet peak and a bf16 GEMM;
#   4. OUT/summary.json and OUT/summary.md (the table for docs/benchmarks.md);
#   5. with >= 2 GPUs only: context parallel cp=2 in both styles (ring: torch's context_parallel,
#      which has no CPU path; alltoall: DeepSpeed-Ulysses over NCCL) against the CPU reference
#      (about 1 minute). One GPU holds one cp shard, so a 1-GPU run checks cp=1 only (step 1)
#      and says that it skipped this step.
#
#   benchmarks/gpu_acceptance.sh [OUT_DIR]     (default: acceptance-<date>; PYTHON=... to choose)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python; fi
OUT=${1:-acceptance-$(date -u +%Y%m%d-%H%M%S)}

# one interpreter start: 3 = no torch there, 1 = torch without a CUDA device
"$PY" -c "
import sys
try:
    import torch
except ImportError:
    sys.exit(3)
sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
case $? in
    0) ;;
    3) echo "gpu_acceptance.sh: $PY cannot import torch; set PYTHON to the project's" \
            "interpreter" >&2
       exit 2 ;;
    *) echo "gpu_acceptance.sh: needs a CUDA GPU (one H100/H200); torch.cuda.is_available()" \
            "is False here, so nothing was run" >&2
       exit 2 ;;
esac
mkdir -p "$OUT"
start=$SECONDS
failed=0
step() {  # name, command...: run it, keep its log, remember a failure and go on
    local name=$1
    shift
    echo "== $name ($((SECONDS - start)) s)"
    "$@" 2>&1 | tee "$OUT/$name.log" || failed=1
}
step parity "$PY" -m benchmarks.gpu_checks parity --json "$OUT/parity.json"
step fp8_loss "$PY" -m benchmarks.gpu_checks fp8-loss --steps 50 --json "$OUT/fp8_loss.json"
for precision in bf16 fp8_tensorwise; do
    step "throughput_$precision" "$PY" -m benchmarks.train_throughput --model olmo2-1b \
        --seq-len 4096 --micro-batch 2 --precision "$precision" --fp8-filter auto --compile \
        --warmup 5 --steps 15 --json "$OUT/throughput_$precision.json"
done
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$gpus" -ge 2 ]; then
    step cp_parity "$PY" -m torch.distributed.run --nproc-per-node=2 -m benchmarks.cp_ring_parity \
        --json "$OUT/cp_parity.json"
else
    echo "== cp_parity skipped: context parallel (parallel.cp_style=ring) needs 2 GPUs for cp=2;" \
        "this machine has $gpus, so only cp=1 was checked (parity step)"
fi
"$PY" -m benchmarks.acceptance_summary "$OUT"
echo "gpu_acceptance.sh: $((SECONDS - start)) s; results in $OUT"
exit $failed
