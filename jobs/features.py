"""Features: statistics, encodings and scaling fitted on the training window.

Fitted state (``FeatureState``) is plain JSON: vocabularies, scaler
statistics and the model input spec. It is saved beside the model and reused
at scoring time, so users and items that arrive later are encoded the same way.

Encoding convention for every categorical feature (ids included):
index 0 = null/empty, index 1 = unseen or rarer than ``min_count``,
indices 2.. = the vocabulary in sorted value order. Sorted order makes the
lower item id the lower index, which the top-K step uses to break ties.

Multi-valued categoricals (e.g. genres ``"Action|Comedy"``) become arrays of
indices; a null or empty list becomes ``[0]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

NULL_INDEX = 0
UNSEEN_INDEX = 1
FIRST_INDEX = 2
_MAP_LITERAL_LIMIT = 5000

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


#: Side information of MovieLens-like data (the synthetic set, 100K and 1M).
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


# -- categorical vocabularies ---------------------------------------------------
def _values_column(df: DataFrame, decl: FeatureDecl):
    col = F.col(decl.column)
    if decl.kind == "multi_categorical":
        return F.explode(F.split(col.cast("string"), re.escape(decl.separator)))
    if decl.prefix:
        return F.substring(col.cast("string"), 1, decl.prefix)
    return col


def fit_vocabulary(df: DataFrame, decl: FeatureDecl, *, min_count: int = 1) -> list:
    """Sorted values of ``decl.column`` seen at least ``min_count`` times (nulls and '' excluded)."""
    values = df.select(_values_column(df, decl).alias("v")).filter(F.col("v").isNotNull())
    if dict(values.dtypes)["v"] == "string":
        values = values.filter(F.trim("v") != "")
    counts = values.groupBy("v").count().filter(F.col("count") >= min_count)
    return sorted(row["v"] for row in counts.collect())


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
        tokens = F.filter(F.split(col.cast("string"), re.escape(decl.separator)), lambda t: F.trim(t) != "")
        lookup = (lambda t: F.coalesce(F.try_element_at(mapping, t), F.lit(UNSEEN_INDEX))) if mapping is not None else (
            lambda t: F.lit(UNSEEN_INDEX)
        )
        encoded = F.transform(tokens, lookup)
        encoded = F.when(col.isNull() | (F.size(encoded) == 0), F.array(F.lit(NULL_INDEX))).otherwise(encoded)
        return df.withColumn(output_col, encoded.cast("array<int>"))
    key = F.substring(col.cast("string"), 1, decl.prefix) if decl.prefix else col
    is_null = key.isNull()
    if dict(df.select(key.alias("k")).dtypes)["k"] == "string":
        is_null = is_null | (F.trim(key) == "")
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


# -- statistics ------------------------------------------------------------------
def rating_stats(events: DataFrame, key: str, prefix: str) -> DataFrame:
    """Per-``key`` rating count and mean.

    Returns:
        DataFrame[key, {prefix}_rating_count: bigint, {prefix}_rating_mean: double].
    """
    return events.groupBy(key).agg(
        F.count(F.lit(1)).alias(f"{prefix}_rating_count"),
        F.avg("rating").alias(f"{prefix}_rating_mean"),
    )


# -- the fitted state ---------------------------------------------------------------
@dataclasses.dataclass
class FeatureState:
    """Everything fitted on the training window that scoring needs again.

    Attributes:
        user_vocab, item_vocab: sorted ids known to the model.
        vocabs: output column -> sorted vocabulary of a categorical feature.
        scalers: output column -> {"mean": m, "std": s} for continuous features.
        decls: "user"/"item" -> the FeatureDecl list (as dicts).
        global_mean: mean training rating (imputes missing rating means).
        max_multi_len: output column -> longest index list in training.
    """

    user_vocab: list
    item_vocab: list
    vocabs: dict[str, list]
    scalers: dict[str, dict[str, float]]
    decls: dict[str, list[dict]]
    global_mean: float
    max_multi_len: dict[str, int]

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
                "continuous": [f"{side}_rating_count", f"{side}_rating_mean"],
            }
            for d in self.decls[side]:
                name = f"{side}_{d['column']}"
                if d["kind"] == "continuous":
                    entry["continuous"].append(name)
                elif d["kind"] == "categorical":
                    entry["categorical"].append({"name": name, "vocab_size": len(self.vocabs[name]) + FIRST_INDEX})
                else:
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


def _decls(raw: Sequence[dict]) -> list[FeatureDecl]:
    return [FeatureDecl(**d) for d in raw]


def _entity_base(events: DataFrame, table: DataFrame | None, key: str) -> DataFrame:
    """Every entity in the side table or in the events (one row each)."""
    ids = events.select(key).distinct()
    if table is None:
        return ids
    return table.join(ids, on=key, how="full_outer")


def _side_frame(
    events: DataFrame, table: DataFrame | None, key: str, side: str, decls: Sequence[FeatureDecl]
) -> DataFrame:
    base = _entity_base(events, table, key)
    stats = rating_stats(events, key, side)
    frame = base.join(stats, on=key, how="left")
    keep = [key, f"{side}_rating_count", f"{side}_rating_mean"] + [d.column for d in decls]
    return frame.select(*keep)


def fit_feature_state(
    train: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    *,
    user_decls: Sequence[FeatureDecl],
    item_decls: Sequence[FeatureDecl],
    min_count: int = 1,
) -> FeatureState:
    """Fit vocabularies and scalers on the training window only.

    Args:
        train: training events (user_id, item_id, rating, ts).
        users, items: side tables (may be None); only entities seen in
            ``train`` contribute to vocabularies and scalers.
        user_decls, item_decls: which side columns to use and how.
        min_count: categories rarer than this map to the unseen index.
    """
    user_decls = [d for d in user_decls if users is not None and d.column in users.columns]
    item_decls = [d for d in item_decls if items is not None and d.column in items.columns]
    vocabs: dict[str, list] = {}
    scalers: dict[str, dict[str, float]] = {}
    max_len: dict[str, int] = {}
    global_mean = train.agg(F.avg("rating")).first()[0]
    global_mean = float(global_mean) if global_mean is not None else 0.0
    for side, key, table, decls in (("user", "user_id", users, user_decls), ("item", "item_id", items, item_decls)):
        seen = train.select(key).distinct()
        rows = seen if table is None else table.join(seen, on=key, how="inner")
        frame = _side_frame(train, rows, key, side, decls).cache()
        for d in decls:
            name = f"{side}_{d.column}"
            if d.kind == "continuous":
                continue
            vocabs[name] = fit_vocabulary(frame, d, min_count=min_count)
            if d.kind == "multi_categorical":
                longest = frame.select(
                    F.max(F.size(F.split(F.col(d.column).cast("string"), re.escape(d.separator))))
                ).first()[0]
                max_len[name] = max(1, int(longest or 1))
        continuous = [(f"{side}_rating_count", F.log1p(F.col(f"{side}_rating_count")))]
        continuous += [(f"{side}_rating_mean", F.col(f"{side}_rating_mean"))]
        continuous += [(f"{side}_{d.column}", F.col(d.column).cast("double")) for d in decls if d.kind == "continuous"]
        aggs = []
        for name, expr in continuous:
            aggs += [F.avg(expr).alias(f"{name}__mean"), F.stddev_pop(expr).alias(f"{name}__std")]
        stats = frame.agg(*aggs).first().asDict()
        for name, _ in continuous:
            mean, std = stats[f"{name}__mean"], stats[f"{name}__std"]
            scalers[name] = {
                "mean": float(mean) if mean is not None else 0.0,
                "std": float(std) if std and not math.isnan(std) and std > 1e-12 else 1.0,
            }
        frame.unpersist()
    user_vocab = sorted(r[0] for r in train.select("user_id").distinct().collect())
    item_vocab = sorted(r[0] for r in train.select("item_id").distinct().collect())
    return FeatureState(
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        vocabs=vocabs,
        scalers=scalers,
        decls={"user": [dataclasses.asdict(d) for d in user_decls], "item": [dataclasses.asdict(d) for d in item_decls]},
        global_mean=global_mean,
        max_multi_len=max_len,
    )


def _scaled(name: str, expr, state: FeatureState):
    s = state.scalers[name]
    return F.coalesce((expr.cast("double") - F.lit(s["mean"])) / F.lit(s["std"]), F.lit(0.0)).cast("float")


def build_side_features(
    events: DataFrame, table: DataFrame | None, state: FeatureState, side: Literal["user", "item"]
) -> DataFrame:
    """Encoded, scaled features of every user (or item) in ``table`` or ``events``.

    Statistics come from ``events`` (the training window at scoring time);
    entities without events get count 0 and the global mean rating.

    Returns:
        DataFrame[{side}_id (source type), {side}_idx: int, {side}_rating_count: float,
        {side}_rating_mean: float, one column per declared feature named
        {side}_{column} (float, int or array<int>)].
    """
    key = f"{side}_id"
    decls = _decls(state.decls[side])
    vocab = state.user_vocab if side == "user" else state.item_vocab
    frame = _side_frame(events, table, key, side, decls)
    frame = encode_categorical(frame, FeatureDecl(key, "categorical"), vocab, f"{side}_idx")
    count_col, mean_col = f"{side}_rating_count", f"{side}_rating_mean"
    out = [
        F.col(key),
        F.col(f"{side}_idx"),
        _scaled(count_col, F.log1p(F.coalesce(F.col(count_col), F.lit(0))), state).alias(count_col),
        _scaled(mean_col, F.coalesce(F.col(mean_col), F.lit(state.global_mean)), state).alias(mean_col),
    ]
    for d in decls:
        name = f"{side}_{d.column}"
        if d.kind == "continuous":
            out.append(_scaled(name, F.col(d.column), state).alias(name))
        else:
            frame = encode_categorical(frame, d, state.vocabs[name], f"__{name}")
            out.append(F.col(f"__{name}").alias(name))
    return frame.select(*out)


def training_examples(train: DataFrame, user_features: DataFrame, item_features: DataFrame) -> DataFrame:
    """Training events joined with the user and item features.

    Returns:
        DataFrame[user_id, item_id, rating: float, ts, every user_* and item_* feature column].
    """
    examples = train.select("user_id", "item_id", F.col("rating").cast("float").alias("rating"), "ts")
    return examples.join(user_features, on="user_id", how="inner").join(item_features, on="item_id", how="inner")
