"""The run catalogue: every dataset of a nightly run by name, and publishing.

This module is the only one that knows where a run's data lives. Layout
under the warehouse root (a ``jobs.storage.Location``: a local folder or any
URI with a file system)::

    recommendations/ds=YYYY-MM-DD/model=NAME/part-*.parquet    published tables (TABLES)
    user_features/ds=YYYY-MM-DD/…   item_features/…   training_examples/…
    metrics/ds=…/   quarantine/ds=…/   models/ds=…/model=NAME/{model.keras, train.json, …}
    _work/ds=YYYY-MM-DD/run=ID/<dataset>/                       intermediate data of one run
    _staging/, _trash/                                          publishing scratch (never read)

Intermediate datasets have names (``DATASETS``) such as ``raw.interactions``,
``train``, ``eval.examples``, ``full.feature_state``, ``eval.model/NAME`` or
``full.embeddings/NAME/user``; ``RunCatalogue.dataset(name)`` returns a
``Dataset`` with load, save and ``complete`` (its marker). Published tables
are addressed as ``recommendations/NAME``, ``user_features``, ``models/NAME``…
(``RunCatalogue.partition``) and written only by ``publish_dataframe`` /
``publish_dataset``.

Publishing protocol (Spark's dynamic partition overwrite is neither atomic
nor marked): the new partition is written completely under ``_staging``,
``_manifest.json`` and then ``_SUCCESS`` last; the old partition, if any, is
renamed into ``_trash`` and the staged one renamed into place; then the
trash is removed. A rename never lands inside an existing folder
(``Location.move_to`` refuses). A crash before the swap leaves the old
partition untouched; a crash between the two renames is repaired by
``recover`` (the next publish of that partition calls it), which puts the
newest complete copy back. Both files start with '_', so pandas, pyarrow,
Spark and DuckDB globs over ``*.parquet`` skip them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from jobs.storage import Location

SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"
SCHEMA_VERSION = 1
WINDOWS = ("eval", "full")

#: Published tables -> the partition keys below ``ds=``.
TABLES: dict[str, tuple[str, ...]] = {
    "recommendations": ("model",),
    "user_features": (),
    "item_features": (),
    "training_examples": (),
    "metrics": (),
    "quarantine": (),
    "models": ("model",),
}

PARQUET, JSON, FOLDER = "parquet", "json", "folder"

#: Intermediate datasets of a run: name pattern -> format. ``{window}`` is eval or full, ``{model}`` a model
#: name, ``{side}`` user or item.
DATASETS: dict[str, str] = {
    "raw.interactions": PARQUET,   # validated events through ds (ingest)
    "raw.users": PARQUET,          # optional side tables of the source
    "raw.items": PARQUET,
    "raw.tags": PARQUET,
    "raw.quarantine": PARQUET,     # rejected rows of every table
    "raw.source": JSON,            # the source's name, declared features and rating range
    "train": PARQUET,              # events before the holdout
    "holdout": PARQUET,            # events of the last holdout_days through ds
    "{window}.user_features": PARQUET,
    "{window}.item_features": PARQUET,
    "{window}.examples": PARQUET,  # leakage-safe training examples
    "{window}.feature_state": JSON,
    "{window}.holdout_examples": PARQUET,  # holdout events joined with the window's features (eval)
    "{window}.user_history/{model}": PARQUET,
    "{window}.model/{model}": FOLDER,      # model.keras, train.json, feature_state.json
    "{window}.embeddings/{model}/{side}": PARQUET,
    "scored/{model}": PARQUET,     # the recommendations before publishing
}

_PARTS = {"window": "|".join(WINDOWS), "model": r"[A-Za-z0-9_\-]+", "side": "user|item"}
_PATTERNS = [
    (re.compile("^" + re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?:{_PARTS[m.group(1)]})", re.escape(p)) + "$"), fmt)
    for p, fmt in DATASETS.items()
]


class PublishError(RuntimeError):
    """Publishing could not complete; the previously published data is intact."""


class IncompleteDataset(FileNotFoundError):
    """A dataset was read before it was completely written."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One named dataset of a run.

    Attributes:
        name: its catalogue name, e.g. ``eval.examples``.
        location: where it lives (a folder; a file for JSON datasets).
        format: ``parquet`` (a Spark-readable folder), ``json`` (one file) or
            ``folder`` (files written by other code, e.g. a saved model).
    """

    name: str
    location: Location
    format: str

    @property
    def uri(self) -> str:
        return self.location.uri

    def complete(self) -> bool:
        """True once the dataset was completely written (its ``_SUCCESS`` marker; JSON: the file)."""
        if self.format == JSON:
            return self.location.is_file()
        return (self.location / SUCCESS_MARKER).exists()

    def exists(self) -> bool:
        return self.location.exists()

    def mark_complete(self) -> None:
        """Write the marker of a folder dataset written by other code (pyarrow writers, training)."""
        (self.location / SUCCESS_MARKER).write_text("")

    def _require(self) -> None:
        if not self.complete():
            raise IncompleteDataset(
                f"dataset '{self.name}' at {self.location.display()} is missing or incomplete (no {SUCCESS_MARKER}); "
                f"the step that writes it did not finish"
            )

    # -- parquet -------------------------------------------------------------------------------
    def load(self, spark: SparkSession, schema: T.StructType | str | None = None) -> DataFrame:
        """The dataset as a DataFrame (it must be complete)."""
        self._check(PARQUET)
        self._require()
        reader = spark.read.schema(schema) if schema is not None else spark.read
        return reader.parquet(self.uri)

    def load_optional(self, spark: SparkSession) -> DataFrame | None:
        """The dataset, or None when it was never written (an optional table of the source)."""
        return self.load(spark) if self.exists() else None

    def save(self, df: DataFrame) -> None:
        """Write ``df`` as Parquet, replacing any earlier copy; Spark's commit writes the marker last."""
        self._check(PARQUET)
        self.location.delete()
        df.write.mode("overwrite").parquet(self.uri)
        if not self.complete():  # a committer that writes no _SUCCESS
            self.mark_complete()

    # -- json ------------------------------------------------------------------------------------
    def read_json(self) -> Any:
        self._check(JSON)
        self._require()
        return json.loads(self.location.read_text())

    def read_text(self) -> str:
        self._check(JSON)
        self._require()
        return self.location.read_text()

    def write_text(self, text: str) -> None:
        """Write the JSON document (already serialised); readers see the old or the new file."""
        self._check(JSON)
        self.location.write_text(text)

    def write_json(self, value: Any) -> None:
        self.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))

    def _check(self, fmt: str) -> None:
        if self.format != fmt:
            raise TypeError(f"dataset '{self.name}' is {self.format}, not {fmt}")


def dataset_format(name: str) -> str:
    """The format of a dataset name (ValueError naming the known patterns when there is none)."""
    for pattern, fmt in _PATTERNS:
        if pattern.match(name):
            return fmt
    raise ValueError(f"unknown dataset '{name}'; the run catalogue names: {', '.join(DATASETS)} "
                     f"(window: {', '.join(WINDOWS)}; side: user, item)")


def partition_location(root: Location, table: str, ds: dt.date | str, **keys: str) -> Location:
    """The location of one published partition, e.g. ``root/recommendations/ds=…/model=…``."""
    if table not in TABLES:
        raise ValueError(f"unknown table '{table}', expected one of {', '.join(TABLES)}")
    if set(keys) != set(TABLES[table]):
        raise ValueError(f"table '{table}' is partitioned by ds{''.join(', ' + k for k in TABLES[table])}; "
                         f"got {', '.join(['ds', *keys])}")
    day = ds.isoformat() if isinstance(ds, dt.date) else ds
    loc = root / table / f"ds={day}"
    for key in TABLES[table]:
        loc = loc / f"{key}={keys[key]}"
    return loc


class RunCatalogue:
    """The datasets of one run for ``ds`` and the published partitions of that night.

    Args:
        warehouse: the warehouse root.
        ds: the run date.
        run_id: unique id of this run (scratch data of concurrent runs never mix).
    """

    def __init__(self, warehouse: Location, ds: dt.date, run_id: str):
        self.warehouse = warehouse
        self.ds = ds
        self.run_id = run_id

    @property
    def work_root(self) -> Location:
        """The run's scratch folder (intermediate datasets, never read downstream)."""
        return self.warehouse / "_work" / f"ds={self.ds.isoformat()}" / f"run={self.run_id}"

    def dataset(self, name: str) -> Dataset:
        """The intermediate dataset ``name`` (see ``DATASETS``)."""
        fmt = dataset_format(name)
        rel = name.replace(".", "/", 1) if name.split("/", 1)[0].count(".") else name
        return Dataset(name, self.work_root / (rel + ".json" if fmt == JSON else rel), fmt)

    def partition(self, table: str, **keys: str) -> Location:
        """The published partition of ``table`` for this night."""
        return partition_location(self.warehouse, table, self.ds, **keys)

    def publisher(self) -> "Publisher":
        return Publisher(self.warehouse)

    def remove_work(self) -> None:
        """Delete the run's scratch folder (and the ``_work/ds=…`` folder when no other run uses it)."""
        self.work_root.delete()
        day = self.work_root.parent
        if day.exists() and not day.names():
            day.delete()


class Publisher:
    """Atomic, idempotent publishing of partitions under one warehouse root."""

    def __init__(self, warehouse: Location):
        self.warehouse = warehouse

    @staticmethod
    def is_published(partition: Location) -> bool:
        """True when the partition carries its success marker."""
        return (partition / SUCCESS_MARKER).exists()

    def read_manifest(self, partition: Location) -> dict:
        if not self.is_published(partition):
            raise FileNotFoundError(f"{partition.display()} is not a published partition (no {SUCCESS_MARKER})")
        return json.loads((partition / MANIFEST).read_text())

    def _scratch(self, kind: str, partition: Location) -> Location:
        """A fresh ``_staging``/``_trash`` folder of ``partition`` (the parent groups its copies)."""
        return self._scratch_parent(kind, partition) / uuid.uuid4().hex

    def _scratch_parent(self, kind: str, partition: Location) -> Location:
        return self.warehouse / kind / partition.relative_to(self.warehouse)

    def recover(self, partition: Location) -> None:
        """Repair a crash between the two renames of a publish of ``partition``."""
        if self.is_published(partition):
            return
        for candidate in reversed(self._scratch_parent("_trash", partition).list()):
            if self.is_published(candidate):
                partition.delete()
                candidate.move_to(partition)
                return

    def publish(self, partition: Location, write: Callable[[Location], Any], manifest: Mapping[str, Any]) -> dict:
        """Write a partition with ``write(staging)`` and swap it in atomically.

        Args:
            partition: from ``RunCatalogue.partition``.
            write: writes the partition's data files into the folder it is given.
            manifest: JSON-serialisable facts; the schema version and publish time are added.

        Returns:
            The manifest as written.
        """
        self.recover(partition)
        staging = self._scratch("_staging", partition)
        try:
            write(staging)
            staging.mkdirs()
            (staging / SUCCESS_MARKER).delete()  # Spark's own marker: ours goes last
            full = {
                "schema_version": SCHEMA_VERSION,
                **manifest,
                "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            (staging / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
            (staging / SUCCESS_MARKER).write_text("")
        except Exception:
            staging.delete()
            raise
        trash = None
        if partition.exists():
            trash = self._scratch("_trash", partition)
            partition.move_to(trash)
        try:
            staging.move_to(partition)
        except Exception as exc:
            raise PublishError(f"could not move the staged copy of {partition.display()} into place: {exc}") from exc
        if trash is not None:
            trash.delete()
        return full

    def publish_dataframe(
        self,
        df: DataFrame,
        partition: Location,
        manifest: Mapping[str, Any],
        *,
        sort_by: tuple[str, ...] = (),
        rows_per_file: int = 2_000_000,
        side_files: Mapping[str, str] | None = None,
    ) -> dict:
        """Publish a DataFrame as the Parquet files of one partition.

        Adds ``row_count`` and ``columns`` to the manifest. Rows are range-
        partitioned and sorted by ``sort_by`` so that files are ordered.
        ``side_files`` ({name: text}) are written beside the data; name them
        with a leading ``_`` so that Parquet readers skip them.
        """
        df = df.cache()
        try:
            rows = df.count()
            n_files = max(1, -(-rows // rows_per_file))
            out = df.repartitionByRange(n_files, *sort_by).sortWithinPartitions(*sort_by) if sort_by \
                else df.coalesce(n_files)
            columns = [{"name": f.name, "type": f.dataType.simpleString()} for f in df.schema.fields]

            def write(staging: Location) -> None:
                out.write.mode("overwrite").parquet(staging.uri)
                for name, text in (side_files or {}).items():
                    (staging / name).write_text(text)

            return self.publish(partition, write, {**manifest, "row_count": rows, "columns": columns})
        finally:
            df.unpersist()

    def publish_dataset(self, dataset: Dataset, partition: Location, manifest: Mapping[str, Any],
                        beside: Mapping[str, Dataset] | None = None) -> dict:
        """Publish a complete folder dataset (e.g. a saved model) as one partition, its files copied as they are.

        ``beside`` ({folder name: dataset}) adds other complete datasets as sub-folders (e.g. a model's
        embedding tables as ``user_embeddings.parquet/``).
        """
        for part in (dataset, *(beside or {}).values()):
            part._require()

        def write(staging: Location) -> None:
            dataset.location.copy_to(staging)
            for name, part in (beside or {}).items():
                part.location.copy_to(staging / name)

        return self.publish(partition, write, manifest)
