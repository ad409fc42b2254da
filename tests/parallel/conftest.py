"""The single-process float64 references of the parity tests (tests/parallel/test_parity*.py),
each computed once per test session: under pytest-xdist the workers share them through the run's
common temporary folder (the first to need one computes it under a file lock, the others load
it). Loading equals recomputing: float64, seed 0, the suite's one thread count."""

import os

import pytest
import torch
from filelock import FileLock  # torch's own dependency; xdist's documented recipe for this

from model_zoo.zoo import get_model_config
from pretrain.parity.harness import reference_run
from tests.parallel.parity_cases import GBS, SEED, SEQ, STEPS, check_parity, dense_cfg


def shared_reference(tmp_path_factory, name, compute):
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: the session fixture suffices
        return compute()
    path = tmp_path_factory.getbasetemp().parent / f"parity-reference-{name}.pt"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            torch.save(compute(), path)
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def dense_ref(tmp_path_factory):
    """20 steps (the precision runs); parity runs compare with its first STEPS. Also measures the
    float64 floor of the claim: the same single process with the batch accumulated in
    micro-batches of 2 (nothing changed but the order of sums) against it, printed beside the
    layouts' figures; it must sit under TOL, or no layout could be judged at TOL."""

    def compute():
        ref = reference_run(dense_cfg(), 20, GBS, SEQ, seed=SEED, snapshot_steps=(STEPS,))
        acc = reference_run(dense_cfg(), 20, GBS, SEQ, seed=SEED, micro_batch=2)
        acc["name"], acc["layout"] = "one process, micro-batches of 2", "reordered sums only"
        check_parity(acc, ref, steps=20)
        return ref

    return shared_reference(tmp_path_factory, "dense", compute)


@pytest.fixture(scope="session")
def packed_ref(tmp_path_factory):
    return shared_reference(
        tmp_path_factory,
        "packed",
        lambda: reference_run(dense_cfg(), STEPS, GBS, SEQ, packed=True),
    )


@pytest.fixture(scope="session")
def deepseek_ref(tmp_path_factory):
    return shared_reference(
        tmp_path_factory,
        "deepseek",
        lambda: reference_run(get_model_config("deepseek-v2-lite-tiny"), STEPS, GBS, SEQ),
    )
