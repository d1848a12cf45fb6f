"""Quality benchmark: every model family beside popularity and Spark ALS, on MovieLens.

    .venv/bin/python bench/quality.py [--data ../shared/data/ml-latest-small] [--only mf,deepfm]
        [--objective implicit|rating] [--skip-warm] [--skip-cold]

What it runs (all in one process, one SparkSession, seeds fixed):

1. ml-latest-small, a per-user stratified 75/25 split (seed 42): for every
   user a seeded 25% of their ratings is the test set. Top-10 over the
   items each user did not rate in training (catalogue: the items seen in
   training). Every named model (implicit objective), popularity and ALS
   (implicit) give P@10, R@10, nDCG@10, MAP@10; the rating models and ALS
   (explicit) give RMSE / MAE on the test ratings. Training time is the
   final fit's wall time.
2. Hyper-parameters: each model is early-stopped on a validation split
   carved from train (a per-user 15% of train, seed 43), then refit on
   the whole of train for the best epoch count. The settings in
   ``IMPLICIT`` / ``RATING`` were picked from small hand-run grids scored on
   that validation split (chosen on validation nDCG@10 / RMSE, never on
   the test split). ALS is tuned inside the run by a small grid on the same
   validation split; ALS with Spark's usual defaults is reported too.
3. Cold start against popularity, scored from features alone:
   - users: the synthetic data (which has demographics), 20% of users held
     out entirely; their whole history is the truth;
   - items: ml-latest-small, 20% of items held out entirely (features:
     genres, year); each user's held-out-item ratings are the truth and
     the candidates are the held-out items. The popularity baseline for
     cold items ranks them by the popularity of their genres in training.
   The cold-start models are the implicit entries with id dropout
   (``COLD_ID_DROPOUT``), early-stopped on a further 10% of users (items)
   held out of training the same way.

The data is read by the product's loader and ingest (``jobs.sources``,
``jobs.ingest``), split by ``jobs.split.stratified_split``, the features and
leakage-safe training examples built by ``jobs.features`` (the nightly
feature stage), and the ranking metrics computed by ``jobs.evaluate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from pyspark.sql import DataFrame, SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from jobs import evaluate, features, history, ingest, schema, sources, split, synthetic  # noqa: E402
from jobs.session import build_spark  # noqa: E402
from jobs.storage import Location  # noqa: E402

K = 10
#: Longest user history written by ``prepare`` (a model with a shorter history_max_len keeps the most recent);
#: ml-latest-small's heaviest user has 2,024 training items.
HISTORY_TABLE_LEN = 2500
ML_ITEM_FEATURES = schema.MOVIELENS_ITEM_FEATURES   # year, genres (ml-latest has no user demographics)


# -- data ------------------------------------------------------------------------------------
def load_movielens(spark: SparkSession, folder: str) -> tuple[DataFrame, DataFrame]:
    """ml-latest-small through the product's loader and ingest (bad rows quarantined, as in a run).

    Returns:
        (ratings[user_id, item_id, rating, ts], movies[item_id, year, genres]); tags are not used.
    """
    source = sources.load_movielens_latest(spark, folder)
    result = ingest.ingest_source(source, dt.date(2100, 1, 1), now=dt.datetime.now(dt.timezone.utc))
    return result.interactions, result.items.select("item_id", "year", "genres")


def holdout_entities(events: DataFrame, key: str, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Hold out a seeded ``fraction`` of the distinct ``key`` values entirely: (kept events, held-out events)."""
    ids = events.select(key).distinct()
    ranked = ids.withColumn("_h", F.xxhash64(F.lit(seed), key)).withColumn(
        "_r", F.percent_rank().over(Window.orderBy("_h", key)))
    held = ranked.filter(F.col("_r") < fraction).select(key)
    return events.join(held, on=key, how="left_anti"), events.join(held, on=key, how="inner")


@dataclasses.dataclass
class Prepared:
    """Parquet paths of one train window's features (see ``prepare``)."""

    spec: dict
    state_json: str
    examples: str
    user_features: str
    item_features: str
    heldout_examples: str | None = None
    heldout_items: str | None = None
    history: str | None = None


def prepare(spark, work: str, name: str, train: DataFrame, users, items, user_decls, item_decls,
            heldout: DataFrame | None = None, warm_items_only: bool = True) -> Prepared:
    """Fit the feature state on ``train`` and write examples, user and item features.

    ``heldout`` events (if any) become ``heldout_examples`` with the same
    features (rows of entities unknown to the features are kept: their ids
    map to the unseen index), and the features of their items
    ``heldout_items``. With ``warm_items_only`` the item table keeps only
    items of the training window (the catalogue ranked in the warm test).
    """
    fitted = features.FeatureFitter(user_decls, item_decls).fit_transform(train, users, items)
    state, user_f, item_f = fitted.state, fitted.user_features, fitted.item_features
    if warm_items_only:
        item_f = item_f.filter(F.col("item_idx") >= schema.FIRST_INDEX)
    out = {n: os.path.join(work, name, n) for n in ("user_features", "item_features", "examples", "heldout",
                                                    "history")}
    user_f.write.mode("overwrite").parquet(out["user_features"])
    item_f.write.mode("overwrite").parquet(out["item_features"])
    uf, itf = spark.read.parquet(out["user_features"]), spark.read.parquet(out["item_features"])
    # leakage-safe: each example's statistics come from events strictly before it, as in the nightly run
    features.write_training_examples(train, users, items, state, out["examples"])
    history.user_history(train, state, max_len=HISTORY_TABLE_LEN).write.mode("overwrite").parquet(out["history"])
    fitted.release()
    held_path = held_items = None
    if heldout is not None:
        features.join_features(heldout, uf, itf).write.mode("overwrite").parquet(out["heldout"])
        held_path = out["heldout"]
        held_items = os.path.join(work, name, "heldout_items")
        itf.join(heldout.select("item_id").distinct(), on="item_id").write.mode("overwrite").parquet(held_items)
    return Prepared(state.model_spec(), state.to_json(), out["examples"], out["user_features"],
                    out["item_features"], held_path, held_items, out["history"])


# -- scoring helpers -----------------------------------------------------------------------------
def loc(path: str | None) -> Location | None:
    """A ``Prepared`` path as the Location ``models/`` reads (None stays None)."""
    return None if path is None else Location(path)


def side_table(path: str, side_spec: dict, id_col: str):
    from models.catalogue import read_side_table

    return read_side_table(loc(path), side_spec, id_col)


def seen_lists(examples_path: str, users, catalogue) -> list[np.ndarray]:
    """Catalogue positions of each user's training items ([] for users without any)."""
    import pyarrow.parquet as pq

    table = pq.read_table(examples_path, columns=["user_id", "item_id"])
    u = users.positions(table.column("user_id").combine_chunks())
    i = catalogue.positions(table.column("item_id").combine_chunks())
    keep = (u >= 0) & (i >= 0)
    u, i = u[keep], i[keep]
    order = np.argsort(u, kind="stable")
    bounds = np.searchsorted(u[order], np.arange(len(users) + 1))
    items = i[order]
    return [np.unique(items[bounds[r]: bounds[r + 1]]) for r in range(len(users))]


def top_unseen(scores: np.ndarray, seen: list[np.ndarray], k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Top-k positions and scores per row, seen positions excluded (-1 where none is left): [n, k] each."""
    from jobs.topk import top_k_rows

    scores = np.array(scores, dtype=np.float32)
    for row, items in enumerate(seen):
        scores[row, items] = -np.inf
    cols, values = top_k_rows(scores, k)
    return np.where(np.isfinite(values), cols, -1), values


def recs_from_scores(users, catalogue, scores: np.ndarray, seen: list[np.ndarray], k: int) -> pa.Table:
    """Top-k of a dense [n_users, n_items] score matrix (jobs.topk's exact selection)."""
    cols, values = top_unseen(scores, seen, k)
    keep = cols >= 0
    rows = np.broadcast_to(np.arange(len(seen))[:, None], cols.shape)[keep]
    pos, vals = cols[keep], values[keep]
    counts = np.bincount(rows, minlength=len(users))
    rank = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    return pa.table({"user_id": users.ids.take(pa.array(rows)), "rank": pa.array(rank.astype(np.int32)),
                     "item_id": catalogue.ids.take(pa.array(pos)), "score": pa.array(vals)})


def metrics_of(spark, recs: pa.Table, truth: DataFrame, k: int = K) -> dict:
    """P/R/nDCG/MAP@k of Arrow recommendations against truth, computed by jobs.evaluate."""
    frame = spark.createDataFrame(recs.select(["user_id", "rank", "item_id"]).to_pandas())
    return evaluate.ranking_metrics(frame, truth, k)


# -- the models and their settings (chosen on the validation split; see --tune) -----------------------
@dataclasses.dataclass(frozen=True)
class Entry:
    """One benchmarked model: a kind, its hyper-parameters and its training settings."""

    name: str
    kind: str
    params: dict
    settings: dict


_SOFTMAX = {"learning_rate": 0.005, "batch_size": 1024, "temperature": 0.05, "extra_negatives": 2048}
_BCE = {"learning_rate": 0.003, "batch_size": 1024, "negatives": "uniform", "negative_ratio": 8}
_RATING = {"objective": "rating", "learning_rate": 0.003, "batch_size": 1024}
#: The two_tower entry's settings plus the user's history (the 200 most recent training items).
_TT_HISTORY = {"embedding_dim": 128, "normalize": True, "tower_layers": [256], "dropout": 0.3, "history_max_len": 200}

IMPLICIT = [
    Entry("mf", "mf", {"embedding_dim": 64, "l2": 1e-4}, {**_SOFTMAX, "temperature": 0.1}),
    Entry("mf_mean", "mf_mean", {"embedding_dim": 64, "l2": 1e-4}, {**_SOFTMAX, "temperature": 0.1}),
    Entry("linear_rs", "linear_rs", {"embedding_dim": 64, "l2": 1e-4}, {**_SOFTMAX, "temperature": 0.1}),
    Entry("two_tower", "two_tower", {"embedding_dim": 128, "normalize": True, "tower_layers": [256], "dropout": 0.3},
          {**_SOFTMAX, "learning_rate": 0.002}),
    # two_tower plus the user's history (the 200 most recent training items, the item tower's id embedding);
    # tuned on the validation split by bench/tune_history.py.
    Entry("two_tower_history", "two_tower", _TT_HISTORY,
          {**_SOFTMAX, "learning_rate": 0.002}),
    # two_tower_history with per-user example weights (user_weight_power 0.5: each rating weighs
    # 1/sqrt(its user's training rows)); tuned on the validation split by bench/tune_history.py.
    Entry("two_tower_history_weighted", "two_tower", _TT_HISTORY,
          {**_SOFTMAX, "learning_rate": 0.002, "user_weight_power": 0.5}),
    # two_tower_history trained with a softmax over the whole catalogue (loss full_softmax, no sampling, no
    # log-Q) at temperature 0.1; tuned on the validation split by bench/tune_history.py.
    Entry("two_tower_history_full", "two_tower", _TT_HISTORY,
          {"loss": "full_softmax", "learning_rate": 0.002, "batch_size": 1024, "temperature": 0.1}),
    # The factorised item-item model (EASE with B = E Q^T of rank 512): the user is the sum of their history's
    # embeddings (their whole history), trained on EASE's reconstruction loss; l2 = EASE's lambda / users.
    Entry("item_item", "item_item", {"embedding_dim": 512, "history_max_len": HISTORY_TABLE_LEN, "l2": 0.3},
          {"learning_rate": 0.003, "batch_size": 1024}),
    # The dense head scores every (user, item) pair of the batch through rho: no extra negatives.
    Entry("two_tower_dense", "two_tower_dense",
          {"embedding_dim": 64, "tower_layers": [128], "head_layers": [64], "dropout": 0.3},
          {**_SOFTMAX, "extra_negatives": 0}),
    Entry("fm", "fm", {"embedding_dim": 32}, _BCE),
    Entry("deepfm", "deepfm", {"embedding_dim": 32, "deep_layers": [128, 64], "dropout": 0.3, "l2": 1e-4}, _BCE),
    Entry("wide_deep", "wide_deep", {"embedding_dim": 32, "deep_layers": [128, 64], "dropout": 0.3, "l2": 1e-4},
          _BCE),
    Entry("gmf", "gmf", {"embedding_dim": 32}, {**_BCE, "learning_rate": 0.01, "negative_ratio": 4}),
    Entry("mlp_ncf", "mlp_ncf", {"embedding_dim": 32, "mlp_layers": [64, 32]}, _BCE),
    Entry("ancf", "ancf", {"embedding_dim": 32, "mlp_layers": [64, 32], "l2": 1e-4}, _BCE),
    Entry("neumf", "neumf", {"embedding_dim": 32, "mlp_layers": [64, 32], "l2": 1e-4}, _BCE),
]
RATING = [
    Entry("mf_mean", "mf_mean", {"embedding_dim": 32, "l2": 1e-4}, _RATING),
    Entry("linear_rs", "linear_rs", {"embedding_dim": 32, "l2": 1e-4, "biases": True}, _RATING),
    Entry("two_tower", "two_tower", {"embedding_dim": 32, "tower_layers": [64], "biases": True, "l2": 1e-4,
                                     "dropout": 0.3}, _RATING),
    Entry("fm", "fm", {"embedding_dim": 16, "l2": 1e-3}, _RATING),
    Entry("deepfm", "deepfm", {"embedding_dim": 16, "deep_layers": [64, 32], "l2": 1e-3, "dropout": 0.3}, _RATING),
    Entry("wide_deep", "wide_deep", {"embedding_dim": 16, "deep_layers": [64, 32], "l2": 1e-4, "dropout": 0.3},
          _RATING),
    Entry("neumf", "neumf", {"embedding_dim": 16, "mlp_layers": [64, 32], "l2": 1e-4, "dropout": 0.3}, _RATING),
]
#: Cold start: the same implicit entries, trained with id dropout so the features learn to carry the score.
COLD_KINDS = ("linear_rs", "two_tower", "deepfm", "wide_deep", "neumf")
COLD_ID_DROPOUT = 0.3
ALS_IMPLICIT_GRID = [dict(rank=r, regParam=g, alpha=a) for r in (16, 64) for g in (0.1, 1.0) for a in (1.0, 10.0)]
ALS_EXPLICIT_GRID = [dict(rank=r, regParam=g) for r in (10, 50) for g in (0.05, 0.1, 0.2)]


# -- training and scoring of one model --------------------------------------------------------------
@dataclasses.dataclass
class Fitted:
    model: object
    best_epoch: int
    val_metric: float | None
    seconds: float


def fit(entry: Entry, val: Prepared, full: Prepared, work: str, max_epochs: int, patience: int,
        rank_heldout_items: bool = False, seed: int = 42, refit_epochs: int | None = None) -> Fitted:
    """Early-stop on the validation split, then refit on all of train for the best epoch count.

    With ``rank_heldout_items`` the validation metric ranks only the
    validation split's own items (the cold-item check). ``seed``: the
    training's (initialisation, shuffling, sampling); the splits keep theirs.
    ``refit_epochs``: refit for this many epochs instead of the validation's best.
    """
    from models.registry import load_model
    from models.settings import TrainSettings
    from models.train import train_model

    quiet = lambda line: None  # noqa: E731
    first = train_model(
        entry.kind, val.spec, loc(val.examples), loc(os.path.join(work, "val", entry.name)),
        settings=TrainSettings(**entry.settings, epochs=max_epochs, patience=patience, seed=seed),
        model_params=entry.params, item_features=loc(val.item_features), holdout=loc(val.heldout_examples),
        holdout_catalogue=loc(val.heldout_items) if rank_heldout_items else None, user_history=loc(val.history),
        log=quiet,
    )
    epochs = refit_epochs or first.best_epoch
    start = time.perf_counter()
    final = train_model(
        entry.kind, full.spec, loc(full.examples), loc(os.path.join(work, "full", entry.name)),
        settings=TrainSettings(**entry.settings, epochs=epochs, patience=0, seed=seed),
        model_params=entry.params, item_features=loc(full.item_features), user_history=loc(full.history),
        log=quiet,
    )
    seconds = time.perf_counter() - start
    return Fitted(load_model(final.model_file), epochs, first.best_metric, seconds)


def counts_by_position(examples_path: str, catalogue) -> np.ndarray:
    """Training rows of every catalogue item: [n_items] float."""
    import pyarrow.parquet as pq

    pos = catalogue.positions(pq.read_table(examples_path, columns=["item_id"]).column(0).combine_chunks())
    return np.bincount(pos[pos >= 0], minlength=len(catalogue)).astype(np.float64)


def als_factors(model, users, catalogue) -> tuple[np.ndarray, np.ndarray]:
    """ALS user and item factors aligned with the side tables (zeros where ALS has none)."""
    def aligned(frame, table):
        rows = frame.collect()
        out = np.zeros((len(table), model.rank), np.float32)
        pos = table.positions(pa.array([r["id"] for r in rows], type=pa.int64()))
        for p, r in zip(pos, rows):
            if p >= 0:
                out[p] = r["features"]
        return out
    return aligned(model.userFactors, users), aligned(model.itemFactors, catalogue)


def fit_als(events: DataFrame, implicit: bool, params: dict, seed: int = 42):
    from pyspark.ml.recommendation import ALS

    als = ALS(userCol="user_id", itemCol="item_id", ratingCol="rating", implicitPrefs=implicit, maxIter=15,
              seed=seed, coldStartStrategy="drop", checkpointInterval=5, **params)
    data = events.select(F.col("user_id").cast("int"), F.col("item_id").cast("int"), "rating")
    return als.fit(data)


def rating_errors(predicted: np.ndarray, actual: np.ndarray) -> dict:
    err = np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))), "rows": int(err.size)}


# -- the report ------------------------------------------------------------------------------------
def fmt(row: dict) -> str:
    cells = [f"{row['model']:<26}", f"{row.get('objective', ''):<9}"]
    for m in ("precision", "recall", "ndcg", "map"):
        cells.append(f"{row[m]:>8.4f}" if m in row else f"{'':>8}")
    cells.append(f"{row['rmse']:>8.4f}" if "rmse" in row else f"{'':>8}")
    cells.append(f"{row['mae']:>8.4f}" if "mae" in row else f"{'':>8}")
    cells.append(f"{row['seconds']:>8.1f}" if "seconds" in row else f"{'':>8}")
    cells.append(f"  {row.get('note', '')}")
    return "".join(cells)


HEADER = (f"{'model':<26}{'objective':<9}{'P@10':>8}{'R@10':>8}{'nDCG@10':>8}{'MAP@10':>8}{'RMSE':>8}{'MAE':>8}"
          f"{'train s':>8}")


def warm_movielens(spark, args, work: str, log) -> list[dict]:
    """Section 1: the per-user stratified 75/25 split of ml-latest-small."""
    from models.evaluation import RankingHoldout, ranking_metrics
    from models.model_scoring import recommend

    ratings, movies = load_movielens(spark, args.data)
    ratings = ratings.cache()
    train, test = split.stratified_split(ratings, ratio=0.75, seed=42)
    sub, val = split.stratified_split(train, ratio=0.85, seed=43)
    train, test, sub, val = (d.cache() for d in (train, test, sub, val))
    log(f"ml-latest-small: {ratings.count():,} ratings -> train {train.count():,} / test {test.count():,}; "
        f"validation carved from train: {sub.count():,} / {val.count():,}")
    pv = prepare(spark, work, "val", sub, None, movies, (), ML_ITEM_FEATURES, heldout=val)
    pf = prepare(spark, work, "full", train, None, movies, (), ML_ITEM_FEATURES, heldout=test)
    users = side_table(pf.user_features, pf.spec["user"], "user_id")
    catalogue = side_table(pf.item_features, pf.spec["item"], "item_id")
    seen = seen_lists(pf.examples, users, catalogue)
    truth = evaluate.relevant_items(test, train).cache()
    val_rank = RankingHoldout.from_examples(loc(pv.heldout_examples), loc(pv.examples), loc(pv.item_features), pv.spec, k=K,
                              max_users=10 ** 6)
    rows = []

    counts = counts_by_position(pf.examples, catalogue)
    rows.append({"model": "popularity", "objective": "implicit",
                 **metrics_of(spark, recs_from_scores(users, catalogue, np.tile(counts, (len(users), 1)), seen, K),
                              truth)})
    log(fmt(rows[-1]))

    def val_ndcg(scores):
        top, _ = top_unseen(scores, val_rank.seen)
        return ranking_metrics(top, val_rank.relevant, K)["ndcg"]

    def als_val_ndcg(params):
        u, v = als_factors(fit_als(sub, True, params), val_rank.users, val_rank.catalogue)
        return val_ndcg(u @ v.T)

    best = max(ALS_IMPLICIT_GRID, key=als_val_ndcg)
    start = time.perf_counter()
    als = fit_als(train, True, best)
    seconds = time.perf_counter() - start
    u, v = als_factors(als, users, catalogue)
    rows.append({"model": "als_implicit (tuned)", "objective": "implicit", "seconds": seconds,
                 "note": ", ".join(f"{k}={v}" for k, v in best.items()),
                 **metrics_of(spark, recs_from_scores(users, catalogue, u @ v.T, seen, K), truth)})
    log(fmt(rows[-1]))
    default = {"rank": 10, "regParam": 0.1, "alpha": 1.0}
    start = time.perf_counter()
    als = fit_als(train, True, default)
    seconds = time.perf_counter() - start
    u, v = als_factors(als, users, catalogue)
    rows.append({"model": "als_implicit (defaults)", "objective": "implicit", "seconds": seconds,
                 "note": "rank=10, regParam=0.1, alpha=1.0",
                 **metrics_of(spark, recs_from_scores(users, catalogue, u @ v.T, seen, K), truth)})
    log(fmt(rows[-1]))

    import pyarrow.parquet as pq

    test_rows = pq.read_table(pf.heldout_examples, columns=["user_id", "item_id", "rating"]).to_pandas()
    val_rows = pq.read_table(pv.heldout_examples, columns=["user_id", "item_id", "rating"]).to_pandas()

    def als_rmse(model, frame):
        pred = model.transform(spark.createDataFrame(frame[["user_id", "item_id"]].astype("int32")))
        merged = frame.merge(pred.toPandas(), on=["user_id", "item_id"], how="left")
        return rating_errors(merged["prediction"].fillna(merged["rating"].mean()), merged["rating"])

    best = min(ALS_EXPLICIT_GRID, key=lambda p: als_rmse(fit_als(sub, False, p), val_rows)["rmse"])
    start = time.perf_counter()
    als = fit_als(train, False, best)
    seconds = time.perf_counter() - start
    rows.append({"model": "als_explicit (tuned)", "objective": "rating", "seconds": seconds,
                 "note": ", ".join(f"{k}={v}" for k, v in best.items()), **als_rmse(als, test_rows)})
    log(fmt(rows[-1]))

    from models.evaluation import RatingHoldout

    for objective, entries in (("implicit", IMPLICIT), ("rating", RATING)):
        if args.objective and objective != args.objective:
            continue
        for entry in entries:
            if args.only and entry.name not in args.only:
                continue
            fitted = fit(entry, pv, pf, os.path.join(work, "models", objective), args.max_epochs, args.patience,
                         seed=args.train_seed, refit_epochs=args.refit_epochs)
            recs = recommend(fitted.model, users, catalogue, seen, K)
            row = {"model": entry.name, "objective": objective, "seconds": fitted.seconds,
                   "note": f"{fitted.best_epoch} epochs", **metrics_of(spark, recs, truth)}
            if objective == "rating":
                row.update(RatingHoldout(loc(pf.heldout_examples), pf.spec).evaluate(fitted.model))
            rows.append(row)
            log(fmt(row))
    truth.unpersist()
    return rows




def _cold_entries(args) -> list[Entry]:
    return [dataclasses.replace(e, params={**e.params, "id_dropout": COLD_ID_DROPOUT}) for e in IMPLICIT
            if e.kind in COLD_KINDS and (not args.only or e.name in args.only)]


def cold_users(spark, args, work: str, log) -> list[dict]:
    """Section 3a: synthetic data, 20% of users held out entirely, scored from demographics alone."""
    from models.model_scoring import recommend

    spec = synthetic.SyntheticSpec(n_users=2000, n_items=1000, ratings_per_user=40.0, seed=7)
    world = synthetic.make_world(spec)
    ratings = spark.createDataFrame(synthetic.synthetic_ratings(world)).cache()
    users, items = spark.createDataFrame(world.users), spark.createDataFrame(world.items)
    kept, held = holdout_entities(ratings, "user_id", 0.2, 42)
    train, val = holdout_entities(kept, "user_id", 0.125, 43)      # 10% of all users: cold validation
    n_held = held.select("user_id").distinct().count()
    log(f"synthetic: {ratings.count():,} ratings of {spec.n_users:,} users; {n_held} users held out entirely"
        f" (validation: {val.select('user_id').distinct().count()} more, from train)")
    decls = (schema.MOVIELENS_USER_FEATURES, schema.MOVIELENS_ITEM_FEATURES)
    pv = prepare(spark, work, "cold_users_val", train, users, items, *decls, heldout=val)
    pf = prepare(spark, work, "cold_users", kept, users, items, *decls, heldout=held)
    cold = side_table(pf.heldout_examples, pf.spec["user"], "user_id")
    catalogue = side_table(pf.item_features, pf.spec["item"], "item_id")
    none_seen = [np.zeros(0, np.int64)] * len(cold)
    truth = evaluate.relevant_items(held).cache()
    counts = counts_by_position(pf.examples, catalogue)
    rows = [{"model": "popularity", "objective": "implicit",
             **metrics_of(spark, recs_from_scores(cold, catalogue, np.tile(counts, (len(cold), 1)), none_seen, K),
                          truth)}]
    log(fmt(rows[-1]))
    for entry in _cold_entries(args):
        fitted = fit(entry, pv, pf, os.path.join(work, "models", "cold_users"), args.max_epochs, args.patience,
                     seed=args.train_seed)
        rows.append({"model": entry.name, "objective": "implicit", "seconds": fitted.seconds,
                     "note": f"{fitted.best_epoch} epochs",
                     **metrics_of(spark, recommend(fitted.model, cold, catalogue, none_seen, K), truth)})
        log(fmt(rows[-1]))
    truth.unpersist()
    return rows


def genre_popularity(examples_path: str, candidates, genre_col: str = "item_genres") -> np.ndarray:
    """Score of each candidate item: mean training share of its genres ([n_items]; 0 without genres)."""
    import pyarrow.parquet as pq

    from models.data import _to_numpy

    table = pq.read_table(examples_path, columns=[genre_col])
    width = candidates.columns[genre_col].shape[1]
    genres = _to_numpy(table.column(genre_col), width)
    share = np.bincount(genres[genres >= 0]).astype(np.float64)
    share /= max(share.sum(), 1.0)
    idx = candidates.columns[genre_col]
    valid = (idx >= 0) & (idx < len(share))
    values = np.where(valid, share[np.clip(idx, 0, len(share) - 1)], 0.0)
    return values.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def cold_items(spark, args, work: str, log) -> list[dict]:
    """Section 3b: ml-latest-small, 20% of items held out entirely, scored from genres and year alone."""
    from models.model_scoring import recommend

    ratings, movies = load_movielens(spark, args.data)
    ratings = ratings.cache()
    kept, held = holdout_entities(ratings, "item_id", 0.2, 42)
    train, val = holdout_entities(kept, "item_id", 0.125, 43)
    log(f"ml-latest-small: {held.select('item_id').distinct().count():,} items held out entirely "
        f"({held.count():,} ratings); candidates: those items only")
    pv = prepare(spark, work, "cold_items_val", train, None, movies, (), ML_ITEM_FEATURES, heldout=val,
                 warm_items_only=False)
    pf = prepare(spark, work, "cold_items", kept, None, movies, (), ML_ITEM_FEATURES, heldout=held,
                 warm_items_only=False)
    users = side_table(pf.user_features, pf.spec["user"], "user_id")
    candidates = side_table(pf.heldout_items, pf.spec["item"], "item_id")
    none_seen = [np.zeros(0, np.int64)] * len(users)
    truth = evaluate.relevant_items(held).cache()
    pop = genre_popularity(pf.examples, candidates)
    rows = [{"model": "popularity (by genre)", "objective": "implicit",
             **metrics_of(spark, recs_from_scores(users, candidates, np.tile(pop, (len(users), 1)), none_seen, K),
                          truth)}]
    log(fmt(rows[-1]))
    for entry in _cold_entries(args):
        fitted = fit(entry, pv, pf, os.path.join(work, "models", "cold_items"), args.max_epochs, args.patience,
                     rank_heldout_items=True, seed=args.train_seed)
        rows.append({"model": entry.name, "objective": "implicit", "seconds": fitted.seconds,
                     "note": f"{fitted.best_epoch} epochs",
                     **metrics_of(spark, recommend(fitted.model, users, candidates, none_seen, K), truth)})
        log(fmt(rows[-1]))
    truth.unpersist()
    return rows


def summary(rows: list[dict]) -> list[str]:
    """The target lines: best top-K model vs ALS implicit, best rating model's RMSE."""
    baselines = ("popularity", "als_implicit (tuned)", "als_implicit (defaults)", "als_explicit (tuned)")
    topk = [r for r in rows if r["objective"] == "implicit" and r["model"] not in baselines]
    rating = [r for r in rows if "rmse" in r and r["model"] not in baselines]
    lines = []
    if topk:
        best = max(topk, key=lambda r: r["ndcg"])
        for als in (r for r in rows if r["model"].startswith("als_implicit")):
            lines.append(f"best top-K model {best['model']}: nDCG@10 {best['ndcg']:.4f} = "
                         f"{best['ndcg'] / als['ndcg']:.2f} x {als['model']} ({als['ndcg']:.4f}); target >= 1.2 x")
    if rating:
        best = min(rating, key=lambda r: r["rmse"])
        als = [r for r in rows if r["model"] == "als_explicit (tuned)"]
        versus = f"; ALS explicit {als[0]['rmse']:.4f}" if als else ""
        lines.append(f"best rating model {best['model']}: RMSE {best['rmse']:.4f} (target <= 0.86{versus})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "ml-latest-small"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--only", default="", help="comma-separated model names (baselines always run)")
    parser.add_argument("--objective", choices=("implicit", "rating"), default=None,
                        help="only the named models of this objective (baselines always run)")
    parser.add_argument("--skip-warm", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--train-seed", type=int, default=42,
                        help="seed of the models' training (the splits keep theirs): rerun with others to see the "
                             "spread of a model's figures")
    parser.add_argument("--refit-epochs", type=int, default=None,
                        help="diagnosis: refit the warm models for this many epochs instead of the validation's best")
    args = parser.parse_args(argv)
    args.only = {n for n in args.only.split(",") if n}
    if not os.path.isfile(os.path.join(args.data, "ratings.csv")):
        print(f"{args.data}: no ratings.csv; pass --data /path/to/ml-latest-small", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="nightrec-quality-")
    spark = build_spark(master="local[2]", app_name="nightrec-bench-quality", driver_memory="2g",
                        shuffle_partitions=4, local_dir=os.path.join(work, "spark"),
                        checkpoint_dir=os.path.join(work, "checkpoints"))

    def log(line):
        print(line, flush=True)

    started = time.perf_counter()
    try:
        sections = []
        if not args.skip_warm:
            log("== 1. ml-latest-small, per-user stratified 75/25 split (seed 42), top-10 over unseen items ==")
            log(HEADER)
            sections.append(("ml-latest-small 75/25", warm_movielens(spark, args, work, log)))
        if not args.skip_cold:
            log("== 3a. cold-start users: synthetic data, 20% of users held out, scored from demographics ==")
            log(HEADER)
            sections.append(("cold users (synthetic)", cold_users(spark, args, work, log)))
            log("== 3b. cold-start items: ml-latest-small, 20% of items held out, ranked among themselves ==")
            log(HEADER)
            sections.append(("cold items (ml-latest-small)", cold_items(spark, args, work, log)))
        log("")
        for title, rows in sections:
            log(f"== {title} ==")
            log(HEADER)
            for row in rows:
                log(fmt(row))
        if sections and not args.skip_warm:
            log("")
            for line in summary(sections[0][1]):
                log(line)
        log(f"total {time.perf_counter() - started:.0f}s")
    finally:
        spark.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
