"""Which source a run reads (the config's ``source`` section) and the one call that loads it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Literal, get_args

from pyspark.sql import SparkSession

from jobs.sources.canonical import SourceTables
from jobs.sources.files import FilesSource, load_files
from jobs.sources.generated import load_synthetic
from jobs.sources.movielens import (
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_latest,
)
from jobs.storage import Location
from jobs.synthetic import SyntheticSpec

SourceKind = Literal["synthetic", "movielens_100k", "movielens_1m", "movielens_latest", "files"]
_MOVIELENS = {
    "movielens_100k": load_movielens_100k,
    "movielens_1m": load_movielens_1m,
    "movielens_latest": load_movielens_latest,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """A source to load (``source.*`` of the config).

    Attributes:
        kind: synthetic | movielens_100k | movielens_1m | movielens_latest | files.
        path: the dataset's folder (a path or URI) for the MovieLens kinds.
        synthetic: size and seed of the synthetic data (kind synthetic).
        files: the tables of kind files.
    """

    kind: SourceKind = "synthetic"
    path: str | None = None
    synthetic: SyntheticSpec = SyntheticSpec()
    files: FilesSource | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(SourceKind):
            raise ValueError(f"source kind: got {self.kind!r}, expected one of {', '.join(get_args(SourceKind))}")
        if self.kind in _MOVIELENS and not self.path:
            raise ValueError(f"source kind {self.kind} needs the path of the dataset's folder (source.path)")
        if self.kind == "files" and self.files is None:
            raise ValueError("source kind files needs its tables (source.files.interactions, ...)")


def load_source(spark: SparkSession, spec: SourceSpec) -> SourceTables:
    """The canonical tables of ``spec``'s source (file sources check their files before any Spark job)."""
    if spec.kind in _MOVIELENS:
        return _MOVIELENS[spec.kind](spark, spec.path)
    if spec.kind == "files":
        return load_files(spark, spec.files)
    return load_synthetic(spark, spec.synthetic)


def source_fingerprint(spec: SourceSpec) -> dict:
    """What identifies the data a run read: for file sources every data file's path, size and modification
    time; for the synthetic source its spec (the data is a function of it).

    A rerun that finds the same fingerprint (and config) may reuse the steps an earlier attempt finished.

    Returns:
        {"kind", "digest" (sha256 of the rest, 16 hex digits), "files" or "synthetic"}.
    """
    if spec.kind == "synthetic":
        detail: dict = {"synthetic": {k: str(v) for k, v in dataclasses.asdict(spec.synthetic).items()}}
    else:
        roots = [Location(spec.path)] if spec.kind in _MOVIELENS else \
            [t.location for t in (spec.files.interactions, spec.files.users, spec.files.items) if t is not None]
        files = []
        for root in roots:
            for loc in root.files():
                info = loc.fs.get_file_info(loc.path)
                files.append({"uri": loc.uri, "size": int(info.size or 0), "mtime_ns": int(info.mtime_ns or 0)})
        detail = {"files": files}
    digest = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()[:16]
    return {"kind": spec.kind, "digest": digest, **detail}
