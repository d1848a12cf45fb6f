"""Offline evaluation protocols: a dataset, its split, its features and the Spark baselines (``nightrec benchmark``).

The Spark half of the offline benchmark (``flows.benchmark`` runs it; the
Keras half is ``models.offline``):

* ``load_dataset``: a MovieLens release or a file of canonical interactions,
  through the product's loaders and ingest (bad rows quarantined, as in a run).
* ``protocol_split``: the test split of a protocol, and ``validation_split``
  the validation split carved from train the same way (early stopping, tuning):

  - ``stratified``: per user, a seeded 25% of the events is the test set (seed 42;
    validation: 15% of train, seed 43). The public Microsoft Recommenders MovieLens protocol.
  - ``temporal``: per user, the latest 25% of the events by time is the test set
    (validation: the latest 15% of train). Per user, not a global time cut, so every
    user with 2+ events is tested and the figures stay comparable with stratified.
  - ``leave-last-out``: per user, the latest event is the test event (validation:
    the latest event of train); users with one event only train.

* ``prepare``: the feature state fitted on a train window, its leakage-safe
  training examples, features and user histories, written under a scratch folder.
* the ALS baselines (``fit_als``, ``als_factors``), popularity counts, and
  the metrics of a recommendation table (``jobs.evaluate``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import evaluate, features, history, ingest, schema, split
from jobs.storage import Location

PROTOCOLS = ("stratified", "temporal", "leave-last-out")
FORMATS = ("movielens_100k", "movielens_1m", "movielens_latest", "files")
K = 10
#: Test share of each user's events (stratified, temporal), and the validation share of train.
TEST_SHARE, VALIDATION_SHARE = 0.25, 0.15
TEST_SEED, VALIDATION_SEED = 42, 43
ALS_IMPLICIT_GRID = [dict(rank=r, regParam=g, alpha=a) for r in (16, 64) for g in (0.1, 1.0) for a in (1.0, 10.0)]
ALS_EXPLICIT_GRID = [dict(rank=r, regParam=g) for r in (10, 50) for g in (0.05, 0.1, 0.2)]
ALS_DEFAULTS = {"rank": 10, "regParam": 0.1, "alpha": 1.0}


class DatasetError(ValueError):
    """The dataset or protocol named cannot be used (the message says what was expected)."""


# -- data ------------------------------------------------------------------------------------
def check_dataset(path: str, format: str) -> Location:
    """The dataset's location, once it is known to exist and ``format`` to be one of ``FORMATS`` (else DatasetError)."""
    if format not in FORMATS:
        raise DatasetError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    location = Location(path)
    if not location.exists():
        raise DatasetError(f"--dataset {location.display()}: no such file or folder; pass the dataset's folder "
                           "(or, with --format files, its interactions file)")
    return location


def load_dataset(spark: SparkSession, path: str, format: str) -> tuple[DataFrame, DataFrame | None]:
    """A dataset through the product's loaders and ingest.

    Args:
        path: a MovieLens release's folder; for ``files``, a Parquet file or folder, or a CSV file with a
            header, of the canonical columns user_id, item_id, rating, ts (unix seconds).
        format: one of ``FORMATS``.

    Returns:
        (ratings[user_id, item_id, rating, ts], items[item_id, year, genres] or None when the dataset has none).
    """
    from jobs.sources import SourceSpec, load_source
    from jobs.sources.files import FilesSource

    location = check_dataset(path, format)
    if format == "files":
        kind = "csv" if location.name.endswith(".csv") else "parquet"
        spec = SourceSpec(kind="files", files=FilesSource(interactions={"path": path, "format": kind}))
    else:
        spec = SourceSpec(kind=format, path=path)
    source = load_source(spark, spec)
    result = ingest.ingest_source(source, dt.date(2100, 1, 1), now=dt.datetime.now(dt.timezone.utc))
    items = result.items
    if items is not None and {"year", "genres"} <= set(items.columns):
        items = items.select("item_id", "year", "genres")
    else:
        items = None
    return result.interactions, items


def _split(events: DataFrame, protocol: str, share: float, seed: int) -> tuple[DataFrame, DataFrame]:
    if protocol == "stratified":
        return split.stratified_split(events, ratio=1.0 - share, seed=seed)
    if protocol == "temporal":
        return split.per_user_temporal_split(events, ratio=1.0 - share, seed=seed)
    if protocol == "leave-last-out":
        return split.leave_last_out(events, seed=seed)
    raise DatasetError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


def protocol_split(events: DataFrame, protocol: str) -> tuple[DataFrame, DataFrame]:
    """(train, test) of ``protocol`` (the module docstring)."""
    return _split(events, protocol, TEST_SHARE, TEST_SEED)


def validation_split(train: DataFrame, protocol: str) -> tuple[DataFrame, DataFrame]:
    """(sub-train, validation) carved from ``train`` the way ``protocol`` carves the test set."""
    return _split(train, protocol, VALIDATION_SHARE, VALIDATION_SEED)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The features of one train window (``prepare``): the model spec and where each table was written."""

    spec: dict
    examples: Location
    user_features: Location
    item_features: Location
    history: Location
    heldout_examples: Location | None = None
    heldout_items: Location | None = None


def prepare(work: Location, train: DataFrame, users: DataFrame | None, items: DataFrame | None,
            user_decls, item_decls, *, history_len: int, heldout: DataFrame | None = None,
            warm_items_only: bool = True) -> Prepared:
    """Fit the feature state on ``train`` and write examples, user and item features under ``work``.

    ``heldout`` events (if any) become ``heldout_examples`` with the same
    features (rows of entities unknown to the features are kept: their ids
    map to the unseen index), and the features of their items
    ``heldout_items``. ``history_len``: the longest user history written
    (``models.offline.HISTORY_TABLE_LEN``). With ``warm_items_only`` the item table keeps only
    items of the training window (the catalogue ranked in the warm test).
    """
    spark = train.sparkSession
    fitted = features.FeatureFitter(user_decls, item_decls).fit_transform(train, users, items)
    state, user_f, item_f = fitted.state, fitted.user_features, fitted.item_features
    if warm_items_only:
        item_f = item_f.filter(F.col("item_idx") >= schema.FIRST_INDEX)
    out = {n: work / n for n in ("user_features", "item_features", "examples", "heldout", "history",
                                 "heldout_items")}
    user_f.write.mode("overwrite").parquet(out["user_features"].uri)
    item_f.write.mode("overwrite").parquet(out["item_features"].uri)
    uf, itf = spark.read.parquet(out["user_features"].uri), spark.read.parquet(out["item_features"].uri)
    # leakage-safe: each example's statistics come from events strictly before it, as in the nightly run
    features.write_training_examples(train, users, items, state, out["examples"].uri)
    history.user_history(train, state, max_len=history_len).write.mode("overwrite").parquet(
        out["history"].uri)
    fitted.release()
    held = held_items = None
    if heldout is not None:
        features.join_features(heldout, uf, itf).write.mode("overwrite").parquet(out["heldout"].uri)
        itf.join(heldout.select("item_id").distinct(), on="item_id").write.mode("overwrite").parquet(
            out["heldout_items"].uri)
        held, held_items = out["heldout"], out["heldout_items"]
    return Prepared(state.model_spec(), out["examples"], out["user_features"], out["item_features"],
                    out["history"], held, held_items)


# -- baselines and metrics ---------------------------------------------------------------------------
def counts_by_position(examples: Location, catalogue) -> np.ndarray:
    """Training rows of every catalogue item (a ``models.catalogue`` side table): [n_items] float."""
    ids = examples.parquet_dataset().to_table(columns=["item_id"]).column(0).combine_chunks()
    pos = catalogue.positions(ids)
    return np.bincount(pos[pos >= 0], minlength=len(catalogue)).astype(np.float64)


def fit_als(events: DataFrame, implicit: bool, params: dict, seed: int = 42):
    """Spark MLlib ALS on ``events`` (15 iterations, seeded); ``params``: rank, regParam (, alpha)."""
    from pyspark.ml.recommendation import ALS

    als = ALS(userCol="user_id", itemCol="item_id", ratingCol="rating", implicitPrefs=implicit, maxIter=15,
              seed=seed, coldStartStrategy="drop", checkpointInterval=5, **params)
    data = events.select(F.col("user_id").cast("int"), F.col("item_id").cast("int"), "rating")
    return als.fit(data)


def als_factors(model, users, catalogue) -> tuple[np.ndarray, np.ndarray]:
    """ALS user and item factors aligned with the side tables ([n_users, rank], [n_items, rank]; zeros where
    ALS has none)."""
    def aligned(frame, table):
        rows = frame.collect()
        out = np.zeros((len(table), model.rank), np.float32)
        pos = table.positions(pa.array([r["id"] for r in rows], type=pa.int64()))
        for p, r in zip(pos, rows):
            if p >= 0:
                out[p] = r["features"]
        return out
    return aligned(model.userFactors, users), aligned(model.itemFactors, catalogue)


def als_predictions(spark: SparkSession, model, rows) -> np.ndarray:
    """ALS rating predictions of a pandas frame [user_id, item_id] (NaN where ALS knows the user or item not)."""
    pred = model.transform(spark.createDataFrame(rows[["user_id", "item_id"]].astype("int32"))).toPandas()
    return rows[["user_id", "item_id"]].merge(pred, on=["user_id", "item_id"], how="left")["prediction"].to_numpy()


def metrics_of(spark: SparkSession, recs: pa.Table, truth: DataFrame, *, catalogue_size: int,
               k: int = K) -> dict:
    """P/R/nDCG/MAP@k (``jobs.evaluate.ranking_metrics``) and catalogue coverage of Arrow top-k lists.

    Coverage is ``jobs.evaluate.beyond``'s: distinct recommended items / catalogue items.
    """
    frame = spark.createDataFrame(recs.select(["user_id", "rank", "item_id"]).to_pandas())
    found = evaluate.ranking_metrics(frame, truth, k)
    items = len(set(recs.column("item_id").to_pylist()))
    return {**found, "coverage": items / max(catalogue_size, 1)}
