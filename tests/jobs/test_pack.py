"""Shipping nightrec to executors: the packed environment (venv-pack) and the zip of the packages."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile

import pytest

from jobs.pack import PACKAGES, pack_environment, pack_sources


def test_packed_environment_runs_nightrecs_packages_from_the_archive_not_from_the_source_tree(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    archive = pack_environment(tmp_path / "env.tar.gz", prefix=str(venv))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "environment", filter="tar")
    site = "lib/python3.11/site-packages"
    for package in PACKAGES:
        assert f"{site}/{package}/__init__.py" in names
    assert f"{site}/models/launch.py" in names and f"{site}/jobs/log4j2.properties" in names
    assert not any("__pycache__" in n or "__editable__" in n for n in names)
    # The unpacked environment's python imports the archive's copy (what an executor does with ./environment).
    found = subprocess.run([str(tmp_path / "environment" / "bin" / "python"), "-c",
                            "import flows, jobs, models; print(jobs.__file__)"], capture_output=True, text=True,
                           cwd=str(tmp_path), check=True).stdout.strip()
    assert found == str(tmp_path / "environment" / site / "jobs" / "__init__.py")
    with pytest.raises(FileExistsError, match="pass force=True"):
        pack_environment(archive, prefix=str(venv))


def test_packing_refuses_what_is_not_a_virtual_environment(tmp_path):
    with pytest.raises(RuntimeError, match="is not a virtual environment"):
        pack_environment(tmp_path / "env.tar.gz", prefix=str(tmp_path))


def test_sources_zip_holds_the_three_packages_without_caches(tmp_path):
    with zipfile.ZipFile(pack_sources(tmp_path / "code.zip")) as archive:
        names = archive.namelist()
    assert {n.split("/")[0] for n in names} == set(PACKAGES)
    assert "models/worker.py" in names and "jobs/distributed.py" in names and "flows/config.py" in names
    assert not any(n.endswith(".pyc") for n in names)
