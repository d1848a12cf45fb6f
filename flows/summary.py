"""What the nightly flow's tasks hand each other, and the summary of a night.

Task results are small frozen dataclasses; large data stays in the run
catalogue and travels as ``Dataset`` handles. Each result has
``to_record()`` (JSON-ready) and ``from_record(data, cat)``, so that the run
record (``flows.run_record``) can hand a rerun the results of the steps an
earlier attempt finished.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from jobs.features import FeatureDecl, FeatureState
from jobs.run_catalogue import Dataset, RunCatalogue
from jobs.storage import Location
from models.settings import MODEL_FILE


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

    def to_record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "now": self.now.isoformat()}

    @classmethod
    def from_record(cls, data: dict[str, Any], cat: RunCatalogue) -> "Ingested":
        return cls(**{**data, "user_features": tuple(FeatureDecl(**d) for d in data["user_features"]),
                      "item_features": tuple(FeatureDecl(**d) for d in data["item_features"]),
                      "rating_range": tuple(data["rating_range"]), "now": dt.datetime.fromisoformat(data["now"])})


@dataclasses.dataclass(frozen=True)
class Split:
    """Events on each side of the holdout cut-off."""

    train: int
    holdout: int

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any], cat: RunCatalogue) -> "Split":
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class FittedWindow:
    """The feature stage of one window ("eval": fitted on train; "full": on train + holdout)."""

    name: str
    state: FeatureState
    users: int
    items: int
    examples: int

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "users": self.users, "items": self.items, "examples": self.examples}

    @classmethod
    def from_record(cls, data: dict[str, Any], cat: RunCatalogue) -> "FittedWindow":
        state = FeatureState.from_json(cat.dataset(f"{data['name']}.feature_state").read_text())
        return cls(state=state, **data)


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

    @property
    def model_file(self) -> Location:
        """The saved ``.keras`` file in the model folder."""
        return self.model.location / MODEL_FILE

    def to_record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model": self.model.name}

    @classmethod
    def from_record(cls, data: dict[str, Any], cat: RunCatalogue) -> "TrainedModel":
        return cls(**{**data, "model": cat.dataset(data["model"])})


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """The embedding tables of a factorised model (``<user, item>`` is its score)."""

    user: Dataset
    item: Dataset

    def to_record(self) -> dict[str, Any]:
        return {"user": self.user.name, "item": self.item.name}

    @classmethod
    def from_record(cls, data: dict[str, Any], cat: RunCatalogue) -> "Embeddings":
        return cls(user=cat.dataset(data["user"]), item=cat.dataset(data["item"]))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Holdout metrics of one model beside the baselines.

    Attributes:
        k: the cut-off.
        model, popularity: slice "all" figures (``jobs.evaluate.ranking_metrics`` dicts: precision,
            recall, ndcg, map, mrr, hit_rate, users).
        rating: RMSE / MAE / rows of a rating model (None otherwise).
        rows: every figure of the model and its baselines as metrics-table rows
            (``jobs.evaluate.MetricRow`` fields), slices and beyond-accuracy metrics included.
    """

    k: int
    model: dict[str, float]
    popularity: dict[str, float]
    rating: dict[str, float] | None = None
    rows: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = {"k": self.k, "model": self.model, "popularity": self.popularity}
        if self.rating is not None:
            out["rating"] = self.rating
        return out

    def to_record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rows": list(self.rows)}

    @classmethod
    def from_record(cls, data: dict[str, Any], cat: RunCatalogue) -> "Evaluation":
        return cls(**{**data, "rows": tuple(data.get("rows", ()))})


def run_counts(ingested: Ingested, split: Split) -> dict[str, Any]:
    """The night's row counts as recorded in the recommendations manifests and the JSON summary."""
    return {
        "events": ingested.events, "train": split.train, "holdout": split.holdout,
        "quarantined": ingested.quarantined, "quarantined_by_table": ingested.quarantined_by_table,
        "quarantine_share": ingested.quarantine_share, "source": ingested.source,
    }


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
    run_id: str = ""
    reused: tuple[str, ...] = ()
    gate: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def held_back(self) -> list[str]:
        """The models whose tables the quality gate kept out of this night."""
        return [name for name, d in self.gate.items() if not d["published"]]

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values (``--json``)."""
        return {
            "ds": self.ds.isoformat(),
            "warehouse": self.warehouse.display(),
            "users": self.users,
            "items": self.items,
            "ratings": self.ingested.events,
            "counts": run_counts(self.ingested, self.split),
            "metrics": {name: e.as_dict() for name, e in self.metrics.items()},
            "published": {table: loc.display() for table, loc in self.published.items()},
            "seconds": self.seconds,
            "run_id": self.run_id,
            "reused": list(self.reused),
            "gate": self.gate,
            "held_back": self.held_back,
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
        if self.reused:
            lines.append(f"  reused from an earlier attempt: {', '.join(self.reused)}")
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
            if name in self.gate:
                lines.append(f"    gate: {self._gate_line(name)}")
        return "\n".join(lines)

    def _gate_line(self, name: str) -> str:
        d = self.gate[name]
        verdict = ("PUBLISHED ANYWAY (override)" if d["override"] else "published" if d["published"]
                   else "HELD BACK: the previous tables stay")
        return f"{d['message']}: {verdict}"

    def markdown(self) -> str:
        """The summary as a Markdown table (the run's Prefect artifact)."""
        lines = [f"# nightrec ds={self.ds.isoformat()} (run {self.run_id}, {self.seconds}s)", "",
                 f"{self.users:,} users, {self.items:,} items, {self.ingested.events:,} events "
                 f"({self.split.train:,} train / {self.split.holdout:,} holdout), "
                 f"{sum(self.ingested.quarantined.values()):,} quarantined", ""]
        if self.reused:
            lines += [f"Reused from an earlier attempt: {', '.join(self.reused)}", ""]
        lines += ["| model | scorer | recall | nDCG | P | MAP | users |", "|---|---|---|---|---|---|---|"]
        for name, result in self.metrics.items():
            for label, row in ((name, result.model), ("popularity", result.popularity)):
                lines.append(f"| {name} | {label} | {row['recall']:.4f} | {row['ndcg']:.4f} | "
                             f"{row['precision']:.4f} | {row['map']:.4f} | {row['users']:,} |")
        if self.gate:
            lines += ["", "| model | quality gate |", "|---|---|"]
            lines += [f"| {name} | {self._gate_line(name)} |" for name in self.gate]
        lines += ["", "| table | committed partition |", "|---|---|"]
        lines += [f"| {table} | `{loc.display()}` |" for table, loc in self.published.items()]
        return "\n".join(lines)
