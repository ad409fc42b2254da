import os
import platform
from pathlib import Path

import torch

# One intra-op thread for every test, whichever subset runs. The CI box has 2 cores shared by every
# test, so more threads only oversubscribe; and numbers depend on the thread count (a reduction
# split over 2 threads sums in another order): the bitwise-resume comparisons need the same count
# in every run, and the parity references (tests/parallel) must sum like the worker processes,
# which run with OMP_NUM_THREADS=1. Before this lived at the root, running tests/parallel alone
# used 2 threads and the full suite 1, and a reference calm under one count drifted under the other.
torch.set_num_threads(1)


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
