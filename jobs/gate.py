"""The quality gate: whether a model's night may be published, from its holdout figure (a pure function).

A model is held back when its figure (nDCG@K by default) is below
popularity's on the same holdout, or more than ``margin`` (relative) below
the last committed night of the same model; a night whose holdout has fewer
than ``min_users`` evaluated users cannot rank models and is not evaluable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Literal

from jobs import commit
from jobs.storage import Location

PUBLISH, HELD_BACK, NOT_EVALUABLE = "publish", "held_back", "not_evaluable"
#: Relative drops within this much of the margin count as inside it (float rounding: 0.095 vs 0.1 at 5%).
_ROUNDING = 1e-9
Status = Literal["publish", "held_back", "not_evaluable"]

#: How each metric is written in messages.
LABELS = {"precision": "Precision", "recall": "Recall", "ndcg": "nDCG", "map": "MAP", "mrr": "MRR",
          "hit_rate": "HitRate"}


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """What the gate decided for one model, and why.

    Attributes:
        model: the model name.
        status: "publish", "held_back" or "not_evaluable".
        message: one line naming the model, the figure and by how much.
        figure: the figure's name, e.g. "nDCG@10".
        value: the model's figure (None: not computed).
        popularity: popularity's figure on the same holdout (None: not computed).
        previous: the last committed night's figure of the model (None: no committed night).
        users: holdout users the figure is over.
    """

    model: str
    status: Status
    message: str
    figure: str
    value: float | None
    popularity: float | None
    previous: float | None
    users: int

    @property
    def publish(self) -> bool:
        """Whether the model's tables may be published without an override."""
        return self.status == PUBLISH


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _below(value: float, reference: float) -> str:
    """How far ``value`` is below ``reference``, relative: "12.4%"."""
    return f"{100.0 * (reference - value) / reference:.1f}%"


def gate_decision(*, model: str, value: float | None, popularity: float | None, previous: float | None,
                  users: int, min_users: int, margin: float = 0.05, metric: str = "ndcg", k: int = 10
                  ) -> GateDecision:
    """Decide whether ``model``'s night is published.

    Rules, in order:

    1. ``users < min_users`` or no ``value``: not evaluable (the holdout cannot rank models);
    2. ``value < popularity``, or ``(previous - value) / previous > margin``: held back (every
       failed rule is named);
    3. otherwise: publish.

    Args:
        model: the model name (in the message).
        value: the model's holdout figure (``metric`` at ``k``, slice "all").
        popularity: popularity's figure on the same holdout (None: no popularity rule).
        previous: the last committed night's figure of the same model (None: no regression rule).
        users: holdout users with relevant items the figure is over.
        min_users: fewest holdout users a night needs to be evaluable (0: any).
        margin: relative regression allowed against ``previous``, in [0, 1).
        metric, k: which figure (for the message).

    Returns:
        GateDecision, e.g. held back with "two_tower nDCG@10 0.081 is 12.9% below the last committed
        night's 0.093 (margin 5%)".
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin is the relative regression allowed, in [0, 1), got {margin}; e.g. 0.05 for 5%")
    if min_users < 0:
        raise ValueError(f"min_users must be >= 0, got {min_users}")
    for name, figure in (("value", value), ("popularity", popularity), ("previous", previous)):
        if figure is not None and not math.isfinite(figure):
            raise ValueError(f"{name} is {figure}, expected a finite figure or None")
    figure = f"{LABELS.get(metric, metric)}@{k}"
    fields = {"model": model, "figure": figure, "value": value, "popularity": popularity, "previous": previous,
              "users": users}
    if value is None or users < min_users:
        size = f"{users:,} user{'s' if users != 1 else ''} with relevant items"
        why = f"the holdout has {size}, fewer than the {min_users:,} required" if users < min_users \
            else f"no {figure} was computed ({size})"
        return GateDecision(status=NOT_EVALUABLE, message=f"{model} is not evaluable: {why}", **fields)
    reasons = []
    if popularity is not None and value < popularity:
        reasons.append(f"is {_below(value, popularity)} below popularity's {_fmt(popularity)}")
    if previous is not None and previous > 0 and (previous - value) / previous > margin + _ROUNDING:
        reasons.append(f"is {_below(value, previous)} below the last committed night's {_fmt(previous)} "
                       f"(margin {100 * margin:g}%)")
    head = f"{model} {figure} {_fmt(value)}"
    if reasons:
        return GateDecision(status=HELD_BACK, message=f"{head} {' and '.join(reasons)}", **fields)
    against_popularity = (f"is not below popularity's {_fmt(popularity)}" if popularity is not None
                          else "has no popularity figure beside it")
    against_previous = (f"is not more than {100 * margin:g}% below the last committed night's {_fmt(previous)}"
                        if previous is not None else "has no committed night before it")
    return GateDecision(status=PUBLISH, message=f"{head} {against_popularity} and {against_previous}", **fields)


def last_committed_figure(warehouse: Location, ds: dt.date, model: str, *, metric: str = "ndcg", k: int = 10
                          ) -> tuple[str, float] | None:
    """The figure of ``model`` on the latest committed night before ``ds`` that published its recommendations.

    Reads that night's ``metrics`` partition (as its commit record lists it): the row model = ``model``,
    scorer "model", slice "all", ``metric`` at ``k``.

    Returns:
        (that night's ds, the figure), or None when no earlier night published the model (or its
        metrics table has no such row).
    """
    nights = sorted((name[len("ds="):-len(".json")] for name in (warehouse / commit.COMMITS).names()
                     if name.startswith("ds=") and name.endswith(".json")), reverse=True)
    for night in (n for n in nights if n < ds.isoformat()):
        record = commit.commit_record(warehouse, night) or {}
        parts = record.get("partitions", [])
        if not any(p["table"] == "recommendations" and p["keys"].get("model") == model for p in parts):
            continue
        metrics = [p["path"] for p in parts if p["table"] == "metrics"]
        if not metrics:
            return None
        table = (warehouse / metrics[0]).read_parquet().to_pandas()
        hit = table[(table.model == model) & (table.scorer == "model") & (table.slice == "all")
                    & (table.metric == metric) & (table.k == k)]
        return (night, float(hit.value.iloc[0])) if len(hit) else None
    return None
