"""Fixtures for tests on a real Slurm cluster: `slurm_cluster` (session scope: two slurmd nodes and
a slurmctld on loopback, started once, stopped at the end) and `slurm_env` (SLURM_CONF pointing at
it for the test and everything it spawns).

Every test that needs the cluster lives in this folder, so all of them share the one cluster: a
fixture imported into a module elsewhere would be a second fixture definition, with a second
cluster of its own (which tests/data_pipeline/test_slurm.py used to start).

Without Slurm the tests skip; with CI=true they fail instead, because CI installs slurm-wlm
(.ci/install-system-packages) and a silently skipped cluster test would prove nothing.
"""

from __future__ import annotations

import os

import pytest

from tests.slurm.cluster import SlurmCluster, missing_tools


def _unavailable(why: str):
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{why}; CI must run the Slurm tests: .ci/install-system-packages installs "
            "slurm-wlm (run it as root)",
            pytrace=False,
        )
    pytest.skip(f"{why} (install Debian's slurm-wlm as root to run these tests)")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = missing_tools()
    if missing:
        _unavailable(f"Slurm is not installed: {', '.join(missing)} not found")
    if os.geteuid() != 0:
        _unavailable(
            "the test cluster runs slurmctld/slurmd as root (AuthType=auth/none); not root"
        )
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm-cluster"))
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """SLURM_CONF for sbatch/scontrol/squeue called by the test or by code under test."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster
