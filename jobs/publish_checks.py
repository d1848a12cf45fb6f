"""Checks a night's recommendations pass before they are committed.

A failed check publishes nothing: ``check_recommendations`` raises
``ValidationError`` naming each failed check with example rows.
"""

from __future__ import annotations

import dataclasses

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.scoring import RECOMMENDATION_COLUMNS

SOURCES = ("model", "features", "popularity")
_TYPES = {"rank": T.IntegerType, "score": T.FloatType, "source": T.StringType}


class ValidationError(ValueError):
    """Recommendations that break the table contract; the message names the checks and rows."""


@dataclasses.dataclass(frozen=True)
class RecommendationCounts:
    """What the checks counted.

    Attributes:
        users: users with recommendations; rows: recommendation rows.
        short_users: users with fewer than K rows because fewer than K unseen catalogue items exist.
        users_without_rows: users of the users table with no row, by reason ({"rated every catalogue item": n}).
    """

    users: int
    rows: int
    short_users: int
    users_without_rows: dict[str, int]


def _sample(df: DataFrame, n: int) -> str:
    return "; ".join(str(row.asDict()) for row in df.limit(n).collect())


def check_recommendations(recs: DataFrame, *, k: int, seen_events: DataFrame, users: DataFrame,
                          item_ids: DataFrame, sample: int = 3) -> RecommendationCounts:
    """Check a recommendations table against the contract.

    Args:
        recs: DataFrame[user_id, rank, item_id, score, source] as it will be published.
        k: recommendations per user (``publish.k``).
        seen_events: DataFrame[user_id, item_id, ...]: what each user rated up to ds.
        users: DataFrame[user_id]: every user who should get recommendations.
        item_ids: DataFrame[item_id]: the scored catalogue.

    Checks: the schema; no null id, rank or score and no NaN or infinite score; a known ``source``; each
    user's ranks are exactly 1..n, without a repeated item, and scores never increase with rank;
    n = min(K, the user's unseen catalogue items); no item the user rated up to ds; every user of
    ``users`` has rows, or has rated every catalogue item.

    Raises:
        ValidationError: listing every failed check with up to ``sample`` example rows each.
    """
    problems: list[str] = []
    names = [f.name for f in recs.schema.fields]
    if names != list(RECOMMENDATION_COLUMNS):
        raise ValidationError(f"recommendations: columns {names}, expected {list(RECOMMENDATION_COLUMNS)}")
    for name, kind in _TYPES.items():
        found = recs.schema[name].dataType
        if not isinstance(found, kind):
            problems.append(f"column {name} is {found.simpleString()}, expected {kind().simpleString()}")

    def check(what: str, bad: DataFrame) -> None:
        bad = bad.cache()
        n = bad.count()
        if n:
            problems.append(f"{what}: {n:,} row(s), e.g. {_sample(bad, sample)}")
        bad.unpersist()

    check("null user_id, item_id, rank or score, or a NaN or infinite score", recs.where(
        F.col("user_id").isNull() | F.col("item_id").isNull() | F.col("rank").isNull() | F.col("score").isNull()
        | F.isnan("score") | (F.abs("score") == float("inf"))))
    check(f"source not one of {', '.join(SOURCES)}", recs.where(~F.col("source").isin(*SOURCES)))
    catalogue = item_ids.select("item_id").distinct()
    n_items = catalogue.count()
    seen = seen_events.select("user_id", "item_id").distinct().join(catalogue, on="item_id")
    check("an item the user rated up to ds", recs.join(seen, on=["user_id", "item_id"], how="inner"))
    by_rank = Window.partitionBy("user_id").orderBy("rank")
    check("a score above the score of the rank before it", recs.withColumn(
        "previous", F.lag("score").over(by_rank)).where(F.col("score") > F.col("previous") + 1e-6))
    per_user = recs.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct("rank").alias("ranks"), F.min("rank").alias("first"),
        F.max("rank").alias("last"), F.countDistinct("item_id").alias("items"))
    check("ranks that are not exactly 1..n, or an item listed twice", per_user.where(
        (F.col("first") != 1) | (F.col("last") != F.col("rows")) | (F.col("ranks") != F.col("rows"))
        | (F.col("items") != F.col("rows"))))
    unseen = users.select("user_id").distinct().join(seen.groupBy("user_id").agg(F.count(F.lit(1)).alias("seen")),
                                                     on="user_id", how="left") \
        .select("user_id", (F.lit(n_items) - F.coalesce("seen", F.lit(0))).alias("unseen"))
    expected = unseen.join(per_user, on="user_id", how="full").select(
        "user_id", F.coalesce("rows", F.lit(0)).alias("rows"), F.when(F.col("unseen").isNotNull(), F.least(F.lit(k), "unseen")).alias("expected"))
    check(f"a number of rows other than min(K={k}, the user's unseen catalogue items)",
          expected.where(F.col("expected").isNotNull() & (F.col("rows") != F.col("expected"))))
    check("a user who is not in the users table", expected.where(F.col("expected").isNull()))
    if problems:
        raise ValidationError("recommendations fail the table contract, nothing is published:\n  "
                              + "\n  ".join(problems))
    totals = expected.agg(
        F.sum(F.when(F.col("rows") > 0, 1).otherwise(0)).alias("users"), F.sum("rows").alias("rows"),
        F.sum(F.when((F.col("rows") > 0) & (F.col("rows") < k), 1).otherwise(0)).alias("short"),
        F.sum(F.when(F.col("rows") == 0, 1).otherwise(0)).alias("without")).first()
    without = int(totals["without"] or 0)
    return RecommendationCounts(users=int(totals["users"] or 0), rows=int(totals["rows"] or 0),
                                short_users=int(totals["short"] or 0),
                                users_without_rows={"rated every catalogue item": without} if without else {})
