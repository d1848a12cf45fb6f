"""Holdout metrics computed inside training (early stopping) and by the benchmark.

* ``RatingHoldout``: RMSE and MAE of predicted ratings on held-out rows.
* ``RankingHoldout``: Precision, Recall, nDCG and MAP at K of the top-K over
  the whole catalogue (items the user had in training excluded).
* ``ClickHoldout``: AUC and log loss of a click-style model (sampled-negative
  objective) on held-out positives and seeded sampled negatives.

The ranking formulas are those of ``jobs.evaluate`` (the published metrics):
Precision@K = hits / K; Recall@K = hits / |R|; nDCG@K = DCG / ideal DCG of
min(K, |R|) hits; AP@K = sum of Precision@k at the hits / min(K, |R|).
``RankingHoldout.from_table`` reads the holdout that ``jobs.evaluate.ranking_holdout``
builds, so the figure training logs is the one the night publishes (same
users, relevant items, seen items and popularity-ranked users).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.arrays import list_offsets
from jobs.schema import POPULARITY_SOURCE, RANKING_HOLDOUT_COLUMNS
from jobs.storage import Location
from models.catalogue import SideTable, read_side_table
from models.data import (
    arrow_columns,
    input_columns,
    iter_batches,
    parquet_files,
    read_column,
    read_columns,
    read_parquet,
    side_columns,
    to_feed,
)
from models.layers import RESERVED_ROWS
from models.model_scoring import top_k_blocks


def ranking_metrics(top: np.ndarray, relevant: list[np.ndarray], k: int,
                    n_relevant: Sequence[int] | None = None) -> dict[str, float]:
    """Mean P@k, Recall@k, nDCG@k and MAP@k.

    Args:
        top: [n_users, >=k] recommended positions, best first (-1 = none).
        relevant: per user, the relevant positions that can be recommended.
        k: cut-off.
        n_relevant: per user, |R| (default: ``len(relevant[u])``); larger where relevant items lie
            outside the catalogue (they count and are never hit). Users with |R| = 0 are skipped.

    Returns:
        {"precision", "recall", "ndcg", "map", "users"}.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    sums = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0}
    users = 0
    sizes = [len(r) for r in relevant] if n_relevant is None else list(n_relevant)
    for row, rel, size in zip(top, relevant, sizes):
        if size == 0:
            continue
        users += 1
        hits = np.isin(row[:k], rel) & (row[:k] >= 0)
        n_hits = hits.sum()
        cut = min(k, size)
        sums["precision"] += n_hits / k
        sums["recall"] += n_hits / size
        sums["ndcg"] += (discounts[: len(hits)] * hits).sum() / discounts[:cut].sum()
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        sums["map"] += (precision_at * hits).sum() / cut
    out = {m: float(v / users) if users else 0.0 for m, v in sums.items()}
    out["users"] = users
    return out


def _ids(files: list[Location], column: str) -> np.ndarray:
    return np.asarray(read_column(files, column).to_numpy(zero_copy_only=False))


def items_by_user(files: list[Location], users: SideTable, catalogue: SideTable) -> list[np.ndarray]:
    """Catalogue positions of each user's items in Parquet files of (user_id, item_id) rows, one sorted
    array per row of ``users`` ([] for a user without any; rows of unknown users or items are dropped)."""
    user_pos = users.positions(_ids(files, "user_id"))
    item_pos = catalogue.positions(_ids(files, "item_id"))
    keep = (user_pos >= 0) & (item_pos >= 0)
    user_pos, item_pos = user_pos[keep], item_pos[keep]
    order = np.argsort(user_pos, kind="stable")
    bounds = np.searchsorted(user_pos[order], np.arange(len(users) + 1))
    items = item_pos[order]
    return [np.unique(items[bounds[u]: bounds[u + 1]]) for u in range(len(users))]


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


def _list_positions(catalogue: SideTable, column: pa.Array) -> list[np.ndarray]:
    """A list<item id> column -> per row the catalogue positions of its ids, in list order (-1: not there)."""
    offsets, values = list_offsets(column)
    positions = catalogue.positions(pa.array(values, type=catalogue.ids.type)) if len(values) else \
        np.zeros(0, np.int64)
    return [positions[offsets[r]: offsets[r + 1]] for r in range(len(column))]


def _known(positions: np.ndarray) -> np.ndarray:
    """The distinct catalogue positions of a list, ascending (ids outside the catalogue dropped)."""
    return np.unique(positions[positions >= 0])


class RankingHoldout:
    """Precision, Recall, nDCG and MAP at K of each evaluated user's top-K; nDCG drives early stopping.

    Users of ``users`` are ranked by the model (their seen items excluded);
    users of ``fixed`` keep the list given for them (the popularity ranking,
    which does not depend on the model). Build one with ``from_table`` (the
    night's one definition) or ``from_examples``.

    Args:
        catalogue: the items ranked (the window's item feature table), in catalogue order.
        users: the model-ranked users' inputs.
        seen: per model-ranked user, the catalogue positions excluded.
        relevant: per evaluated user (model-ranked first, then fixed), the relevant catalogue positions.
        n_relevant: per evaluated user, |R| (relevant items outside the catalogue included).
        fixed: [n_fixed, k] catalogue positions of the fixed users' lists, best first (-1 = none).
        k: cut-off.
    """

    name = "ndcg"
    higher_is_better = True

    def __init__(self, *, catalogue: SideTable, users: SideTable, seen: list[np.ndarray],
                 relevant: list[np.ndarray], n_relevant: Sequence[int], fixed: np.ndarray, k: int):
        if len(seen) != len(users) or len(relevant) != len(users) + len(fixed) or len(n_relevant) != len(relevant):
            raise ValueError(f"ranking holdout: {len(users)} model-ranked and {len(fixed)} fixed users, but "
                             f"{len(seen)} seen lists, {len(relevant)} relevant lists and {len(n_relevant)} sizes; "
                             "expected one seen list per model-ranked user and one relevant list per user")
        self.k = int(k)
        self.catalogue, self.users, self.seen = catalogue, users, seen
        self.relevant, self.n_relevant, self.fixed = relevant, np.asarray(n_relevant, np.int64), fixed

    @property
    def evaluated_users(self) -> int:
        """Users with at least one relevant item (the count every figure is over)."""
        return int((self.n_relevant > 0).sum())

    @classmethod
    def from_table(cls, table: Location, item_features: Location, spec, *, k: int = 10) -> RankingHoldout:
        """The holdout of ``jobs.evaluate.ranking_holdout``: the figure is the one the night publishes.

        Args:
            table: Parquet [user_id, source, relevant, seen, fixed, the user input columns of ``spec``].
            item_features: the catalogue (item_id and the item inputs).
            spec: the model input spec.
            k: cut-off.
        """
        catalogue = read_side_table(item_features, spec["item"], "item_id")
        user_inputs = side_columns(spec["user"])
        files = parquet_files(table)
        parts = [read_parquet(f, [*RANKING_HOLDOUT_COLUMNS, *user_inputs]) for f in files]
        rows = pa.concat_tables(parts).combine_chunks() if parts else None
        if rows is None or rows.num_rows == 0:
            empty = SideTable(ids=pa.array([], catalogue.ids.type), columns={})
            return cls(catalogue=catalogue, users=empty, seen=[], relevant=[], n_relevant=[],
                       fixed=np.zeros((0, int(k)), np.int64), k=k)
        rows = rows.sort_by("user_id")
        by_model = pc.not_equal(rows.column("source"), POPULARITY_SOURCE)
        ranked, kept = rows.filter(by_model), rows.filter(pc.invert(by_model))
        missing = ranked.filter(pc.is_null(ranked.column(spec["user"]["id"]["name"])))
        if missing.num_rows:
            raise ValueError(f"{table.display()}: user {missing.column('user_id')[0].as_py()!r} is ranked by the "
                             "model but has no feature row; build the table with jobs.evaluate.ranking_holdout from "
                             "the same user feature table")
        users = SideTable(ids=ranked.column("user_id").combine_chunks(),
                          columns=arrow_columns(ranked, user_inputs))
        seen = [_known(p) for p in _list_positions(catalogue, ranked.column("seen").combine_chunks())]
        fixed = np.full((kept.num_rows, int(k)), -1, np.int64)
        for r, items in enumerate(_list_positions(catalogue, kept.column("fixed").combine_chunks())):
            fixed[r, : min(len(items), int(k))] = items[: int(k)]
        relevant = [_list_positions(catalogue, part.column("relevant").combine_chunks()) for part in (ranked, kept)]
        relevant = relevant[0] + relevant[1]
        sizes = [len(p) for p in relevant]
        relevant = [_known(p) for p in relevant]
        return cls(catalogue=catalogue, users=users, seen=seen, relevant=relevant, n_relevant=sizes, fixed=fixed, k=k)

    @classmethod
    def from_examples(cls, holdout: Location, train: Location, item_features: Location, spec, *, k: int = 10,
                      max_users: int = 2000, seed: int = 0) -> RankingHoldout:
        """The holdout of feature-joined holdout examples: every user ranked by the model.

        Only users and items with feature rows are in feature-joined examples,
        so this equals the night's definition (``from_table``) only where every
        holdout user has training events and every held-out item is in the
        catalogue (e.g. the benchmark's per-user splits), and without a sample.

        Args:
            holdout: Parquet holdout examples (user_id, item_id and the user inputs).
            train: Parquet training examples (user_id, item_id): excluded from each user's top-K.
            item_features: the catalogue (item_id and the item inputs).
            spec: the model input spec.
            k: cut-off.
            max_users: evaluate at most this many users (a seeded sample).
            seed: the sample's seed.
        """
        catalogue = read_side_table(item_features, spec["item"], "item_id")
        users = read_side_table(holdout, spec["user"], "user_id")
        if len(users) > max_users:
            keep = np.sort(np.random.default_rng(seed).choice(len(users), size=max_users, replace=False))
            users = SideTable(ids=users.ids.take(keep), columns=users.take(keep))

        seen = items_by_user(parquet_files(train), users, catalogue)
        relevant = [np.setdiff1d(r, s)
                    for r, s in zip(items_by_user(parquet_files(holdout), users, catalogue), seen)]
        return cls(catalogue=catalogue, users=users, seen=seen, relevant=relevant,
                   n_relevant=[len(r) for r in relevant], fixed=np.zeros((0, int(k)), np.int64), k=k)

    def evaluate(self, model) -> dict[str, float]:
        """{"ndcg", "recall", "precision", "map", "users"} at ``k``."""
        top = np.full((len(self.users), self.k), -1, np.int64)
        if len(self.users):
            for start, pos, _ in top_k_blocks(model, self.users.columns, self.catalogue.columns, self.seen, self.k):
                top[start: start + len(pos), : pos.shape[1]] = pos
        return ranking_metrics(np.concatenate([top, self.fixed]), self.relevant, self.k, self.n_relevant)


class ClickHoldout:
    """AUC and log loss of a click-style model on held-out positives and seeded sampled negatives.

    Every held-out row (user u, item i) is a positive (y = 1); for each,
    ``negative_ratio`` items are drawn uniformly, with replacement, from the
    catalogue items with a trained index (as the training sampler draws
    them), and each is a negative (y = 0) of the same user, unless it is one
    of u's held-out items (then it is dropped). With s the model's score (a
    logit) and sigma the logistic function, over the P positives and N negatives:

    * AUC = (1 / (P N)) sum_{p, n} ([s_p > s_n] + 0.5 [s_p = s_n]): the chance a positive outranks a negative;
    * log loss = -(1 / (P + N)) sum_j (y_j log sigma(s_j) + (1 - y_j) log(1 - sigma(s_j))), in nats.

    Args:
        holdout: Parquet holdout examples (user_id, item_id and every input column of ``spec``).
        item_features: the catalogue (item_id and the item inputs).
        spec: the model input spec.
        negative_ratio: negatives drawn per positive.
        seed: seed of the draws (the same seed, holdout and catalogue give the same negatives).
        batch_size: rows scored at once.
    """

    name = "auc"
    higher_is_better = True

    def __init__(self, holdout: Location, item_features: Location, spec, *, negative_ratio: int = 4, seed: int = 0,
                 batch_size: int = 8192):
        if negative_ratio < 1:
            raise ValueError(f"negative_ratio must be >= 1, got {negative_ratio}")
        files = parquet_files(holdout)
        self.batch_size = int(batch_size)
        self.catalogue = read_side_table(item_features, spec["item"], "item_id")
        self.user_inputs = list(side_columns(spec["user"]))
        self.positives = read_columns(files, input_columns(spec))
        item_idx = self.catalogue.columns[spec["item"]["id"]["name"]]
        candidates = np.nonzero(item_idx >= RESERVED_ROWS)[0]
        if candidates.size == 0:
            raise ValueError(f"{item_features.display()}: no catalogue item has a trained index (>= "
                             f"{RESERVED_ROWS}): nothing to sample negatives from")
        n = len(next(iter(self.positives.values()))) if self.positives else 0
        draws = candidates[np.random.default_rng(seed).integers(0, candidates.size, size=(n, int(negative_ratio)))]
        user_code = np.unique(_ids(files, "user_id"), return_inverse=True)[1].astype(np.int64)
        held_items = self.catalogue.positions(_ids(files, "item_id"))
        held = (user_code * len(self.catalogue) + held_items)[held_items >= 0]
        rows = np.repeat(np.arange(n), int(negative_ratio))
        keys = user_code[rows] * len(self.catalogue) + draws.reshape(-1)
        keep = ~np.isin(keys, held)
        #: [N] the positive row each negative belongs to, and its catalogue position.
        self.negative_rows, self.negative_items = rows[keep], draws.reshape(-1)[keep]

    def _scores(self, model, rows: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start: start + self.batch_size]
            feed = {n: a[chunk] for n, a in self.positives.items()}
            if items is not None:
                feed.update(self.catalogue.take(items[start: start + self.batch_size]))
            out.append(np.asarray(model(feed), dtype=np.float64).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0)

    def evaluate(self, model) -> dict[str, float]:
        """{"auc", "log_loss", "positives", "negatives"} of ``model``."""
        n = len(next(iter(self.positives.values()))) if self.positives else 0
        positive = self._scores(model, np.arange(n), None)
        negative = self._scores(model, self.negative_rows, self.negative_items)
        if positive.size == 0 or negative.size == 0:
            return {"auc": 0.0, "log_loss": 0.0, "positives": int(positive.size), "negatives": int(negative.size)}
        scores = np.concatenate([positive, negative])
        ranks = _average_ranks(scores)
        auc = (ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2) / (positive.size * negative.size)
        # -log sigma(s) = log(1 + e^-s); -log(1 - sigma(s)) = log(1 + e^s)
        loss = (np.logaddexp(0.0, -positive).sum() + np.logaddexp(0.0, negative).sum()) / scores.size
        return {"auc": float(auc), "log_loss": float(loss), "positives": int(positive.size),
                "negatives": int(negative.size)}


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` ascending, ties sharing their mean rank: [n] float64."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts) - 1
    first = np.nonzero(starts)[0]
    last = np.concatenate([first[1:], [values.size]]) - 1
    mean_rank = (first + last) / 2.0 + 1.0
    ranks = np.empty(values.size, np.float64)
    ranks[order] = mean_rank[group]
    return ranks
