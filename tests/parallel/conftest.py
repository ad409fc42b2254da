"""The single-process float64 references of the parity tests (tests/parallel/test_parity*.py),
each computed once per test session: make test runs those files as one unit on one worker
(tests/conftest.py), so a session fixture is computed once in all."""

import pytest

from model_zoo.zoo import get_model_config
from pretrain.parity.harness import reference_run
from tests.parallel.parity_cases import GBS, SEED, SEQ, STEPS, check_parity, dense_cfg


@pytest.fixture(scope="session")
def dense_ref():
    """20 steps (the precision runs); parity runs compare with its first STEPS. Also measures the
    float64 floor of the claim: the same single process with the batch accumulated in
    micro-batches of 2 (nothing changed but the order of sums) against it, printed beside the
    layouts' figures; it must sit under TOL, or no layout could be judged at TOL."""
    ref = reference_run(dense_cfg(), 20, GBS, SEQ, seed=SEED, snapshot_steps=(STEPS,))
    acc = reference_run(dense_cfg(), 20, GBS, SEQ, seed=SEED, micro_batch=2)
    acc["name"], acc["layout"] = "one process, micro-batches of 2", "reordered sums only"
    check_parity(acc, ref, steps=20)
    return ref


@pytest.fixture(scope="session")
def packed_ref():
    return reference_run(dense_cfg(), STEPS, GBS, SEQ, packed=True)


@pytest.fixture(scope="session")
def deepseek_ref():
    return reference_run(get_model_config("deepseek-v2-lite-tiny"), STEPS, GBS, SEQ)
