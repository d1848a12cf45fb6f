"""Categorical encodings and the side tables' static columns.

Encoding convention for every categorical feature (ids included):
index 0 = null/empty (the 'unknown' category), index 1 = unseen or rarer than
``min_category_count``, indices 2.. = the vocabulary in sorted value order.
Sorted order makes the lower item id the lower index, which the top-K step
uses to break ties. Multi-valued categoricals (e.g. genres ``"Action|Comedy"``)
become arrays of indices; a null or empty list becomes ``[0]``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.features.state import FeatureSettings, FeatureState
from jobs.schema import FIRST_INDEX, NULL_INDEX, UNSEEN_INDEX, FeatureDecl

# Up to this many values a vocabulary is a map literal in the plan; beyond, a broadcast join.
_MAP_LITERAL_LIMIT = 5000
#: Genre affinity uses a 63-bit mask per item: at most this many values (the most frequent).
MAX_AFFINITY_VALUES = 63
#: The items' static column holding the affinity bit mask.
MASK_COL = "_affinity_mask"


# -- categorical vocabularies ---------------------------------------------------------------
def _values_column(decl: FeatureDecl):
    col = F.col(decl.column)
    if decl.kind == "multi_categorical":
        return F.explode(F.split(col.cast("string"), re.escape(decl.separator)))
    if decl.prefix:
        return F.substring(col.cast("string"), 1, decl.prefix)
    return col


def fit_vocabulary(df: DataFrame, decl: FeatureDecl, *, min_category_count: int = 1) -> list:
    """Sorted values of ``decl.column`` seen at least ``min_category_count`` times (nulls and '' excluded)."""
    counts, _ = category_counts(df, "v", [decl])
    return sorted(v for v, n in counts.get(f"v_{decl.column}", {}).items() if n >= min_category_count)


_TO_PYTHON = {"int": int, "bigint": int, "smallint": int, "tinyint": int, "boolean": lambda v: v == "true"}


def category_counts(frame: DataFrame, side: str, decls: Sequence[FeatureDecl]):
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


# -- side tables: every entity with its static (non-history) columns ----------------------------------
def _entity_base(ids: DataFrame, table: DataFrame | None, key: str) -> DataFrame:
    """Every entity in the side table or among ``ids`` (one row each)."""
    if table is None:
        return ids
    return table.join(ids, on=key, how="full_outer")


def id_frame(spark: SparkSession, values: Sequence, field: T.StructField, index: str | None = None) -> DataFrame:
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
            vocabulary (``id_frame(..., index=...)``: no lookup needed).

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


def attach_tags(
    items: DataFrame | None, tags: DataFrame, *, as_of: dt.datetime,
    max_tags_per_item: int = FeatureSettings.max_tags_per_item,
) -> DataFrame:
    """Items with a ``tags`` column: the item's most used tags before ``as_of``, '|'-separated.

    Tags are lower-cased and trimmed ('|' inside a tag becomes '/'); an item
    keeps its ``max_tags_per_item`` most frequent tags (ties: alphabetical).
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
    ranked = counts.withColumn("_rank", F.row_number().over(by_use)).filter(F.col("_rank") <= max_tags_per_item)
    per_item = ranked.groupBy("item_id").agg(
        F.array_join(F.transform(F.array_sort(F.collect_list(F.struct("_rank", "tag"))), lambda s: s["tag"]), "|").alias("tags")
    )
    if items is None:
        return per_item
    return items.join(per_item, on="item_id", how="left")

