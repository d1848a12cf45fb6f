"""Which source a run reads (the config's ``source`` section) and the one call that loads it."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from pyspark.sql import SparkSession

from jobs.sources.canonical import SourceTables
from jobs.sources.files import FilesSource, load_files
from jobs.sources.generated import load_synthetic
from jobs.sources.movielens import load_movielens_1m, load_movielens_100k, load_movielens_latest
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
