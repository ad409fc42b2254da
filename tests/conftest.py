import os
import platform
from pathlib import Path

import pytest
import torch

# One intra-op thread for every test and every process a test starts, whichever subset runs, unless
# TEST_THREADS says otherwise (`TEST_THREADS=2 make test` runs the suite on 2 threads). The CI box
# has 2 cores shared by every test, so more threads only oversubscribe. The float64 parity claims
# do not depend on the count (tests/parallel/test_parity_numerics.py checks 1 against 2); the bitwise
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


# `make test` runs the suite on every core with pytest-xdist (`-n auto --dist loadfile`): on a
# 2-core machine the single-process tests use one thread each, so a second worker uses the idle
# core. A worker takes a whole test file at a time (its module-scoped fixtures run once, and
# tests/test_docs.py's commands run in the order the docs give them). Every file that uses the
# session's Slurm cluster goes to one worker, first: one cluster, started once (two would compete
# for the same cores), and its jobs, which mostly wait, overlap the other worker's files instead
# of running alone at the end. Such files live under tests/slurm/, whose conftest.py defines the
# cluster fixture (a copy imported elsewhere would start a second cluster): the scheduler sees
# only test ids, and pytest_collection_modifyitems holds files to that rule.
SLURM_GROUP = "slurm-cluster"
# The parity files (tests/parallel/test_parity*.py: multi-rank launches, minutes) also run as one
# unit on one worker: measured, two of them at once on 2 cores (8 ranks) took 1327 s for the
# suite against 1014 s with them in one file, as the ranks slow each other more than the second
# worker gains (docs/benchmarks.md "Test suite").
PARITY_GROUP = "parallel-parity"


def _uses_slurm_cluster(path: str) -> bool:
    return path.startswith("tests/slurm/")


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist, pytest ignores it
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core this process may run on (taskset's set, not the machine's
    cores as psutil counts them), so `taskset -c 0 make test` runs one worker."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesSlurmFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if _uses_slurm_cluster(path):
                return SLURM_GROUP
            return PARITY_GROUP if path.startswith("tests/parallel/test_parity") else path

        def _assign_work_unit(self, node) -> None:
            if SLURM_GROUP in self.workqueue:  # the queue is ordered; the first unit goes first
                self.workqueue.move_to_end(SLURM_GROUP, last=False)
            super()._assign_work_unit(node)

    return FilesSlurmFirst(config, log)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: minutes-long multi-process run; PARALLEL_SLOW=1 runs it"
    )


def pytest_collection_modifyitems(config, items):
    """Slow tests (each spawns up to 8 processes for minutes on a 2-core machine) run only with
    PARALLEL_SLOW=1; a test in the default run covers each one's claim (its docstring names it).
    Every file that uses the Slurm cluster is where the xdist scheduler looks for it."""
    skip_slow = os.environ.get("PARALLEL_SLOW") != "1"
    skip = pytest.mark.skip(reason="slow multi-process run; set PARALLEL_SLOW=1")
    for item in items:
        if skip_slow and "slow" in item.keywords:
            item.add_marker(skip)
        if "slurm_cluster" in item.fixturenames and not _uses_slurm_cluster(
            item.nodeid.split("::")[0]
        ):
            raise pytest.UsageError(
                f"{item.nodeid} uses the Slurm cluster: put its file under tests/slurm/, so "
                "it shares the session's one cluster and `make test` runs it on the cluster's "
                "worker (tests/conftest.py)"
            )
