"""What the nightly flow's tasks hand each other, and the summary of a night.

Task results are small frozen dataclasses; large data stays in the run
catalogue and travels as ``Dataset`` handles.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from jobs.features import FeatureDecl, FeatureState
from jobs.run_catalogue import Dataset
from jobs.storage import Location


@dataclasses.dataclass(frozen=True)
class Ingested:
    """What ingest kept and refused.

    Attributes:
        events: interaction rows kept (through ds).
        quarantined: rows refused, by reason (all tables).
        quarantined_by_table: {table: {reason: rows}}.
        quarantine_share: refused interaction rows / interaction rows read.
        source: the source's name.
        user_features, item_features: the side columns the source declares.
        rating_range: (min, max) the ratings were checked against (None: unchecked).
        now: the wall clock of the future-timestamp check.
    """

    events: int
    quarantined: dict[str, int]
    quarantined_by_table: dict[str, dict[str, int]]
    quarantine_share: float
    source: str
    user_features: tuple[FeatureDecl, ...]
    item_features: tuple[FeatureDecl, ...]
    rating_range: tuple[float | None, float | None]
    now: dt.datetime


@dataclasses.dataclass(frozen=True)
class Split:
    """Events on each side of the holdout cut-off."""

    train: int
    holdout: int


@dataclasses.dataclass(frozen=True)
class FittedWindow:
    """The feature stage of one window ("eval": fitted on train; "full": on train + holdout)."""

    name: str
    state: FeatureState
    users: int
    items: int
    examples: int


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """One trained model of one window."""

    name: str
    kind: str
    objective: str
    window: str
    model: Dataset
    best_epoch: int
    factorised: bool


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """The embedding tables of a factorised model (``<user, item>`` is its score)."""

    user: Dataset
    item: Dataset


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Holdout metrics of one model beside popularity (``jobs.evaluate.ranking_metrics`` dicts)."""

    k: int
    model: dict[str, float]
    popularity: dict[str, float]
    rating: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"k": self.k, "model": self.model, "popularity": self.popularity}
        if self.rating is not None:
            out["rating"] = self.rating
        return out


@dataclasses.dataclass(frozen=True)
class NightSummary:
    """What one night built: counts, metrics per model and the published partitions."""

    ds: dt.date
    warehouse: Location
    users: int
    items: int
    ingested: Ingested
    split: Split
    metrics: dict[str, Evaluation]
    published: dict[str, Location]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values (``--json``)."""
        return {
            "ds": self.ds.isoformat(),
            "warehouse": self.warehouse.display(),
            "users": self.users,
            "items": self.items,
            "ratings": self.ingested.events,
            "counts": {
                "events": self.ingested.events, "train": self.split.train, "holdout": self.split.holdout,
                "quarantined": self.ingested.quarantined,
                "quarantined_by_table": self.ingested.quarantined_by_table,
                "quarantine_share": self.ingested.quarantine_share, "source": self.ingested.source,
            },
            "metrics": {name: e.as_dict() for name, e in self.metrics.items()},
            "published": {table: loc.display() for table, loc in self.published.items()},
            "seconds": self.seconds,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def format(self) -> str:
        """One screen of text: where the tables are and how the models did."""
        lines = [
            f"nightrec nightly ds={self.ds.isoformat()} finished in {self.seconds}s",
            f"  data:      {self.users:,} users, {self.items:,} items, {self.ingested.events:,} ratings "
            f"({self.split.train:,} train / {self.split.holdout:,} holdout)",
            f"  warehouse: {self.warehouse.display()}",
        ]
        lines += [f"    {table:<28} {loc.display()}" for table, loc in self.published.items()]
        for name, result in self.metrics.items():
            k, m, p = result.k, result.model, result.popularity
            lines.append(f"  holdout metrics, model={name} ({m['users']:,} users):")
            lines.append(f"    {'':<12}" + "".join(f"{label + str(k):>12}" for label in ("recall@", "ndcg@", "P@", "MAP@")))
            for label, row in ((name, m), ("popularity", p)):
                lines.append(f"    {label:<12}" + "".join(f"{row[key]:>12.4f}" for key in ("recall", "ndcg", "precision", "map")))
            if p["ndcg"] > 0:
                lines.append(f"    {name} / popularity nDCG: {m['ndcg'] / p['ndcg']:.2f}x")
            if result.rating is not None:
                r = result.rating
                lines.append(f"    rating error on {r['rows']:,} holdout rows: RMSE {r['rmse']:.4f}, MAE {r['mae']:.4f}")
        return "\n".join(lines)
