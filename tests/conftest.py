"""Shared fixtures: one real SparkSession, one real Spark standalone cluster and one real Prefect server per test
session (each started when a test first asks for it), copies of the data fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
def spark_cluster(tmp_path_factory):
    """The URL (``spark://127.0.0.1:PORT``) of a real Spark standalone cluster: a master and one worker with
    2 cores and 2 GB, started from the pyspark wheel (``tests.fixtures.spark_cluster``) and stopped after the
    session. Its executors run in the worker's own folders, not in the driver's working directory."""
    from tests.fixtures.spark_cluster import standalone_cluster

    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), cores=2, memory="2g") as url:
        yield url


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect server (started once: it takes ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def copy_fixture(tmp_path):
    """``copy_fixture("ml-1m")``: a Path to a fresh copy of tests/fixtures/ml-1m under tmp_path, to edit."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(FIXTURES / name, tmp_path / name))

    return copy


@pytest.fixture
def mock_fixture(tmp_path):
    """``mock_fixture("ml-latest")``: a ``jobs.storage.Location`` on pyarrow's in-memory ``mock://`` file system
    holding a copy of tests/fixtures/ml-latest (only this process sees it: no Spark)."""
    from jobs.storage import Location

    def copy(name: str):
        root = Location(f"mock:///{tmp_path.name}/{name}")
        for file in sorted((FIXTURES / name).iterdir()):
            (root / file.name).write_bytes(file.read_bytes())
        return root

    return copy
