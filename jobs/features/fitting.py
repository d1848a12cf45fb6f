"""Fitting the feature state on the training window: ``FeatureFitter`` (estimator) -> ``FeatureState`` (model).

As in scikit-learn and PySpark ML, the fitter holds only its parameters (the
side columns to use and the ``FeatureSettings``); ``fit`` returns the fitted,
immutable ``FeatureState`` and ``fit_transform`` also the window's feature
tables. Everything is fitted on the training entities only: vocabularies,
the rating grid, the genre-affinity values, the scalers and the imputers.

Continuous features of a side (all float32 in the tables):

* ``{side}_rating_count`` (log1p), ``_rating_mean``, ``_rating_std`` (population),
  ``_rating_p10`` ... ``_p90`` (the configured quantiles), ``_days_since_first``,
  ``_days_since_last``;
* users: ``user_genre_share_{genre}`` and ``user_genre_mean_{genre}`` (share of
  the user's events in each genre, mean rating there);
* the declared continuous side columns (``user_age``, ``item_year``, ...).

Each is imputed (mean or median of the training entities, or an optional
IterativeImputer) and standardised with training-window statistics.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.features import stats
from jobs.features.encoding import MAX_AFFINITY_VALUES, category_counts, id_frame, side_static
from jobs.features.passes import (
    entity_totals,
    finalize_entities,
    n_partitions,
    side_passes,
    static_arrow,
    to_float64,
    with_totals,
)
from jobs.features.state import FeatureSettings, FeatureState
from jobs.schema import FIRST_INDEX, FeatureDecl


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
            found = [stats.moments(stats.transform(n, to_float64(pa.chunked_array([batch.column(n)])))) for n in names]
            yield pa.RecordBatch.from_arrays(
                [pa.array(list(names)), *[pa.array([float(s[k]) for s in found]) for k in range(3)]],
                names=["name", "n", "mean", "m2"],
            )

    parts = frame.select(*names).mapInArrow(moments, "name string, n double, mean double, m2 double").collect()
    combined = {name: (0.0, 0.0, 0.0) for name in names}
    for row in parts:
        combined[row["name"]] = stats.combine_moments(combined[row["name"]], (row["n"], row["mean"], row["m2"]))
    medians = {}
    if impute == "median":
        aggs = [
            F.percentile_approx(F.log1p(F.col(n)) if stats.is_log_column(n) else F.col(n), 0.5, 10000).alias(f"q{i}")
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
            "std": stats.safe_std(math.sqrt(m2 / n) if n else None),
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
    x = np.column_stack([stats.transform(n, to_float64(sample[n])) for n in names])
    imputer = IterativeImputer(
        max_iter=settings.iterative_max_iter, random_state=settings.seed, keep_empty_features=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        imputer.fit(x)
    return stats.iterative_params(imputer)



@dataclasses.dataclass(frozen=True)
class FeatureTables:
    """Output of ``FeatureFitter.fit_transform``.

    Attributes:
        state: the fitted state.
        user_features, item_features: ``build_side_features`` output for every
            user (item) of the side table or the training events.
        cached: the cached entity frames the tables are computed from (``release`` drops them).
        n_events: the number of training events.
        statics: "user"/"item" -> the side's static table (``side_static``)
            collected as Arrow, reused by ``training_examples``.
        static_schemas: "user"/"item" -> the Spark schema of that table.
    """

    state: FeatureState
    user_features: DataFrame
    item_features: DataFrame
    cached: tuple[DataFrame, ...] = ()
    n_events: int = 0
    statics: dict[str, pa.Table] = dataclasses.field(default_factory=dict)
    static_schemas: dict[str, T.StructType] = dataclasses.field(default_factory=dict)

    def release(self) -> None:
        """Drop the cached entity frames (after the tables are written)."""
        for frame in self.cached:
            frame.unpersist()


def _window_end(last_ts: dt.datetime | None) -> dt.datetime:
    """Midnight UTC after the last training event (the UTC day; a timestamp_ntz column comes back naive)."""
    if last_ts is None:
        last_day = dt.date(1969, 12, 31)
    else:
        last_day = (last_ts if last_ts.tzinfo is None else last_ts.astimezone(dt.timezone.utc)).date()
    return dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class FeatureFitter:
    """Fits the ``FeatureState`` of a training window (the estimator; the state is its fitted model).

    Attributes:
        user_decls, item_decls: which side columns to use and how (columns
            missing from the table given to ``fit`` are skipped).
        settings: the ``features`` config.
    """

    user_decls: tuple[FeatureDecl, ...] = ()
    item_decls: tuple[FeatureDecl, ...] = ()
    settings: FeatureSettings = FeatureSettings()

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_decls", tuple(self.user_decls))
        object.__setattr__(self, "item_decls", tuple(self.item_decls))

    def fit(
        self, train: DataFrame, users: DataFrame | None, items: DataFrame | None, *, as_of: dt.datetime | None = None
    ) -> FeatureState:
        """The fitted state alone (``fit_transform`` without keeping its tables)."""
        tables = self.fit_transform(train, users, items, as_of=as_of)
        tables.release()
        return tables.state

    def fit_transform(
        self,
        train: DataFrame,
        users: DataFrame | None,
        items: DataFrame | None,
        *,
        as_of: dt.datetime | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> FeatureTables:
        """Fit the feature state on the training window and build the window's feature tables.

        Args:
            train: DataFrame[user_id, item_id, rating, ts]: the training events, all before ``as_of``.
            users, items: side tables (may be None); only entities seen in
                ``train`` contribute to vocabularies, scalers and imputers.
            as_of: the end of the training window ("days since" count to it);
                None: midnight UTC after the last training event.
            on_step: called with the name of each fitting step as it finishes (for benchmarks).

        Returns:
            FeatureTables: the state and every user's and item's features (cached
            frames: call ``release`` once the tables are written).
        """
        step = on_step or (lambda name: None)
        user_decls = [d for d in self.user_decls if users is not None and d.column in users.columns]
        item_decls = [d for d in self.item_decls if items is not None and d.column in items.columns]
        encodings, id_frames, n_train = self._fit_encodings(train, users, items, user_decls, item_decls, as_of)
        step("fit vocabularies, rating grid")
        spark = train.sparkSession
        partitions = n_partitions(spark, n_train, self.settings.rows_per_partition)
        item_static = side_static(id_frames["item"], items, encodings, "item").cache()
        user_static = side_static(id_frames["user"], users, encodings, "user").cache()
        statics = static_arrow(user_static, item_static)
        passes = side_passes(spark, encodings, statics, fitted=False)
        scalers: dict[str, dict[str, float]] = {}
        continuous: dict[str, list[str]] = {}
        imputer: dict[str, dict | None] = {}
        raw_frames = {}
        for side, static in (("user", user_static), ("item", item_static)):
            bc, side_pass = passes[side]
            totals = entity_totals(train, bc, side_pass, static, partitions, n_train)
            frame = with_totals(static, totals, side).cache()
            declared = [f"{side}_{d.column}" for d in encodings.side_decls(side) if d.kind == "continuous"]
            names = side_pass.layout.names() + declared
            trained = frame.filter(F.col(f"{side}_idx") >= FIRST_INDEX)
            scalers.update(_fit_scalers(trained, names, self.settings.impute))
            continuous[side] = names
            imputer[side] = None
            if self.settings.imputer == "iterative":
                rows = len(encodings.user_vocab if side == "user" else encodings.item_vocab)
                imputer[side] = _fit_iterative(trained, names, rows, self.settings)
            raw_frames[side] = (frame, static)
            step(f"fit {side} statistics, scalers, imputer")
        state = dataclasses.replace(encodings, scalers=scalers, continuous=continuous, imputer=imputer)
        tables = {side: finalize_entities(frame, state, side, static) for side, (frame, static) in raw_frames.items()}
        cached = (*id_frames.values(), item_static, user_static, *(frame for frame, _ in raw_frames.values()))
        return FeatureTables(
            state=state, user_features=tables["user"], item_features=tables["item"], cached=cached,
            n_events=n_train, statics=statics, static_schemas={"user": user_static.schema, "item": item_static.schema},
        )

    def _fit_encodings(
        self, train: DataFrame, users: DataFrame | None, items: DataFrame | None,
        user_decls: Sequence[FeatureDecl], item_decls: Sequence[FeatureDecl], as_of: dt.datetime | None,
    ) -> tuple[FeatureState, dict[str, DataFrame], int]:
        """The first half of the fit: vocabularies, affinity values, rating grid, global mean and window end.

        Returns:
            (the state without scalers and imputers yet, which the statistics
            passes need, "user"/"item" -> DataFrame[{side}_id, {side}_idx] of
            the vocabulary (cached), the number of training events).
        """
        spark = train.sparkSession
        settings = self.settings
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
            "user": sorted(per_user["user_id"].to_pylist()),
            "item": sorted(train.select("item_id").distinct().toArrow()["item_id"].to_pylist()),
        }
        id_frames = {side: id_frame(spark, vocab, train.schema[f"{side}_id"], index=f"{side}_idx").cache()
                     for side, vocab in id_vocab.items()}
        for side, table, decls in (("user", users, user_decls), ("item", items, item_decls)):
            if table is None:
                continue
            frame = table.join(id_frames[side], on=f"{side}_id", how="inner")
            counts, lengths = category_counts(frame, side, decls)
            max_len.update(lengths)
            for d in decls:
                name = f"{side}_{d.column}"
                if d.kind == "continuous":
                    continue
                vocabs[name] = sorted(v for v, n in counts.get(name, {}).items() if n >= settings.min_category_count)
                if d is affinity_decl:
                    by_use = sorted(counts.get(name, {}).items(), key=lambda vn: (-vn[1], vn[0]))
                    affinity = sorted(v for v, _ in by_use[:MAX_AFFINITY_VALUES])
        n_train = int(pc.sum(per_user["n"]).as_py() or 0)
        n_rated = int(pc.sum(per_user["n_rated"]).as_py() or 0)
        global_mean = pc.sum(per_user["rating_sum"]).as_py() / n_rated if n_rated else None
        if as_of is None:
            as_of = _window_end(pc.max(per_user["last_ts"]).as_py())
        encodings = FeatureState(
            user_vocab=id_vocab["user"],
            item_vocab=id_vocab["item"],
            vocabs=vocabs,
            scalers={},
            decls={"user": [dataclasses.asdict(d) for d in user_decls],
                   "item": [dataclasses.asdict(d) for d in item_decls]},
            global_mean=float(global_mean) if global_mean is not None else 0.0,
            max_multi_len=max_len,
            as_of=as_of.astimezone(dt.timezone.utc).isoformat(),
            quantiles=[float(q) for q in settings.quantiles],
            rating_grid=_rating_grid(train, settings.rating_grid_size),
            affinity_column=affinity_decl.column if affinity_decl else None,
            affinity=affinity,
            example_statistics=settings.example_statistics,
        )
        return encodings, id_frames, n_train
