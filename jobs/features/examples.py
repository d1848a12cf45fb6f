"""Leakage-safe training examples (one per training event), holdout rows, and writing the examples.

Two views of the statistics are computed by the same code (``jobs.features.stats``):

* feature tables (scoring): statistics of all the entity's events in the window;
* training examples: by default ("leave_one_out") statistics of all the
  entity's window events except the example's own, counted to the end of the
  window like the feature tables; or ("point_in_time") of the entity's events
  strictly before the example's timestamp. Either way no example can read its
  own rating. Leave-one-out is the default because the models are scored with
  window-end statistics: trained on point-in-time ones they learn the gap
  between "as of the event" and "as of the window end" (docs, "Training
  examples").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.features.encoding import id_frame, side_static
from jobs.features.fitting import FeatureTables
from jobs.features.passes import PACKED_COL, n_partitions, side_passes, static_arrow, struct_type
from jobs.features.state import ROWS_PER_PARTITION, FeatureState
from jobs.schema import EVENT_COLUMNS
from jobs.storage import Location


def example_passes(
    train: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    state: FeatureState,
    rows_per_partition: int,
    tables: FeatureTables | None = None,
) -> tuple[DataFrame, Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]], T.StructType]:
    """The two leakage-safe passes: items (by item, by time), then users (by user, by time).

    Only the ids and the packed numbers of the item pass cross the second
    shuffle; the user pass looks the static item columns up in the broadcast
    item table. ``tables`` (the ``FeatureFitter.fit_transform`` output ``state`` comes from)
    saves building and collecting the static tables and counting the events again.

    Returns:
        (the item pass's output partitioned by user, the user pass as a
        function of record batches, the schema of the examples).
    """
    spark = train.sparkSession
    events = train.select(*EVENT_COLUMNS)
    if tables is not None and tables.statics.keys() == {"user", "item"}:
        fitted = tables.state
        if (fitted.user_vocab, fitted.item_vocab, fitted.vocabs, fitted.affinity) != (
            state.user_vocab, state.item_vocab, state.vocabs, state.affinity
        ):
            raise ValueError("training examples: `tables` come from another fit than `state` (their vocabularies "
                             "differ); pass the fit_transform output the state comes from, or no tables")
        statics, schemas, n_events = tables.statics, tables.static_schemas, tables.n_events
    else:
        item_static = side_static(id_frame(spark, state.item_vocab, train.schema["item_id"], "item_idx"), items, state,
                                  "item")
        user_static = side_static(id_frame(spark, state.user_vocab, train.schema["user_id"], "user_idx"), users, state,
                                  "user")
        statics = static_arrow(user_static, item_static)
        schemas, n_events = {"user": user_static.schema, "item": item_static.schema}, events.count()
    partitions = n_partitions(spark, n_events, rows_per_partition)
    passes = side_passes(spark, state, statics, fitted=True)
    (item_bc, item_pass), (user_bc, user_pass) = passes["item"], passes["user"]
    packed = struct_type([train.schema["user_id"], train.schema["item_id"], T.StructField(PACKED_COL, T.BinaryType())])
    with_items = events.repartition(partitions, "item_id").mapInArrow(
        lambda batches: item_bc.value.item_examples(batches), packed
    )
    floats = lambda names: [T.StructField(n, T.FloatType()) for n in names]  # noqa: E731
    fields = [train.schema["user_id"], train.schema["item_id"], T.StructField("rating", T.FloatType()), train.schema["ts"]]
    fields += [schemas["user"][c] for c in user_pass.static_columns()] + floats(user_pass.finalizer.names)
    fields += [schemas["item"][c] for c in item_pass.static_columns()] + floats(item_pass.finalizer.names)
    columns, record, item_names = [f.name for f in fields], item_pass.packed_type(), item_pass.finalizer.names

    def user_examples(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return user_bc.value.user_examples(batches, columns, record, item_names)

    return with_items.repartition(partitions, "user_id"), user_examples, struct_type(fields)


def training_examples(
    train: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    state: FeatureState,
    *,
    rows_per_partition: int = ROWS_PER_PARTITION,
    tables: FeatureTables | None = None,
) -> DataFrame:
    """One leakage-safe example per training event.

    ``train`` must be the events ``state`` was fitted on. Every statistic of
    an example is computed from the user's (item's) other events
    (``state.example_statistics``: all of the window's but the example's
    own, or those strictly before its timestamp), then imputed and scaled
    with the state's training-window values; the static columns are the same
    as in the feature tables. Pass ``tables``, the ``FeatureFitter.fit_transform`` output
    ``state`` comes from, to reuse its static tables.

    Returns:
        DataFrame[user_id, item_id, rating: float, ts, the user columns of
        the spec, the item columns of the spec].
    """
    shuffled, user_examples, schema = example_passes(train, users, items, state, rows_per_partition, tables)
    return shuffled.mapInArrow(user_examples, schema)


def join_features(events: DataFrame, user_features: DataFrame, item_features: DataFrame) -> DataFrame:
    """Events joined with scoring-time feature tables (holdout and test rows; NOT leakage-safe).

    Every row gets the statistics of the whole window the tables were built
    on, so use it only for events outside that window (a holdout), never for
    training examples (``training_examples`` is the leakage-safe one).
    Events whose user or item has no feature row are dropped.

    Returns:
        DataFrame[user_id, item_id, rating: float, ts, every column of both tables].
    """
    rows = events.select("user_id", "item_id", F.col("rating").cast("float").alias("rating"), "ts")
    return rows.join(user_features, on="user_id", how="inner").join(item_features, on="item_id", how="inner")


def write_training_examples(
    train: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    state: FeatureState,
    path: str | Location,
    *,
    rows_per_partition: int = ROWS_PER_PARTITION,
    tables: FeatureTables | None = None,
) -> int:
    """Write ``training_examples`` as Parquet at ``path``, replacing it; returns the number of rows.

    Every task writes its partition's file with pyarrow through the
    location's file system (``part-NNNNN.parquet``, written under a hidden
    temporary name and renamed, so a reader never sees half a file), which is
    several times faster than Spark's row-by-row Parquet writer for these
    wide float tables. The executors open the file system themselves: any
    ``Location`` every executor reaches works (a local folder only when they
    share the driver's disk, as in ``local[*]``).
    """
    out = Location(path)
    shuffled, user_examples, _ = example_passes(train, users, items, state, rows_per_partition, tables)
    out.delete()
    out.mkdirs()

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        import pyarrow.parquet as pq

        writer, rows, tmp = None, 0, None
        for batch in user_examples(batches):
            if writer is None:
                tmp = out / f".tmp-{uuid.uuid4().hex}.parquet"
                # dictionaries pay off for the ids and categoricals, not for the statistics
                encoded = [f.name for f in batch.schema if not (pa.types.is_floating(f.type) or pa.types.is_timestamp(f.type))]
                writer = pq.ParquetWriter(tmp.path, batch.schema, filesystem=tmp.fs, compression="snappy",
                                          use_dictionary=encoded)
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
            part = out / f"part-{TaskContext.get().partitionId():05d}.parquet"
            part.delete()  # a retried task replaces the file of its earlier attempt
            tmp.move_to(part)
        yield pa.RecordBatch.from_pydict({"rows": pa.array([rows], pa.int64())})

    return int(sum(r["rows"] for r in shuffled.mapInArrow(run, "rows long").collect()))
