"""Names every stage shares: canonical columns, quarantine reasons, reserved indices, feature declarations.

This module imports nothing of nightrec, so the stages import it in their
own order (schema → sources → ingest → split → features → history, scoring)
without reaching into each other for a constant.

Canonical events (what every source loader returns and every later stage
reads): ``user_id``, ``item_id`` (the source's own values and types),
``rating`` (double, null for implicit feedback), ``ts`` (timestamp, UTC).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

#: The canonical interactions columns, in order.
EVENT_COLUMNS = ("user_id", "item_id", "rating", "ts")

#: Columns a file source adds to its tables: the line or row as read (for the
#: quarantine), and why it cannot be used (a ``REASON_*`` code, null when it can).
RAW_COL = "_raw"
PROBLEM_COL = "_problem"

#: Columns of the quarantine table.
QUARANTINE_COLUMNS = ("table", "reason", "raw")

#: Columns of the ranking holdout table (``jobs.evaluate.ranking_holdout``, read by
#: ``models.evaluation.RankingHoldout.from_table``) besides the user feature columns: the user, how it is
#: scored ("model", "features" or "popularity"), its relevant and seen item ids, and its fixed
#: (popularity) list.
RANKING_HOLDOUT_COLUMNS = ("user_id", "source", "relevant", "seen", "fixed")
#: The ``source`` of users ranked by popularity, whichever model is evaluated.
POPULARITY_SOURCE = "popularity"

# Quarantine reasons (``jobs.ingest`` documents which rows get each).
REASON_UNPARSEABLE = "unparseable_line"
REASON_NULL_ID = "null_or_empty_id"
REASON_RATING_RANGE = "rating_out_of_range"
REASON_BAD_TIMESTAMP = "bad_timestamp"
REASON_FUTURE = "future_timestamp"
REASON_DUPLICATE = "duplicate_event"
REASON_UNKNOWN_USER = "unknown_user"
REASON_UNKNOWN_ITEM = "unknown_item"
REASON_DUPLICATE_ID = "duplicate_id"
REASON_EMPTY = "empty_value"

# Encoded categorical values (ids included): 0 = null or empty, 1 = unseen in
# training (or rarer than min_category_count), 2.. = the vocabulary in sorted order.
NULL_INDEX = 0
UNSEEN_INDEX = 1
FIRST_INDEX = 2

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
