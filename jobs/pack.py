"""Ship nightrec to a cluster's executors: the whole environment as an archive, or only its code as a zip.

PySpark's way of giving executors a Python environment (see its "Python
Package Management" page) is a packed virtual environment shipped with
``spark.archives`` and unpacked in each executor's folder:

```yaml
spark:
  conf:
    spark.archives: "nightrec-env.tar.gz#environment"      # a path or URI (hdfs://, s3a://) of the archive
    spark.executorEnv.PYSPARK_PYTHON: "./environment/bin/python"
```

(on YARN and Kubernetes also ``spark.yarn.appMasterEnv.PYSPARK_PYTHON`` /
``spark.kubernetes.driverEnv.PYSPARK_PYTHON`` for cluster deploy mode).
``jobs.session.build_spark`` then leaves the executors' interpreter to that
setting instead of the driver's own path.

``pack_environment`` builds that archive with venv-pack from this process's
virtual environment and nightrec's code (an editable install is replaced by
a copy of the packages, so the archive works where the source tree is not).
A venv's ``bin/python`` links to the interpreter it was made from, so the
executors need Python 3.11 at that path (``pyvenv.cfg``'s ``home``), or pass
``python_prefix`` for where it is there. ``pack_sources`` zips only the
packages, for ``spark.submit.pyFiles`` when the executors already have the
dependencies.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

#: nightrec's top-level packages (pyproject.toml's ``packages.find``).
PACKAGES = ("flows", "jobs", "models")
#: The archive ``nightrec pack`` / ``make pack`` writes by default.
DEFAULT_ARCHIVE = "nightrec-env.tar.gz"


def _source_root() -> Path:
    """The folder holding the imported nightrec packages (a work tree or site-packages)."""
    return Path(__file__).resolve().parent.parent


def _package_files(root: Path) -> list[tuple[Path, str]]:
    """(file, path relative to ``root``) of every file of the packages, caches left out."""
    found = []
    for package in PACKAGES:
        for folder, dirs, files in os.walk(root / package):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith((".pyc", ".pyo")):
                    path = Path(folder) / name
                    found.append((path, path.relative_to(root).as_posix()))
    return found


def pack_sources(output: str | os.PathLike) -> Path:
    """Zip nightrec's packages (``flows``, ``jobs``, ``models``) for ``spark.submit.pyFiles``; returns the path."""
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in _package_files(_source_root()):
            archive.write(path, name)
    os.replace(tmp, output)
    return output


def pack_environment(output: str | os.PathLike = DEFAULT_ARCHIVE, *, prefix: str | None = None,
                     python_prefix: str | None = None, force: bool = False) -> Path:
    """Pack a virtual environment and nightrec's code into a ``.tar.gz`` for ``spark.archives``.

    Args:
        output: the archive to write (``.tar.gz``).
        prefix: the virtual environment (default: this process's, ``sys.prefix``).
        python_prefix: where the base Python lives on the executors, when not where it lives here.
        force: replace an existing archive.

    Returns:
        The archive's absolute path.

    Raises:
        RuntimeError: ``prefix`` is not a virtual environment (venv-pack packs only those) or
            venv-pack is not installed.
        FileExistsError: ``output`` exists and ``force`` is False.
    """
    try:
        import venv_pack
    except ImportError:
        raise RuntimeError("packing the environment needs venv-pack: pip install 'nightrec[cluster]' "
                           "(or pip install venv-pack)") from None
    prefix = os.path.abspath(prefix or sys.prefix)
    if not os.path.exists(os.path.join(prefix, "pyvenv.cfg")):
        raise RuntimeError(f"{prefix} is not a virtual environment (no pyvenv.cfg); venv-pack packs only those: "
                           "make one with `make setup` (python -m venv .venv) and run this with its python")
    output = Path(output).resolve()
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists; pass force=True (or remove it) to write it again")
    env = venv_pack.Env(prefix)
    site = f"{venv_pack.core.find_python_lib_include(prefix)[0]}/site-packages"
    # An editable install points at a source tree the executors do not have: ship a copy of the packages.
    env.files = [f for f in env.files if not ("__editable__" in f.target and "nightrec" in f.target)
                 and not any(f.target.startswith(f"{site}/{package}/") for package in PACKAGES)]
    env.files += [venv_pack.core.File(str(path), f"{site}/{name}") for path, name in _package_files(_source_root())]
    return Path(env.pack(output=str(output), format="tar.gz", python_prefix=python_prefix, force=force))
