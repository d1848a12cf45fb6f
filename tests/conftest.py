"""Shared fixtures: one real SparkSession and one real Prefect server per test session."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A local[2] SparkSession shared by every test (built by jobs.session)."""
    from jobs.session import build_spark

    scratch = tmp_path_factory.mktemp("spark")
    session = build_spark(
        master="local[2]",
        app_name="nightrec-tests",
        driver_memory="2g",
        shuffle_partitions=2,
        local_dir=str(scratch / "local"),
        checkpoint_dir=str(scratch / "checkpoints"),
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect server (started once: it takes ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
