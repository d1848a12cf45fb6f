"""The ranking holdout as every evaluation of a night sees it: one definition for early stopping and the metrics.

The rules (the published metrics follow them through ``relevant_items`` and
``jobs.recommend``; training reads them from ``ranking_holdout``'s table):

* users counted: every user with at least one relevant item, cold users (no
  training events, no feature row) included, or the seeded sample of
  ``sample_users`` when one is taken;
* relevant items: the user's held-out items not in their training events
  (``relevant_items``), items outside the catalogue included (they count in
  |R_u| and are never hit);
* candidates: the catalogue (the window's item feature table), minus the
  user's training events (seen items);
* scorer: ``jobs.recommend.assign_sources``: a user the model knows (or whose
  features say something) is ranked by the model, everyone else by
  popularity (``jobs.recommend.popularity`` of the training events), whose
  lists do not depend on the model and are computed here once.
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs import recommend
from jobs.features import FeatureState
from jobs.recommend import ScoringSettings
from jobs.schema import POPULARITY_SOURCE
from jobs.schema import RANKING_HOLDOUT_COLUMNS as HOLDOUT_COLUMNS


def sample_users(truth: DataFrame, max_users: int | None, *, seed: int) -> DataFrame:
    """The relevant pairs of at most ``max_users`` users, chosen by a seeded hash of the user id.

    The same truth, ``max_users`` and seed give the same users on any cluster
    (the users with the smallest xxhash64(seed, user_id)); None keeps everyone.

    Args:
        truth: DataFrame[user_id, item_id, ...] (``relevant_items``).

    Returns:
        The rows of ``truth`` whose user is in the sample.
    """
    if max_users is None:
        return truth
    if max_users < 1:
        raise ValueError(f"max_users must be >= 1 (or None for every holdout user), got {max_users}")
    order = F.xxhash64(F.lit(int(seed)), F.col("user_id"))
    chosen = truth.select("user_id").distinct().orderBy(order, "user_id").limit(int(max_users))
    return truth.join(chosen, on="user_id", how="left_semi")


def ranking_holdout(
    *,
    truth: DataFrame,
    train: DataFrame,
    user_features: DataFrame,
    state: FeatureState,
    item_ids: pa.Array,
    k: int,
    settings: ScoringSettings = ScoringSettings(),
) -> DataFrame:
    """One row per evaluated user: how it is scored, its relevant and seen items, and its model inputs.

    Save it (e.g. as the run's ``eval.ranking_holdout``) and pass it to
    ``models.train.train_model(ranking_holdout=...)``: the nDCG@K training logs
    and early-stops on is then the figure ``ranking_evaluation`` publishes for
    the same ``truth`` and model.

    Args:
        truth: DataFrame[user_id, item_id, ...]: the relevant pairs (``relevant_items(holdout, train)``,
            optionally ``sample_users``); its users are the users counted.
        train: the training window's events, DataFrame[user_id, item_id, ...]: the seen items and the
            popularity counts.
        user_features: the window's user feature table (routing, and the model inputs).
        state: the window's fitted feature state.
        item_ids: the catalogue, ascending (the window's item feature table's ids).
        k: cut-off of the popularity lists.

    Returns:
        DataFrame[user_id, source ("model", "features" or "popularity"), relevant: array<item id>,
        seen: array<item id> (training items, null when none), fixed: array<item id> (the popularity
        top-k, best first, for source "popularity"; null otherwise), every user_features column
        but user_id (null for users without a feature row)].
    """
    relevant = truth.groupBy("user_id").agg(F.array_sort(F.collect_set("item_id")).alias("relevant"))
    users = relevant.select("user_id")
    routed = recommend.assign_sources(users, user_features, state)
    seen = train.join(users, on="user_id", how="left_semi").groupBy("user_id").agg(
        F.array_sort(F.collect_set("item_id")).alias("seen"))
    by_popularity = routed.where(F.col("source") == POPULARITY_SOURCE).select("user_id")
    fixed = recommend.popularity(train, by_popularity, item_ids, k, settings).groupBy("user_id").agg(
        F.transform(F.array_sort(F.collect_list(F.struct("rank", "item_id"))), lambda r: r["item_id"]).alias("fixed"))
    inputs = [c for c in user_features.columns if c not in HOLDOUT_COLUMNS]
    return (relevant.join(routed, on="user_id", how="inner")
            .join(seen, on="user_id", how="left")
            .join(fixed, on="user_id", how="left")
            .join(user_features.select("user_id", *inputs), on="user_id", how="left")
            .select(*HOLDOUT_COLUMNS, *inputs))
