"""The feature stage's settings and its fitted state.

``FeatureSettings`` holds the ``features`` config section under the config's
own key names. ``FeatureState`` is everything fitted on the training window
that scoring needs again: plain JSON (vocabularies, the rating grid of the
quantiles, the genre-affinity values, scaler and imputer values and the model
input spec), saved beside the feature tables and reused at scoring time, so
users and items that arrive later are encoded the same way. A state is built
once by ``FeatureFitter`` and never changed afterwards (frozen).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any, Literal

from jobs.features import stats
from jobs.schema import FIRST_INDEX, FeatureDecl

#: Events per Spark partition in the statistics passes (the default of every pass).
ROWS_PER_PARTITION = 500_000


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """How the feature stage fits (the ``features`` config section, same keys, plus the run's seed).

    Attributes:
        min_category_count: categories rarer than this map to the unseen index.
        quantiles: probabilities of the rating quantiles per user and item (a list is kept as a tuple).
        rating_grid_size: up to this many distinct ratings give exact
            quantiles; beyond, ratings snap down to this many approximate quantiles.
        impute: univariate imputation value of continuous features: mean | median.
        imputer: univariate | iterative (scikit-learn's IterativeImputer,
            fitted on a sample of the training entities on the driver).
        iterative_sample_rows: rows of that sample per side.
        iterative_max_iter: IterativeImputer's max_iter.
        affinity_column: the items' multi-valued column the user genre
            affinity is computed over (None: no affinity features).
        max_tags_per_item: most used tags an item keeps (``attach_tags``).
        rows_per_partition: events per Spark partition in the statistics passes
            (each partition is held in a Python worker's memory).
        example_statistics: how the statistics of a training example are
            computed. "leave_one_out": from all the entity's training-window
            events except the example's own, counted to the end of the window
            (what scoring sees, minus the label); "point_in_time": from the
            entity's events strictly before the example's timestamp, counted
            to that timestamp. Both keep an example's own rating out of its
            features.
        seed: seed of the imputer and its sample.
    """

    min_category_count: int = 1
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    rating_grid_size: int = 64
    impute: Literal["mean", "median"] = "mean"
    imputer: Literal["univariate", "iterative"] = "univariate"
    iterative_sample_rows: int = 5000
    iterative_max_iter: int = 10
    affinity_column: str | None = "genres"
    max_tags_per_item: int = 10
    rows_per_partition: int = ROWS_PER_PARTITION
    example_statistics: Literal["leave_one_out", "point_in_time"] = "leave_one_out"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        for name, allowed in (("impute", ("mean", "median")), ("imputer", ("univariate", "iterative")),
                              ("example_statistics", ("leave_one_out", "point_in_time"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"FeatureSettings.{name}: got {getattr(self, name)!r}, expected one of "
                                 f"{', '.join(allowed)}")


@dataclasses.dataclass(frozen=True)
class FeatureState:
    """Everything fitted on the training window that scoring needs again.

    Attributes:
        user_vocab, item_vocab: sorted ids known to the model.
        vocabs: output column -> sorted vocabulary of a categorical feature.
        scalers: continuous column -> {"mean", "std", "impute"} (after log1p for counts).
        decls: "user"/"item" -> the FeatureDecl list (as dicts).
        global_mean: mean training rating.
        max_multi_len: output column -> longest index list in training.
        as_of: end of the window (ISO timestamp) the "days since" features count to.
        quantiles: probabilities of the rating quantiles.
        rating_grid: sorted rating values of the quantile histogram.
        affinity_column, affinity: the items' column and values of the user genre affinity.
        continuous: "user"/"item" -> continuous columns in model-spec order.
        imputer: "user"/"item" -> fitted IterativeImputer parameters, or None (univariate).
        example_statistics: how the training examples' statistics are computed
            ("leave_one_out" or "point_in_time", see ``FeatureSettings``).
    """

    user_vocab: list
    item_vocab: list
    vocabs: dict[str, list]
    scalers: dict[str, dict[str, float]]
    decls: dict[str, list[dict]]
    global_mean: float
    max_multi_len: dict[str, int]
    as_of: str = ""
    quantiles: list[float] = dataclasses.field(default_factory=list)
    rating_grid: list[float] = dataclasses.field(default_factory=lambda: [0.0])
    affinity_column: str | None = None
    affinity: list = dataclasses.field(default_factory=list)
    continuous: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {"user": [], "item": []})
    imputer: dict[str, dict | None] = dataclasses.field(default_factory=lambda: {"user": None, "item": None})
    example_statistics: str = "leave_one_out"

    def side_decls(self, side: str) -> list[FeatureDecl]:
        return [FeatureDecl(**d) for d in self.decls[side]]

    def layout(self, side: str) -> stats.StatLayout:
        """Which history statistics ``side`` has."""
        affinity = tuple(stats.affinity_slugs(self.affinity)) if side == "user" else ()
        return stats.StatLayout(side, tuple(self.quantiles), tuple(self.rating_grid), affinity)

    def finalizer(self, side: str) -> stats.Finalizer:
        names = self.continuous[side]
        return stats.Finalizer(
            names=list(names),
            impute=[self.scalers[n]["impute"] for n in names],
            mean=[self.scalers[n]["mean"] for n in names],
            std=[self.scalers[n]["std"] for n in names],
            iterative=self.imputer.get(side),
        )

    def as_of_us(self) -> int:
        return int(dt.datetime.fromisoformat(self.as_of).timestamp() * 1_000_000)

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
                "continuous": list(self.continuous[side]),
            }
            for d in self.side_decls(side):
                name = f"{side}_{d.column}"
                if d.kind == "categorical":
                    entry["categorical"].append({"name": name, "vocab_size": len(self.vocabs[name]) + FIRST_INDEX})
                elif d.kind == "multi_categorical":
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
