"""The run catalogue: every dataset of a nightly run by name, and where published tables live.

This module and ``jobs.commit`` are the only ones that know where a run's
data lives. Layout under the warehouse root (a ``jobs.storage.Location``: a
local folder or any URI with a file system)::

    recommendations/ds=YYYY-MM-DD/model=NAME/part-*.parquet    published tables (TABLES)
    related_items/ds=…/model=NAME/   user_embeddings/ds=…/model=NAME/   item_embeddings/ds=…/model=NAME/
    user_features/ds=YYYY-MM-DD/…   item_features/…   training_examples/…
    metrics/ds=…/   quarantine/ds=…/   models/ds=…/model=NAME/{model.keras, train.json, …}
    _work/ds=YYYY-MM-DD/run=ID/<dataset>/                       intermediate data of one night's attempts
    _staging/, _commits/, _latest/, _versions/, _locks/         the commit protocol (``jobs.commit``)

Intermediate datasets have names (``DATASETS``) such as ``raw.interactions``,
``train``, ``eval.examples``, ``full.feature_state``, ``eval.model/NAME`` or
``full.embeddings/NAME/user``; ``RunCatalogue.dataset(name)`` returns a
``Dataset`` with load, save and ``complete`` (its marker). Published tables
are addressed as ``recommendations/NAME``, ``user_features``, ``models/NAME``…
(``RunCatalogue.partition``) and written only by ``jobs.commit.NightCommit``.
Every published partition holds ``_manifest.json`` and then ``_SUCCESS``;
both start with '_', so pandas, pyarrow, Spark and DuckDB globs over
``*.parquet`` skip them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
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
    "related_items": ("model",),     # jobs.related: item_id, rank, related_item_id, score
    "user_embeddings": ("model",),   # jobs.embeddings.write_embedding_table: user_id, embedding, model_version
    "item_embeddings": ("model",),   # … item_id, embedding, model_version
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
    "{window}.checkpoints/{model}": FOLDER,  # the training's checkpoints (a rerun resumes from them)
    "{window}.embeddings/{model}/{side}": PARQUET,
    "scored/{model}": PARQUET,     # the recommendations before publishing
    "related/{model}": PARQUET,    # related items before publishing (a model, or co_occurrence)
    "recall/{model}": JSON,        # scoring.method ann: the lists' recall@K against exact scoring
}

_PARTS = {"window": "|".join(WINDOWS), "model": r"[A-Za-z0-9_\-]+", "side": "user|item"}
_PATTERNS = [
    (re.compile("^" + re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?:{_PARTS[m.group(1)]})", re.escape(p)) + "$"), fmt)
    for p, fmt in DATASETS.items()
]


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
        work_id: the work folder to use (an earlier attempt's, when this run resumes it; default: ``run_id``).
    """

    def __init__(self, warehouse: Location, ds: dt.date, run_id: str, work_id: str | None = None):
        self.warehouse = warehouse
        self.ds = ds
        self.run_id = run_id
        self.work_id = work_id or run_id

    @property
    def work_root(self) -> Location:
        """The run's scratch folder (intermediate datasets, never read downstream)."""
        return self.warehouse / "_work" / f"ds={self.ds.isoformat()}" / f"run={self.work_id}"

    def dataset(self, name: str) -> Dataset:
        """The intermediate dataset ``name`` (see ``DATASETS``)."""
        fmt = dataset_format(name)
        rel = name.replace(".", "/", 1) if name.split("/", 1)[0].count(".") else name
        return Dataset(name, self.work_root / (rel + ".json" if fmt == JSON else rel), fmt)

    def partition(self, table: str, **keys: str) -> Location:
        """The published partition of ``table`` for this night."""
        return partition_location(self.warehouse, table, self.ds, **keys)

    def remove_work(self) -> None:
        """Delete the run's scratch folder (and the ``_work/ds=…`` folder when no other run uses it)."""
        self.work_root.delete()
        day = self.work_root.parent
        if day.exists() and not day.names():
            day.delete()
