import os
import platform
from pathlib import Path

import torch

# One intra-op thread for every test and every process a test starts, whichever subset runs, unless
# TEST_THREADS says otherwise (`TEST_THREADS=2 make test` runs the suite on 2 threads). The CI box
# has 2 cores shared by every test, so more threads only oversubscribe. The float64 parity claims
# do not depend on the count (tests/parallel/test_parity.py checks 1 against 2); the bitwise
# resume comparisons need the same count in every run of a test, hence one setting for all:
# OMP_NUM_THREADS is what the launched ranks and CLI runs read (as torchrun, which sets it to 1
# only where it is unset).
TEST_THREADS = int(os.environ.get("TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_report_header(config):
    """Which machine produced this report: a result that depends on the CPU's rounding or on
    the thread count shows here first."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"cpu: {_cpu_model()}; {cores} usable of {os.cpu_count()} logical cores",
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op thread(s) here, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
    ]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The same lines at the end, where `make test` (pytest -q, no header) still shows them."""
    if config.get_verbosity() < 0:
        terminalreporter.write_sep("-", "machine")
        for line in pytest_report_header(config):
            terminalreporter.write_line(line)
