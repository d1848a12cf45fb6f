"""Folders for the tests of ``models/``: on the local disk and on pyarrow's in-memory file system."""

from __future__ import annotations

import uuid

import pytest

from jobs.storage import Location


@pytest.fixture
def root(tmp_path) -> Location:
    """The test's temporary folder as a Location."""
    return Location(str(tmp_path))


@pytest.fixture
def mock_root() -> Location:
    """A folder of its own on ``mock://`` (pyarrow's in-memory file system, shared by the process).

    Reached only by code running in this process (training, loading): Spark workers cannot see it.
    """
    folder = Location(f"mock:///nightrec-test-{uuid.uuid4().hex}")
    folder.mkdirs()
    yield folder
    folder.delete()
