"""The correctness parts of benchmarks/gpu_acceptance.sh on one CUDA device: parity of the
single-device cases against the CPU reference, and FP8's last loss against bf16's. The checks
live in pretrain/parity/gpu_checks.py (the tests import them from there); this is their command
line:

    python benchmarks/gpu_checks.py parity --json parity.json
    python benchmarks/gpu_checks.py fp8-loss --steps 50 --json fp8_loss.json
"""

from pretrain.parity.gpu_checks import main

if __name__ == "__main__":
    main()
