"""Holdout metrics computed inside training (early stopping) and by the benchmark.

* ``RatingHoldout``: RMSE and MAE of predicted ratings on held-out rows.
* ``RankingHoldout``: nDCG@K and Recall@K of the top-K over the whole
  catalogue (items the user had in training excluded), for held-out users.

The ranking formulas are those of ``jobs.evaluate`` (the published metrics):
nDCG@K = DCG / ideal DCG of min(K, |R|) hits; Recall@K = hits / |R|.
"""

from __future__ import annotations

import numpy as np

from jobs.storage import Location
from models.catalogue import SideTable, read_side_table
from models.data import input_columns, iter_batches, parquet_files, read_column, to_feed
from models.model_scoring import top_k_blocks


def ranking_metrics(top: np.ndarray, relevant: list[np.ndarray], k: int) -> dict[str, float]:
    """Mean P@k, Recall@k, nDCG@k and MAP@k.

    Args:
        top: [n_users, >=k] recommended positions, best first (-1 = none).
        relevant: per user, the relevant positions (users with none are skipped).
        k: cut-off.

    Returns:
        {"precision", "recall", "ndcg", "map", "users"}.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    sums = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0}
    users = 0
    for row, rel in zip(top, relevant):
        if len(rel) == 0:
            continue
        users += 1
        hits = np.isin(row[:k], rel) & (row[:k] >= 0)
        n_hits = hits.sum()
        cut = min(k, len(rel))
        sums["precision"] += n_hits / k
        sums["recall"] += n_hits / len(rel)
        sums["ndcg"] += (discounts[: len(hits)] * hits).sum() / discounts[:cut].sum()
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        sums["map"] += (precision_at * hits).sum() / cut
    out = {m: v / users if users else 0.0 for m, v in sums.items()}
    out["users"] = users
    return out


def _ids(files: list[Location], column: str) -> np.ndarray:
    return np.asarray(read_column(files, column).to_numpy(zero_copy_only=False))


class RatingHoldout:
    """RMSE / MAE of a model's predictions on held-out rated rows.

    Args:
        holdout: Parquet examples (every input column of ``spec`` and ``rating``).
        spec: the model input spec.
    """

    name = "rmse"
    higher_is_better = False

    def __init__(self, holdout: Location, spec, batch_size: int = 8192):
        files = parquet_files(holdout)
        columns = {**input_columns(spec), "rating": 0}
        self.batches = [to_feed(b) for b in iter_batches(files, columns, batch_size, shuffle=False)]
        self.rows = sum(len(b["rating"]) for b in self.batches)

    def evaluate(self, model) -> dict[str, float]:
        """{"rmse", "mae", "rows"} of ``model`` on the holdout."""
        sq = ab = 0.0
        for batch in self.batches:
            err = np.asarray(model(batch), dtype=np.float64) - batch["rating"]
            sq += float((err * err).sum())
            ab += float(np.abs(err).sum())
        n = max(self.rows, 1)
        return {"rmse": float(np.sqrt(sq / n)), "mae": ab / n, "rows": self.rows}


class RankingHoldout:
    """nDCG@K / Recall@K of exhaustive top-K for (a sample of) held-out users.

    Args:
        holdout: Parquet holdout examples (user_id, item_id and the user inputs).
        train: Parquet training examples (user_id, item_id): excluded from each user's top-K.
        item_features: the catalogue (item_id and the item inputs).
        spec: the model input spec.
        k: cut-off.
        max_users: evaluate at most this many users (a seeded sample).
        seed: the sample's seed.
    """

    name = "ndcg"
    higher_is_better = True

    def __init__(self, holdout: Location, train: Location, item_features: Location, spec, *, k: int = 10,
                 max_users: int = 2000, seed: int = 0):
        self.k = int(k)
        self.catalogue: SideTable = read_side_table(item_features, spec["item"], "item_id")
        users = read_side_table(holdout, spec["user"], "user_id")
        if len(users) > max_users:
            keep = np.sort(np.random.default_rng(seed).choice(len(users), size=max_users, replace=False))
            users = SideTable(ids=users.ids.take(keep), columns=users.take(keep))
        self.users = users
        self.relevant = self._positions_by_user(parquet_files(holdout))
        self.seen = self._positions_by_user(parquet_files(train))
        self.relevant = [np.setdiff1d(r, s) for r, s in zip(self.relevant, self.seen)]

    def _positions_by_user(self, files: list[Location]) -> list[np.ndarray]:
        user_pos = self.users.positions(_ids(files, "user_id"))
        item_pos = self.catalogue.positions(_ids(files, "item_id"))
        keep = (user_pos >= 0) & (item_pos >= 0)
        user_pos, item_pos = user_pos[keep], item_pos[keep]
        order = np.argsort(user_pos, kind="stable")
        bounds = np.searchsorted(user_pos[order], np.arange(len(self.users) + 1))
        items = item_pos[order]
        return [np.unique(items[bounds[u] : bounds[u + 1]]) for u in range(len(self.users))]

    def evaluate(self, model) -> dict[str, float]:
        """{"ndcg", "recall", "precision", "map", "users"} at ``k``."""
        tops = [pos for _, pos, _ in top_k_blocks(model, self.users.columns, self.catalogue.columns, self.seen,
                                                  self.k)]
        top = np.concatenate(tops) if tops else np.zeros((0, self.k), np.int64)
        return ranking_metrics(top, self.relevant, self.k)

