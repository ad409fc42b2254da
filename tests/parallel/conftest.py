"""Slow parallel tests (each spawns up to 8 gloo processes for minutes on a 2-core CI machine)
run only with PARALLEL_SLOW=1; the fast ones cover every layout once."""

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: minutes-long multi-process run; PARALLEL_SLOW=1 runs it"
    )


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PARALLEL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow multi-process run; set PARALLEL_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
