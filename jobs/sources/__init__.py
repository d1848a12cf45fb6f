"""Sources: where the events, users and items come from.

Every loader returns the same canonical ``SourceTables``:

* interactions: ``user_id``, ``item_id`` (the source's own values and types),
  ``rating`` (double, null for implicit feedback), ``ts`` (timestamp, UTC);
* users (optional): ``user_id`` plus side-information columns;
* items (optional): ``item_id`` plus side-information columns; ``genres`` is a
  ``|``-separated string where the source has genres, ``year`` an integer;
* tags (optional): ``user_id``, ``item_id``, ``tag``, ``ts``.

Tables read from files also carry ``_raw`` (the line or row as read, for
the quarantine) and ``_problem`` (``unparseable_line`` when the line does not
split into the expected fields or an id or rating does not parse; null
otherwise). Ingest validates the rows and drops these two columns.

Loaders of file sources check files, columns and types first (``jobs.validate``,
no Spark) and raise ``SourceError`` naming the file, the column and the
setting to fix. Every file is read through ``jobs.storage.Location``, so a
source folder may be a local path or any URI Spark and pyarrow both read. An
optional table that exists but holds no rows (a header-only tags.csv, an
empty users file) is read as absent.

``load_source(spark, SourceSpec(kind=..., ...))`` loads whichever the config
names. Modules: ``spec`` (SourceSpec, load_source), ``canonical``
(SourceTables, the readers and parsers), ``movielens`` (100K, 1M, latest),
``files`` (any Parquet/CSV tables with a column mapping), ``generated`` (the
built-in synthetic data).
"""

from jobs.sources.canonical import SourceTables
from jobs.sources.files import FilesSource, FileTable, InteractionColumns, InteractionsFile, SideFile, load_files
from jobs.sources.generated import load_synthetic
from jobs.sources.movielens import (
    ML1M_USER_FEATURES,
    ML100K_GENRES,
    NO_GENRES,
    TAGS_FEATURE,
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_latest,
)
from jobs.sources.spec import SourceKind, SourceSpec, load_source, source_fingerprint
from jobs.validate import SourceError

__all__ = [
    "ML1M_USER_FEATURES",
    "ML100K_GENRES",
    "NO_GENRES",
    "TAGS_FEATURE",
    "FileTable",
    "FilesSource",
    "InteractionColumns",
    "InteractionsFile",
    "SideFile",
    "SourceError",
    "SourceKind",
    "SourceSpec",
    "SourceTables",
    "load_files",
    "load_movielens_100k",
    "load_movielens_1m",
    "load_movielens_latest",
    "load_source",
    "load_synthetic",
    "source_fingerprint",
]
