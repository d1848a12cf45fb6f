"""Features: statistics, encodings, imputation and scaling fitted on the training window.

Fitted state (``FeatureState``) is plain JSON: vocabularies, the rating grid
of the quantiles, the genre-affinity values, scaler and imputer values and the
model input spec. It is saved beside the feature tables and reused at scoring
time, so users and items that arrive later are encoded the same way.

Encoding convention for every categorical feature (ids included):
index 0 = null/empty (the 'unknown' category), index 1 = unseen or rarer than
``min_count``, indices 2.. = the vocabulary in sorted value order. Sorted
order makes the lower item id the lower index, which the top-K step uses to
break ties. Multi-valued categoricals (e.g. genres ``"Action|Comedy"``) become
arrays of indices; a null or empty list becomes ``[0]``.

Continuous features of a side (all float32 in the tables):

* ``{side}_rating_count`` (log1p), ``_rating_mean``, ``_rating_std`` (population),
  ``_rating_p10`` ... ``_p90`` (the configured quantiles), ``_days_since_first``,
  ``_days_since_last``;
* users: ``user_genre_share_{genre}`` and ``user_genre_mean_{genre}`` (share of
  the user's events in each genre, mean rating there);
* the declared continuous side columns (``user_age``, ``item_year``, ...).

Each is imputed (mean or median of the training entities, or an optional
IterativeImputer) and standardised with training-window statistics.

Two views of the statistics, computed by the same code (``jobs.feature_stats``):

* feature tables (scoring): statistics of all the entity's events in the window;
* training examples: by default ("leave_one_out") statistics of all the
  entity's window events except the example's own, counted to the end of the
  window like the feature tables; or ("point_in_time") of the entity's events
  strictly before the example's timestamp. Either way no example can read its
  own rating. Leave-one-out is the default because the models are scored with
  window-end statistics: trained on point-in-time ones they learn the gap
  between "as of the event" and "as of the window end" (README, "Training
  examples").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import feature_stats as fs

NULL_INDEX = 0
UNSEEN_INDEX = 1
FIRST_INDEX = 2
_MAP_LITERAL_LIMIT = 5000
# The totals' map side adds up blocks of about this many events per entity before the shuffle.
PARTIAL_BLOCK_ROWS = 4_000_000
#: Genre affinity uses a 63-bit mask per item: at most this many values (the most frequent).
MAX_AFFINITY_VALUES = 63
MASK_COL = "_affinity_mask"
PACKED_COL = "_packed"

Kind = Literal["continuous", "categorical", "multi_categorical"]


@dataclasses.dataclass(frozen=True)
class FeatureDecl:
    """One side-information column and how to encode it.

    Attributes:
        column: source column in the users or items table.
        kind: continuous | categorical | multi_categorical.
        separator: separator of a multi-valued string column.
        prefix: for categoricals, keep only the first ``prefix`` characters
            (e.g. the region of a zip code).
    """

    column: str
    kind: Kind
    separator: str = "|"
    prefix: int | None = None


#: Side information of MovieLens-like data (the synthetic set and 100K).
MOVIELENS_USER_FEATURES = (
    FeatureDecl("age", "continuous"),
    FeatureDecl("gender", "categorical"),
    FeatureDecl("occupation", "categorical"),
    FeatureDecl("zip", "categorical", prefix=1),
)
MOVIELENS_ITEM_FEATURES = (
    FeatureDecl("year", "continuous"),
    FeatureDecl("genres", "multi_categorical", separator="|"),
)


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """How the feature stage fits (the ``features`` config section).

    Attributes:
        min_count: categories rarer than this map to the unseen index.
        quantiles: probabilities of the rating quantiles per user and item.
        grid_size: up to this many distinct ratings give exact quantiles;
            beyond, ratings snap down to ``grid_size`` approximate quantiles.
        impute: univariate imputation value of continuous features: mean | median.
        imputer: univariate | iterative (scikit-learn's IterativeImputer,
            fitted on a sample of the training entities on the driver).
        iterative_sample_rows: rows of that sample per side.
        iterative_max_iter: IterativeImputer's max_iter.
        affinity_column: the items' multi-valued column the user genre
            affinity is computed over (None: no affinity features).
        rows_per_partition: events per Spark partition in the statistics passes
            (each partition is held in a Python worker's memory).
        seed: seed of the imputer and its sample.
        example_statistics: how the statistics of a training example are
            computed. "leave_one_out": from all the entity's training-window
            events except the example's own, counted to the end of the window
            (what scoring sees, minus the label); "point_in_time": from the
            entity's events strictly before the example's timestamp, counted
            to that timestamp. Both keep an example's own rating out of its
            features.
    """

    min_count: int = 1
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    grid_size: int = 64
    impute: Literal["mean", "median"] = "mean"
    imputer: Literal["univariate", "iterative"] = "univariate"
    iterative_sample_rows: int = 5000
    iterative_max_iter: int = 10
    affinity_column: str | None = "genres"
    rows_per_partition: int = 500_000
    seed: int = 0
    example_statistics: Literal["leave_one_out", "point_in_time"] = "leave_one_out"


# -- categorical vocabularies ---------------------------------------------------------------
def _values_column(decl: FeatureDecl):
    col = F.col(decl.column)
    if decl.kind == "multi_categorical":
        return F.explode(F.split(col.cast("string"), re.escape(decl.separator)))
    if decl.prefix:
        return F.substring(col.cast("string"), 1, decl.prefix)
    return col


def fit_vocabulary(df: DataFrame, decl: FeatureDecl, *, min_count: int = 1) -> list:
    """Sorted values of ``decl.column`` seen at least ``min_count`` times (nulls and '' excluded)."""
    counts, _ = _category_counts(df, "v", [decl])
    return sorted(v for v, n in counts.get(f"v_{decl.column}", {}).items() if n >= min_count)


_TO_PYTHON = {"int": int, "bigint": int, "smallint": int, "tinyint": int, "boolean": lambda v: v == "true"}


def _category_counts(frame: DataFrame, side: str, decls: Sequence[FeatureDecl]):
    """Counts of every categorical value and the longest list of each multi-valued column, in two jobs.

    Returns:
        ({"{side}_{column}": {value: count}}, {"{side}_{column}": longest list (>= 1)}).
    """
    parts, types = [], {}
    for d in decls:
        if d.kind == "continuous":
            continue
        name = f"{side}_{d.column}"
        values = frame.select(_values_column(d).alias("v"))
        types[name] = dict(values.dtypes)["v"]
        values = values.select(F.lit(name).alias("feature"), F.col("v").cast("string").alias("v"))
        parts.append(values.filter(F.col("v").isNotNull()).withColumn("v", F.trim("v")).filter(F.col("v") != ""))
    if not parts:
        return {}, {}
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    counts: dict[str, dict] = {}
    for row in union.groupBy("feature", "v").count().collect():
        convert = _TO_PYTHON.get(types[row["feature"]], str)
        counts.setdefault(row["feature"], {})[convert(row["v"])] = int(row["count"])
    multi = [d for d in decls if d.kind == "multi_categorical"]
    lengths = {}
    if multi:
        longest = frame.agg(
            *[F.max(F.size(F.split(F.col(d.column).cast("string"), re.escape(d.separator)))) for d in multi]
        ).first()
        lengths = {f"{side}_{d.column}": max(1, int(n or 1)) for d, n in zip(multi, longest)}
    return counts, lengths


def _lookup_map(vocab: Sequence):
    pairs = []
    for index, value in enumerate(vocab, start=FIRST_INDEX):
        pairs += [F.lit(value), F.lit(index)]
    return F.create_map(*pairs) if pairs else None


def encode_categorical(df: DataFrame, decl: FeatureDecl, vocab: Sequence, output_col: str) -> DataFrame:
    """Add ``output_col`` with the vocabulary index of ``decl.column``.

    Scalar: int (0 null, 1 unseen, 2.. known). Multi-valued: array<int>,
    ``[0]`` for a null or empty list.
    """
    spark = df.sparkSession
    col = F.col(decl.column)
    if decl.kind == "multi_categorical":
        mapping = _lookup_map(vocab)
        tokens = F.filter(
            F.transform(F.split(col.cast("string"), re.escape(decl.separator)), lambda t: F.trim(t)),
            lambda t: t != "",
        )
        lookup = (lambda t: F.coalesce(F.try_element_at(mapping, t), F.lit(UNSEEN_INDEX))) if mapping is not None else (
            lambda t: F.lit(UNSEEN_INDEX)
        )
        encoded = F.transform(tokens, lookup)
        encoded = F.when(col.isNull() | (F.size(encoded) == 0), F.array(F.lit(NULL_INDEX))).otherwise(encoded)
        return df.withColumn(output_col, encoded.cast("array<int>"))
    key = F.substring(col.cast("string"), 1, decl.prefix) if decl.prefix else col
    is_null = key.isNull()
    if dict(df.select(key.alias("k")).dtypes)["k"] == "string":
        key = F.trim(key)
        is_null = is_null | (key == "")
    if len(vocab) <= _MAP_LITERAL_LIMIT:
        mapping = _lookup_map(vocab)
        found = F.try_element_at(mapping, key) if mapping is not None else F.lit(None)
        index = F.when(is_null, F.lit(NULL_INDEX)).otherwise(F.coalesce(found, F.lit(UNSEEN_INDEX)))
        return df.withColumn(output_col, index.cast("int"))
    key_type = dict(df.select(key.alias("k")).dtypes)["k"]
    table = spark.createDataFrame(
        [(v, i) for i, v in enumerate(vocab, start=FIRST_INDEX)], f"_key {key_type}, _index int"
    )
    joined = df.withColumn("_key", key).join(F.broadcast(table), on="_key", how="left")
    index = F.when(F.col("_key").isNull(), F.lit(NULL_INDEX)).otherwise(F.coalesce("_index", F.lit(UNSEEN_INDEX)))
    return joined.withColumn(output_col, index.cast("int")).drop("_key", "_index")


# -- the fitted state -----------------------------------------------------------------------------
@dataclasses.dataclass
class FeatureState:
    """Everything fitted on the training window that scoring needs again.

    Attributes:
        user_vocab, item_vocab: sorted ids known to the model.
        vocabs: output column -> sorted vocabulary of a categorical feature.
        scalers: continuous column -> {"mean", "std", "impute"} (after log1p for counts).
        decls: "user"/"item" -> the FeatureDecl list (as dicts).
        global_mean: mean training rating.
        max_multi_len: output column -> longest index list in training.
        as_of: end of the window (ISO timestamp) the "days since" features count to.
        quantiles: probabilities of the rating quantiles.
        rating_grid: sorted rating values of the quantile histogram.
        affinity_column, affinity: the items' column and values of the user genre affinity.
        continuous: "user"/"item" -> continuous columns in model-spec order.
        imputer: "user"/"item" -> fitted IterativeImputer parameters, or None (univariate).
        example_statistics: how the training examples' statistics are computed
            ("leave_one_out" or "point_in_time", see ``FeatureSettings``).
    """

    user_vocab: list
    item_vocab: list
    vocabs: dict[str, list]
    scalers: dict[str, dict[str, float]]
    decls: dict[str, list[dict]]
    global_mean: float
    max_multi_len: dict[str, int]
    as_of: str = ""
    quantiles: list[float] = dataclasses.field(default_factory=list)
    rating_grid: list[float] = dataclasses.field(default_factory=lambda: [0.0])
    affinity_column: str | None = None
    affinity: list = dataclasses.field(default_factory=list)
    continuous: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {"user": [], "item": []})
    imputer: dict[str, dict | None] = dataclasses.field(default_factory=lambda: {"user": None, "item": None})
    example_statistics: str = "leave_one_out"

    def side_decls(self, side: str) -> list[FeatureDecl]:
        return [FeatureDecl(**d) for d in self.decls[side]]

    def layout(self, side: str) -> fs.StatLayout:
        """Which history statistics ``side`` has."""
        affinity = tuple(fs.affinity_slugs(self.affinity)) if side == "user" else ()
        return fs.StatLayout(side, tuple(self.quantiles), tuple(self.rating_grid), affinity)

    def finalizer(self, side: str) -> fs.Finalizer:
        names = self.continuous[side]
        return fs.Finalizer(
            names=list(names),
            impute=[self.scalers[n]["impute"] for n in names],
            mean=[self.scalers[n]["mean"] for n in names],
            std=[self.scalers[n]["std"] for n in names],
            iterative=self.imputer.get(side),
        )

    def as_of_us(self) -> int:
        return int(dt.datetime.fromisoformat(self.as_of).timestamp() * 1_000_000)

    def model_spec(self) -> dict[str, Any]:
        """The model input contract (plain dict; ``models/`` reads it).

        Returns:
            {"user": side, "item": side} where side =
            {"id": {"name", "vocab_size"}, "categorical": [{"name", "vocab_size"}],
             "multi_categorical": [{"name", "vocab_size", "max_len"}], "continuous": [name]}.
        """
        spec = {}
        for side, vocab in (("user", self.user_vocab), ("item", self.item_vocab)):
            entry = {
                "id": {"name": f"{side}_idx", "vocab_size": len(vocab) + FIRST_INDEX},
                "categorical": [],
                "multi_categorical": [],
                "continuous": list(self.continuous[side]),
            }
            for d in self.side_decls(side):
                name = f"{side}_{d.column}"
                if d.kind == "categorical":
                    entry["categorical"].append({"name": name, "vocab_size": len(self.vocabs[name]) + FIRST_INDEX})
                elif d.kind == "multi_categorical":
                    entry["multi_categorical"].append(
                        {
                            "name": name,
                            "vocab_size": len(self.vocabs[name]) + FIRST_INDEX,
                            "max_len": self.max_multi_len[name],
                        }
                    )
            spec[side] = entry
        return spec

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> "FeatureState":
        return cls(**json.loads(text))


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


# -- side tables: every entity with its static (non-history) columns ----------------------------------
def _entity_base(ids: DataFrame, table: DataFrame | None, key: str) -> DataFrame:
    """Every entity in the side table or among ``ids`` (one row each)."""
    if table is None:
        return ids
    return table.join(ids, on=key, how="full_outer")


def _ids(spark: SparkSession, values: Sequence, field: T.StructField, index: str | None = None) -> DataFrame:
    """A DataFrame of ids (e.g. a vocabulary) with the type of ``field``.

    With ``index``, a second column of that name holds each id's vocabulary
    index (``values`` must then be the vocabulary itself: FIRST_INDEX, FIRST_INDEX + 1, ...).
    """
    arrow_type = pa.int64() if isinstance(field.dataType, T.IntegralType) else pa.string()
    columns = {field.name: pa.array(list(values), type=arrow_type)}
    if index:
        columns[index] = pa.array(np.arange(FIRST_INDEX, FIRST_INDEX + len(values), dtype=np.int32))
    out = [F.col(field.name).cast(field.dataType)] + ([F.col(index)] if index else [])
    return spark.createDataFrame(pa.table(columns)).select(*out)


def _affinity_mask(col, values: Sequence, separator: str):
    """Bit mask (bigint) of the affinity values present in a separated string column."""
    mapping = _lookup_map(values)
    if mapping is None:
        return F.lit(0).cast("bigint")
    tokens = F.transform(F.split(F.coalesce(col.cast("string"), F.lit("")), re.escape(separator)), lambda t: F.trim(t))
    # 2^bit is exact in a double for bit <= 62
    bits = F.transform(
        tokens,
        lambda t: F.coalesce(
            F.pow(F.lit(2.0), F.try_element_at(mapping, t) - F.lit(FIRST_INDEX)).cast("bigint"), F.lit(0).cast("bigint")
        ),
    )
    return F.aggregate(F.array_distinct(bits), F.lit(0).cast("bigint"), lambda acc, b: acc.bitwiseOR(b))


def side_static(ids: DataFrame, table: DataFrame | None, state: FeatureState, side: str) -> DataFrame:
    """Every user (or item) of ``table`` or ``ids`` with its encoded non-history columns.

    Args:
        ids: DataFrame[{side}_id] of the entities with events (one row each),
            or DataFrame[{side}_id, {side}_idx] when they are the whole
            vocabulary (``_ids(..., index=...)``: no lookup needed).

    Returns:
        DataFrame[{side}_id, {side}_idx: int, one column per declared feature
        named {side}_{column} (categorical int, multi-valued array<int>,
        continuous double NOT yet imputed or scaled), and for items
        ``_affinity_mask`` (bigint)].
    """
    key = f"{side}_id"
    decls = state.side_decls(side)
    vocab = state.user_vocab if side == "user" else state.item_vocab
    frame = _entity_base(ids, table, key)
    if f"{side}_idx" in ids.columns:  # entities only in the side table are unseen
        index = F.when(F.col(key).isNull(), F.lit(NULL_INDEX)).otherwise(F.coalesce(f"{side}_idx", F.lit(UNSEEN_INDEX)))
        frame = frame.withColumn(f"{side}_idx", index.cast("int"))
    else:
        frame = encode_categorical(frame, FeatureDecl(key, "categorical"), vocab, f"{side}_idx")
    out = [F.col(key), F.col(f"{side}_idx")]
    for d in decls:
        name = f"{side}_{d.column}"
        if d.kind == "continuous":
            out.append(F.col(d.column).cast("double").alias(name))
        else:
            frame = encode_categorical(frame, d, state.vocabs[name], f"__{name}")
            out.append(F.col(f"__{name}").alias(name))
    if side == "item":
        affinity = next((d for d in decls if d.column == state.affinity_column), None)
        mask = _affinity_mask(F.col(affinity.column), state.affinity, affinity.separator) if affinity else F.lit(0)
        out.append(mask.cast("bigint").alias(MASK_COL))
    return frame.select(*out)


def attach_tags(items: DataFrame | None, tags: DataFrame, *, as_of: dt.datetime, max_per_item: int = 10) -> DataFrame:
    """Items with a ``tags`` column: the item's most used tags before ``as_of``, '|'-separated.

    Tags are lower-cased and trimmed ('|' inside a tag becomes '/'); an item
    keeps its ``max_per_item`` most frequent tags (ties: alphabetical).
    """
    clean = F.regexp_replace(F.lower(F.trim("tag")), r"\|", "/")
    counts = (
        tags.filter(F.col("ts") < F.lit(as_of))
        .select("item_id", clean.alias("tag"))
        .filter(F.col("tag") != "")
        .groupBy("item_id", "tag")
        .count()
    )
    by_use = Window.partitionBy("item_id").orderBy(F.col("count").desc(), F.col("tag"))
    ranked = counts.withColumn("_rank", F.row_number().over(by_use)).filter(F.col("_rank") <= max_per_item)
    per_item = ranked.groupBy("item_id").agg(
        F.array_join(F.transform(F.array_sort(F.collect_list(F.struct("_rank", "tag"))), lambda s: s["tag"]), "|").alias("tags")
    )
    if items is None:
        return per_item
    return items.join(per_item, on="item_id", how="left")


# -- statistics passes: Python workers over partitions of events ------------------------------------------
def _ts_us(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.int64()).to_numpy()


def _float(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy()


def _positions(values: pa.ChunkedArray, keys: pa.Array, what: str) -> np.ndarray:
    """Position of every value in ``keys`` (every value must be there)."""
    found = pc.index_in(values, value_set=keys)
    if found.null_count:
        raise ValueError(f"{what}: {found.null_count} events name an id missing from the side table")
    return found.to_numpy().astype(np.int64)


def _table(batches: Iterator[pa.RecordBatch]) -> pa.Table | None:
    batches = [b for b in batches if b.num_rows]
    return pa.Table.from_batches(batches) if batches else None


def _blocks(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """The batches regrouped into tables of at least ``rows`` rows (the last may be smaller; none empty)."""
    pending, n = [], 0
    for batch in batches:
        if batch.num_rows:
            pending.append(batch)
            n += batch.num_rows
        if n >= rows:
            yield pa.Table.from_batches(pending)
            pending, n = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _binary(records: np.ndarray) -> pa.Array:
    """[n] structured array -> binary array of n values of ``records.dtype.itemsize`` bytes each."""
    size = records.dtype.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(size), len(records), [None, pa.py_buffer(np.ascontiguousarray(records).tobytes())]
    ).cast(pa.binary())


def _nullable(values: np.ndarray) -> pa.Array:
    """float64 with NaN as null."""
    return pa.array(values, type=pa.float64(), from_pandas=True)


@dataclasses.dataclass
class _SidePass:
    """What a Python worker needs to compute one side's statistics (broadcast once).

    Attributes:
        side: "user" or "item".
        layout: the side's statistics.
        finalizer: imputation and scaling of the side's continuous columns (None while fitting).
        static: the side's static table (``side_static`` as Arrow).
        items: the items' static table (``side_static`` as Arrow, with the affinity masks).
        as_of_us: end of the window in microseconds.
        example_statistics: "leave_one_out" or "point_in_time" (the examples' statistics).
    """

    side: str
    layout: fs.StatLayout
    finalizer: fs.Finalizer | None
    static: pa.Table
    items: pa.Table
    as_of_us: int
    example_statistics: str = "leave_one_out"

    @property
    def key(self) -> str:
        return f"{self.side}_id"

    def static_columns(self, side: str | None = None) -> list[str]:
        """Static output columns of a side: the idx and the encoded categoricals (not the raw continuous)."""
        table = self.items if side == "item" else self.static
        key = f"{side or self.side}_id"
        return [c for c in table.column_names if c not in (key, MASK_COL) and table.schema.field(c).type != pa.float64()]

    def _sorted_events(self, table: pa.Table):
        """Events sorted by entity and time: (order, entity codes, ts us, rating, item positions)."""
        codes = _positions(table[self.key], self.static[self.key].combine_chunks(), self.side)
        ts = _ts_us(table["ts"])
        order = np.lexsort((ts, codes))
        items = _positions(table["item_id"], self.items["item_id"].combine_chunks(), "item")[order]
        return order, codes[order], ts[order], _float(table["rating"])[order], items

    def _masks(self, item_positions: np.ndarray) -> np.ndarray:
        if not self.layout.affinity:
            return np.zeros(len(item_positions), dtype=np.int64)
        return self.items[MASK_COL].to_numpy()[item_positions]

    def sufficient_record(self) -> np.dtype:
        return fs.sufficient_record(len(self.layout.grid), len(self.layout.affinity))

    def partial_totals(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Map side of the totals, on events in any order: ({side}_id, _packed) per entity of each block.

        _packed is the entity's sufficient statistics over the block's events
        (``sufficient_record``); blocks of ``PARTIAL_BLOCK_ROWS`` events bound the memory.
        """
        keys = self.static[self.key].combine_chunks()
        grid = np.asarray(self.layout.grid)
        record = self.sufficient_record()
        for table in _blocks(batches, PARTIAL_BLOCK_ROWS):
            codes = _positions(table[self.key], keys, self.side)
            order = np.argsort(codes, kind="stable")
            codes, ts, rating = codes[order], _ts_us(table["ts"])[order], _float(table["rating"])[order]
            mask = self._masks(_positions(table["item_id"], self.items["item_id"].combine_chunks(), "item")[order])
            for lo, hi in fs.chunks(codes, fs.CHUNK_ROWS):
                starts, suff = fs.total_sufficient(
                    codes[lo:hi], ts[lo:hi], rating[lo:hi], grid, mask[lo:hi], len(self.layout.affinity)
                )
                ids = keys.take(pa.array(codes[lo:hi][starts]))
                yield pa.RecordBatch.from_arrays([ids, _binary(fs.pack_sufficient(suff, record))],
                                                 names=[self.key, PACKED_COL])

    def totals(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Reduce side of the totals: per entity of the partition, {side}_id and its raw statistics.

        Input: ``partial_totals`` rows, partitioned by entity.
        """
        table = _table(batches)
        if table is None:
            return
        keys = self.static[self.key].combine_chunks()
        codes = _positions(table[self.key], keys, self.side)
        order = np.argsort(codes, kind="stable")
        codes, parts = codes[order], _unpack(table[PACKED_COL], self.sufficient_record())[order]
        names = self.layout.names()
        for lo, hi in fs.chunks(codes, fs.CHUNK_ROWS):
            starts, suff = fs.combine_sufficient(codes[lo:hi], parts[lo:hi])
            stats = fs.statistics(suff, float(self.as_of_us), self.layout)
            ids = keys.take(pa.array(codes[lo:hi][starts]))
            yield pa.RecordBatch.from_arrays([ids] + [_nullable(stats[n]) for n in names], names=[self.key] + names)

    def _continuous(self, codes: np.ndarray, ts: np.ndarray, rating: np.ndarray, items: np.ndarray, lo: int, hi: int):
        """Imputed, scaled continuous columns of events [lo, hi) (whole entities, sorted by time).

        Statistics of the entity's other events ("leave_one_out", counted to
        the end of the window) or of its strictly earlier ones ("point_in_time",
        counted to the event).
        """
        point_in_time = self.example_statistics == "point_in_time"
        sufficient = fs.prefix_sufficient if point_in_time else fs.leave_one_out_sufficient
        suff = sufficient(
            codes[lo:hi], ts[lo:hi], rating[lo:hi], np.asarray(self.layout.grid), self._masks(items[lo:hi]),
            len(self.layout.affinity),
        )
        raw = fs.statistics(suff, ts[lo:hi].astype(np.float64) if point_in_time else float(self.as_of_us), self.layout)
        declared = [n for n in self.finalizer.names if n in self.static.column_names]
        static = self.static.select(declared).take(pa.array(codes[lo:hi]))
        raw.update({n: _float(static[n]) for n in declared})
        return self.finalizer(raw)

    def packed_type(self) -> np.dtype:
        """The record the item pass packs per event: ts, rating and the item statistics."""
        return np.dtype([("ts", "<i8"), ("rating", "<f8"), ("stats", "<f4", (len(self.finalizer.names),))])

    def item_examples(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Item pass: (user_id, item_id, _packed) per event, _packed = ts, rating and the item statistics.

        Packing the numbers into one binary column makes the following
        shuffle by user several times cheaper than one column per statistic.
        """
        table = _table(batches)
        if table is None:
            return
        order, codes, ts, rating, items = self._sorted_events(table)
        table = table.select(["user_id", "item_id"]).take(pa.array(order))
        record = self.packed_type()
        for lo, hi in fs.chunks(codes, fs.CHUNK_ROWS):
            cont = self._continuous(codes, ts, rating, items, lo, hi)
            packed = np.empty(hi - lo, dtype=record)
            packed["ts"], packed["rating"] = ts[lo:hi], rating[lo:hi]
            for j, name in enumerate(self.finalizer.names):
                packed["stats"][:, j] = cont[name]
            yield pa.RecordBatch.from_arrays(
                [table["user_id"].slice(lo, hi - lo).combine_chunks(), table["item_id"].slice(lo, hi - lo).combine_chunks(),
                 _binary(packed)],
                names=["user_id", "item_id", PACKED_COL],
            )

    def user_examples(
        self, batches: Iterator[pa.RecordBatch], columns: Sequence[str], item_record: np.dtype, item_names: Sequence[str]
    ) -> Iterator[pa.RecordBatch]:
        """User pass over the item pass's output: the finished examples, sorted by user and time.

        Yields:
            Record batches of ``columns``: user_id, item_id, rating (float),
            ts, the user's static and continuous columns (from the user's other events)
            and the item's (looked up, and unpacked).
        """
        table = _table(batches)
        if table is None:
            return
        packed = _unpack(table[PACKED_COL], item_record)
        codes = _positions(table["user_id"], self.static["user_id"].combine_chunks(), "user")
        order = np.lexsort((packed["ts"], codes))
        codes, packed = codes[order], packed[order]
        ts, rating = packed["ts"], packed["rating"]
        items = _positions(table["item_id"], self.items["item_id"].combine_chunks(), "item")[order]
        table = table.select(["user_id", "item_id"]).take(pa.array(order))
        user_static = [c for c in self.static_columns() if c in columns]
        item_static = [c for c in self.static_columns("item") if c in columns]
        for lo, hi in fs.chunks(codes, fs.CHUNK_ROWS):
            out = {
                "user_id": table["user_id"].slice(lo, hi - lo),
                "item_id": table["item_id"].slice(lo, hi - lo),
                "rating": pa.array(rating[lo:hi].astype(np.float32), from_pandas=True),
                "ts": pa.array(ts[lo:hi], type=pa.timestamp("us", tz="UTC")),
            }
            static = self.static.select(user_static).take(pa.array(codes[lo:hi]))
            out.update({c: static[c] for c in user_static})
            out.update({n: pa.array(v) for n, v in self._continuous(codes, ts, rating, items, lo, hi).items()})
            looked_up = self.items.select(item_static).take(pa.array(items[lo:hi]))
            out.update({c: looked_up[c] for c in item_static})
            out.update({n: pa.array(np.ascontiguousarray(packed["stats"][lo:hi, j])) for j, n in enumerate(item_names)})
            yield pa.Table.from_pydict({n: out[n] for n in columns}).combine_chunks().to_batches()[0]


def _unpack(column: pa.ChunkedArray, record: np.dtype) -> np.ndarray:
    """Binary values of ``record.itemsize`` bytes each -> a structured array of ``record``."""
    array = column.combine_chunks()
    offsets_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offsets_type)[array.offset:array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    if len(data) != len(array) * record.itemsize:
        raise ValueError(f"packed item statistics: expected {record.itemsize} bytes per row")
    return data.view(record)


def _struct(fields: Sequence[T.StructField]) -> T.StructType:
    return T.StructType(list(fields))


def _n_partitions(spark: SparkSession, rows: int, rows_per_partition: int) -> int:
    return max(spark.sparkContext.defaultParallelism, math.ceil(rows / max(1, rows_per_partition)))


def _static_arrow(user_static: DataFrame | None, item_static: DataFrame) -> dict[str, pa.Table]:
    """The static tables collected to the driver (Arrow): "item" and, with ``user_static``, "user"."""
    items = item_static.toArrow()
    return {"item": items} if user_static is None else {"user": user_static.toArrow(), "item": items}


def _side_passes(spark: SparkSession, state: FeatureState, statics: Mapping[str, pa.Table], fitted: bool
                 ) -> dict[str, tuple[Any, _SidePass]]:
    """The broadcast ``_SidePass`` of each side of ``statics``: "user"/"item" -> (broadcast, the pass)."""
    out = {}
    for side, static in statics.items():
        side_pass = _SidePass(
            side=side,
            layout=state.layout(side),
            finalizer=state.finalizer(side) if fitted else None,
            static=static,
            items=statics["item"],
            as_of_us=state.as_of_us(),
            example_statistics=state.example_statistics,
        )
        out[side] = (spark.sparkContext.broadcast(side_pass), side_pass)
    return out


def _totals(
    events: DataFrame, bc, side_pass: _SidePass, static: DataFrame, partitions: int, n_events: int,
    pre_aggregate: bool | None = None,
) -> DataFrame:
    """DataFrame[{side}_id, raw statistics (double, null where undefined)] over ``events``.

    Each block of events is first added up per entity
    (``_SidePass.partial_totals``), then the partial sums of an entity are
    combined (``_SidePass.totals``). With ``pre_aggregate`` (default: when
    the partial sums are expected to be fewer than half the events) the
    blocks are the input partitions' and only the partial sums are shuffled
    by entity; without it the events are shuffled.
    """
    key_field = static.schema[side_pass.key]
    partial = _struct([key_field, T.StructField(PACKED_COL, T.BinaryType())])
    schema = _struct([key_field] + [T.StructField(n, T.DoubleType()) for n in side_pass.layout.names()])
    events = events.select("user_id", "item_id", "rating", "ts")
    if pre_aggregate is None:
        blocks = events.rdd.getNumPartitions() + n_events // PARTIAL_BLOCK_ROWS
        pre_aggregate = side_pass.static.num_rows * blocks <= n_events // 2
    to_partial = lambda batches: bc.value.partial_totals(batches)  # noqa: E731
    if pre_aggregate:
        parts = events.mapInArrow(to_partial, partial).repartition(partitions, side_pass.key)
    else:
        parts = events.repartition(partitions, side_pass.key).mapInArrow(to_partial, partial)
    return parts.mapInArrow(lambda batches: bc.value.totals(batches), schema)


def _with_totals(static: DataFrame, totals: DataFrame, side: str) -> DataFrame:
    """Every entity of ``static`` with its statistics; an entity without events has count 0."""
    return static.join(totals, on=f"{side}_id", how="left").fillna(0.0, subset=[f"{side}_rating_count"])


def _finalize_entities(frame: DataFrame, state: FeatureState, side: str, static: DataFrame) -> DataFrame:
    """Impute and scale the continuous columns of entity rows; drop the raw ones.

    Returns:
        DataFrame[{side}_id, {side}_idx, categoricals, continuous float].
    """
    finalizer = state.finalizer(side)
    keep = [c for c in static.columns if c not in set(finalizer.names) | {MASK_COL}]
    fields = [static.schema[c] for c in keep] + [T.StructField(n, T.FloatType()) for n in finalizer.names]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            raw = {n: _float(pa.chunked_array([batch.column(n)])) for n in finalizer.names}
            cont = finalizer(raw)
            arrays = [batch.column(c) for c in keep] + [pa.array(cont[n]) for n in finalizer.names]
            yield pa.RecordBatch.from_arrays(arrays, names=keep + finalizer.names)

    return frame.select(*keep, *finalizer.names).mapInArrow(run, _struct(fields))


# -- fitting -----------------------------------------------------------------------------------------------
def _rating_grid(train: DataFrame, grid_size: int) -> list[float]:
    ratings = train.select(F.col("rating").cast("double").alias("r")).filter(F.col("r").isNotNull())
    distinct = [r["r"] for r in ratings.distinct().limit(grid_size + 1).collect()]
    if not distinct:
        return [0.0]
    if len(distinct) <= grid_size:
        return sorted(distinct)
    probabilities = [i / (grid_size - 1) for i in range(grid_size)]
    return sorted(set(ratings.approxQuantile("r", probabilities, 1e-4)))


def _fit_scalers(frame: DataFrame, names: Sequence[str], impute: str) -> dict[str, dict[str, float]]:
    """Mean, population std and imputation value of each continuous column (after log1p for counts).

    Moments are computed per partition in NumPy and combined on the driver
    (one narrow job, however many columns); the median, when asked for, with
    Spark's percentile_approx (accuracy 10000).
    """
    if not names:
        return {}

    def moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            stats = [fs.moments(fs.transform(n, _float(pa.chunked_array([batch.column(n)])))) for n in names]
            yield pa.RecordBatch.from_arrays(
                [pa.array(list(names)), *[pa.array([float(s[k]) for s in stats]) for k in range(3)]],
                names=["name", "n", "mean", "m2"],
            )

    parts = frame.select(*names).mapInArrow(moments, "name string, n double, mean double, m2 double").collect()
    combined = {name: (0.0, 0.0, 0.0) for name in names}
    for row in parts:
        combined[row["name"]] = fs.combine_moments(combined[row["name"]], (row["n"], row["mean"], row["m2"]))
    medians = {}
    if impute == "median":
        aggs = [
            F.percentile_approx(F.log1p(F.col(n)) if fs.is_log_column(n) else F.col(n), 0.5, 10000).alias(f"q{i}")
            for i, n in enumerate(names)
        ]
        row = frame.agg(*aggs).first()
        medians = {n: row[f"q{i}"] for i, n in enumerate(names)}
    scalers = {}
    for name in names:
        n, mean, m2 = combined[name]
        value = medians.get(name, mean if n else None)
        scalers[name] = {
            "mean": mean if n else 0.0,
            "std": fs.safe_std(math.sqrt(m2 / n) if n else None),
            "impute": float(value) if value is not None else 0.0,
        }
    return scalers


def _fit_iterative(frame: DataFrame, names: Sequence[str], rows: int, settings: FeatureSettings) -> dict | None:
    """IterativeImputer fitted on the driver on a seeded sample of the training entities."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    if not names or rows == 0:
        return None
    fraction = min(1.0, settings.iterative_sample_rows / rows)
    sample = frame.select(*names).sample(fraction=fraction, seed=settings.seed).toArrow()
    if sample.num_rows == 0:
        return None
    x = np.column_stack([fs.transform(n, _float(sample[n])) for n in names])
    imputer = IterativeImputer(
        max_iter=settings.iterative_max_iter, random_state=settings.seed, keep_empty_features=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        imputer.fit(x)
    return fs.iterative_params(imputer)


@dataclasses.dataclass
class FeatureTables:
    """Output of ``fit_transform``.

    Attributes:
        state: the fitted state.
        user_features, item_features: ``build_side_features`` output for every
            user (item) of the side table or the training events.
        n_events: the number of training events.
        statics: "user"/"item" -> the side's static table (``side_static``)
            collected as Arrow, reused by ``training_examples``.
        static_schemas: "user"/"item" -> the Spark schema of that table.
    """

    state: FeatureState
    user_features: DataFrame
    item_features: DataFrame
    cached: list[DataFrame] = dataclasses.field(default_factory=list)
    n_events: int = 0
    statics: dict[str, pa.Table] = dataclasses.field(default_factory=dict)
    static_schemas: dict[str, T.StructType] = dataclasses.field(default_factory=dict)

    def release(self) -> None:
        """Drop the cached entity frames (after the tables are written)."""
        for frame in self.cached:
            frame.unpersist()


def fit_transform(
    train: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    *,
    user_decls: Sequence[FeatureDecl],
    item_decls: Sequence[FeatureDecl],
    as_of: dt.datetime | None = None,
    settings: FeatureSettings = FeatureSettings(),
    on_step: Callable[[str], None] | None = None,
) -> FeatureTables:
    """Fit the feature state on the training window and build the feature tables.

    Args:
        train: training events (user_id, item_id, rating, ts), all before ``as_of``.
        users, items: side tables (may be None); only entities seen in
            ``train`` contribute to vocabularies, scalers and imputers.
        user_decls, item_decls: which side columns to use and how (columns
            missing from the table are skipped).
        as_of: the end of the training window ("days since" count to it);
            None: midnight UTC after the last training event.
        settings: the ``features`` config.
        on_step: called with the name of each fitting step as it finishes (for benchmarks).
    """
    spark = train.sparkSession
    step = on_step or (lambda name: None)
    user_decls = [d for d in user_decls if users is not None and d.column in users.columns]
    item_decls = [d for d in item_decls if items is not None and d.column in items.columns]
    vocabs: dict[str, list] = {}
    max_len: dict[str, int] = {}
    affinity: list = []
    affinity_decl = next(
        (d for d in item_decls if d.column == settings.affinity_column and d.kind == "multi_categorical"), None
    )
    # One aggregation gives the user ids and the window's totals; the item ids come from a second.
    per_user = train.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n"), F.sum("rating").alias("rating_sum"), F.count("rating").alias("n_rated"),
        F.max("ts").alias("last_ts"),
    ).toArrow()
    id_vocab = {
        "user_id": sorted(per_user["user_id"].to_pylist()),
        "item_id": sorted(train.select("item_id").distinct().toArrow()["item_id"].to_pylist()),
    }
    id_frames = {key: _ids(spark, vocab, train.schema[key], index=key.replace("_id", "_idx")).cache()
                 for key, vocab in id_vocab.items()}
    user_ids, item_ids = id_frames["user_id"], id_frames["item_id"]
    for side, key, table, decls in (("user", "user_id", users, user_decls), ("item", "item_id", items, item_decls)):
        if table is None:
            continue
        frame = table.join(id_frames[key], on=key, how="inner")
        counts, lengths = _category_counts(frame, side, decls)
        max_len.update(lengths)
        for d in decls:
            name = f"{side}_{d.column}"
            if d.kind == "continuous":
                continue
            vocabs[name] = sorted(v for v, n in counts.get(name, {}).items() if n >= settings.min_count)
            if d is affinity_decl:
                by_use = sorted(counts.get(name, {}).items(), key=lambda vn: (-vn[1], vn[0]))
                affinity = sorted(v for v, _ in by_use[:MAX_AFFINITY_VALUES])
    n_train = int(pc.sum(per_user["n"]).as_py() or 0)
    n_rated = int(pc.sum(per_user["n_rated"]).as_py() or 0)
    global_mean = pc.sum(per_user["rating_sum"]).as_py() / n_rated if n_rated else None
    last_ts = pc.max(per_user["last_ts"]).as_py()
    if as_of is None:
        if last_ts is None:
            last_day = dt.date(1969, 12, 31)
        else:  # the UTC day (a timestamp_ntz column comes back naive)
            last_day = (last_ts if last_ts.tzinfo is None else last_ts.astimezone(dt.timezone.utc)).date()
        as_of = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    state = FeatureState(
        user_vocab=id_vocab["user_id"],
        item_vocab=id_vocab["item_id"],
        vocabs=vocabs,
        scalers={},
        decls={"user": [dataclasses.asdict(d) for d in user_decls], "item": [dataclasses.asdict(d) for d in item_decls]},
        global_mean=float(global_mean) if global_mean is not None else 0.0,
        max_multi_len=max_len,
        as_of=as_of.astimezone(dt.timezone.utc).isoformat(),
        quantiles=[float(q) for q in settings.quantiles],
        rating_grid=_rating_grid(train, settings.grid_size),
        affinity_column=affinity_decl.column if affinity_decl else None,
        affinity=affinity,
        example_statistics=settings.example_statistics,
    )
    step("fit vocabularies, rating grid")
    partitions = _n_partitions(spark, n_train, settings.rows_per_partition)
    item_static = side_static(item_ids, items, state, "item").cache()
    user_static = side_static(user_ids, users, state, "user").cache()
    statics = _static_arrow(user_static, item_static)
    passes = _side_passes(spark, state, statics, fitted=False)
    raw_frames = {}
    for side, static in (("user", user_static), ("item", item_static)):
        bc, side_pass = passes[side]
        totals = _totals(train, bc, side_pass, static, partitions, n_train)
        frame = _with_totals(static, totals, side).cache()
        declared = [f"{side}_{d.column}" for d in state.side_decls(side) if d.kind == "continuous"]
        names = side_pass.layout.names() + declared
        trained = frame.filter(F.col(f"{side}_idx") >= FIRST_INDEX)
        state.scalers.update(_fit_scalers(trained, names, settings.impute))
        state.continuous[side] = names
        if settings.imputer == "iterative":
            rows = len(state.user_vocab if side == "user" else state.item_vocab)
            state.imputer[side] = _fit_iterative(trained, names, rows, settings)
        raw_frames[side] = (frame, static)
        step(f"fit {side} statistics, scalers, imputer")
    tables = {side: _finalize_entities(frame, state, side, static) for side, (frame, static) in raw_frames.items()}
    cached = [user_ids, item_ids, item_static, user_static] + [frame for frame, _ in raw_frames.values()]
    return FeatureTables(
        state=state, user_features=tables["user"], item_features=tables["item"], cached=cached, n_events=n_train,
        statics=statics, static_schemas={"user": user_static.schema, "item": item_static.schema},
    )


def fit_feature_state(train: DataFrame, users: DataFrame | None, items: DataFrame | None, **kwargs) -> FeatureState:
    """Fit vocabularies, rating grid, scalers and imputers on the training window only.

    Takes the arguments of ``fit_transform`` and returns its state (the
    feature tables are not computed unless used).
    """
    return fit_transform(train, users, items, **kwargs).state


# -- applying a fitted state ------------------------------------------------------------------------------------
def build_side_features(
    events: DataFrame,
    table: DataFrame | None,
    state: FeatureState,
    side: Literal["user", "item"],
    *,
    items: DataFrame | None = None,
    rows_per_partition: int = 500_000,
) -> DataFrame:
    """Encoded, imputed and scaled features of every user (or item) in ``table`` or ``events``.

    Statistics come from all of ``events`` (the training window at scoring
    time), counted to ``state.as_of``; entities without events get imputed
    values. Categories unseen in training map to index 1, nulls to 0.

    Args:
        events: DataFrame[user_id, item_id, rating, ts].
        table: the side's table (users or items), or None.
        state: the fitted state.
        side: "user" or "item".
        items: the items table, needed for the user genre affinity.

    Returns:
        DataFrame[{side}_id (source type), {side}_idx: int, categoricals int,
        multi-valued array<int>, every continuous column of the side's spec: float].
    """
    spark = events.sparkSession
    if side == "user" and state.affinity and items is None:
        raise ValueError("build_side_features(side='user'): the user genre affinity needs the items table (items=...)")
    ids = {s: events.select(f"{s}_id").distinct() for s in ("user", "item")}
    item_static = side_static(ids["item"], items if side == "user" else table, state, "item")
    static = item_static if side == "item" else side_static(ids["user"], table, state, "user")
    statics = _static_arrow(static if side == "user" else None, item_static)
    bc, side_pass = _side_passes(spark, state, statics, fitted=True)[side]
    n_events = events.count()
    totals = _totals(events, bc, side_pass, static, _n_partitions(spark, n_events, rows_per_partition), n_events)
    return _finalize_entities(_with_totals(static, totals, side), state, side, static)


def _example_passes(
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
    item table. ``tables`` (the ``fit_transform`` output ``state`` comes from)
    saves building and collecting the static tables and counting the events again.

    Returns:
        (the item pass's output partitioned by user, the user pass as a
        function of record batches, the schema of the examples).
    """
    spark = train.sparkSession
    events = train.select("user_id", "item_id", "rating", "ts")
    if tables is not None and tables.statics.keys() == {"user", "item"}:
        fitted = tables.state
        if (fitted.user_vocab, fitted.item_vocab, fitted.vocabs, fitted.affinity) != (
            state.user_vocab, state.item_vocab, state.vocabs, state.affinity
        ):
            raise ValueError("training examples: `tables` come from another fit than `state` (their vocabularies "
                             "differ); pass the fit_transform output the state comes from, or no tables")
        statics, schemas, n_events = tables.statics, tables.static_schemas, tables.n_events
    else:
        item_static = side_static(_ids(spark, state.item_vocab, train.schema["item_id"], "item_idx"), items, state,
                                  "item")
        user_static = side_static(_ids(spark, state.user_vocab, train.schema["user_id"], "user_idx"), users, state,
                                  "user")
        statics = _static_arrow(user_static, item_static)
        schemas, n_events = {"user": user_static.schema, "item": item_static.schema}, events.count()
    partitions = _n_partitions(spark, n_events, rows_per_partition)
    passes = _side_passes(spark, state, statics, fitted=True)
    (item_bc, item_pass), (user_bc, user_pass) = passes["item"], passes["user"]
    packed = _struct([train.schema["user_id"], train.schema["item_id"], T.StructField(PACKED_COL, T.BinaryType())])
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

    return with_items.repartition(partitions, "user_id"), user_examples, _struct(fields)


def training_examples(
    train: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    state: FeatureState,
    *,
    rows_per_partition: int = 500_000,
    tables: FeatureTables | None = None,
) -> DataFrame:
    """One leakage-safe example per training event.

    ``train`` must be the events ``state`` was fitted on. Every statistic of
    an example is computed from the user's (item's) other events
    (``state.example_statistics``: all of the window's but the example's
    own, or those strictly before its timestamp), then imputed and scaled
    with the state's training-window values; the static columns are the same
    as in the feature tables. Pass ``tables``, the ``fit_transform`` output
    ``state`` comes from, to reuse its static tables.

    Returns:
        DataFrame[user_id, item_id, rating: float, ts, the user columns of
        the spec, the item columns of the spec].
    """
    shuffled, user_examples, schema = _example_passes(train, users, items, state, rows_per_partition, tables)
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


def write_feature_table(frame: DataFrame, path: str) -> None:
    """Write a feature table (``user_features``/``item_features``) as Parquet at ``path``, replacing it.

    Float columns are written without dictionary encoding: statistics are
    nearly all distinct, so the dictionary is built, hashed and dropped again
    (a fallback) for nothing; ids and categoricals keep it.
    """
    writer = frame.write.mode("overwrite")
    for field in frame.schema.fields:
        if isinstance(field.dataType, (T.FloatType, T.DoubleType)):
            writer = writer.option(f"parquet.enable.dictionary#{field.name}", "false")
    writer.parquet(path)


def _local_dir(path: str) -> str | None:
    if path.startswith("file://"):
        return path[len("file://"):]
    if path.startswith("file:"):
        return path[len("file:"):]
    return None if "://" in path else path


def write_training_examples(
    train: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    state: FeatureState,
    path: str,
    *,
    rows_per_partition: int = 500_000,
    tables: FeatureTables | None = None,
) -> int:
    """Write ``training_examples`` as Parquet at ``path``; returns the number of rows.

    On a local path every task writes its partition's file with pyarrow
    (``part-NNNNN.parquet``, written under a temporary name and renamed), which
    is several times faster than Spark's row-by-row Parquet writer for these
    wide float tables; elsewhere Spark's writer is used.
    """
    local = _local_dir(path)
    if local is None:
        examples = training_examples(train, users, items, state, rows_per_partition=rows_per_partition, tables=tables)
        examples.write.mode("overwrite").parquet(path)
        return examples.sparkSession.read.parquet(path).count()
    shuffled, user_examples, _ = _example_passes(train, users, items, state, rows_per_partition, tables)
    local = os.path.abspath(local)
    if os.path.exists(local):
        shutil.rmtree(local)
    os.makedirs(local)

    def run(batches):
        from pyspark import TaskContext

        import pyarrow.parquet as pq

        writer, rows, tmp = None, 0, None
        for batch in user_examples(batches):
            if writer is None:
                tmp = os.path.join(local, f".tmp-{uuid.uuid4().hex}.parquet")
                # dictionaries pay off for the ids and categoricals, not for the statistics
                encoded = [f.name for f in batch.schema if not (pa.types.is_floating(f.type) or pa.types.is_timestamp(f.type))]
                writer = pq.ParquetWriter(tmp, batch.schema, compression="snappy", use_dictionary=encoded)
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
            os.replace(tmp, os.path.join(local, f"part-{TaskContext.get().partitionId():05d}.parquet"))
        yield pa.RecordBatch.from_pydict({"rows": pa.array([rows], pa.int64())})

    return int(sum(r["rows"] for r in shuffled.mapInArrow(run, "rows long").collect()))
