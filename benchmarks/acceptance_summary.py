"""The summary of benchmarks/gpu_acceptance.sh: its result files in, summary.json and summary.md
out (pretrain/acceptance.py, where the tests read it too; this is its command line):

    python benchmarks/acceptance_summary.py OUT_DIR
"""

from pretrain.acceptance import main

if __name__ == "__main__":
    main()
