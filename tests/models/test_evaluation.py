"""Holdout metrics: ranking formulas by hand, the holdouts' rows, RMSE, AUC and log loss against NumPy."""

import numpy as np
import pyarrow as pa
import pytest

from models.evaluation import (
    ClickHoldout,
    RankingHoldout,
    RatingHoldout,
    ranking_metrics,
)
from models.registry import load_model
from models.settings import TrainSettings
from models.train import train_model
from tests.fixtures.models import TRAIN_SPEC as SPEC
from tests.fixtures.models import (
    train_feed,
    train_rows,
    write_catalogue,
    write_examples,
    write_holdout,
    write_table,
)


def test_rating_holdout_matches_numpy(root):
    path, table = write_examples(root, n=50)
    model = load_model(train_model("mf_mean", SPEC, path, root / "m",
                                   settings=TrainSettings(objective="rating", epochs=1, batch_size=16),
                                   model_params={"embedding_dim": 4}, log=lambda _: None).model_file)
    got = RatingHoldout(path, SPEC, batch_size=7).evaluate(model)
    predicted = np.asarray(model(train_feed(table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy())))
    err = predicted - table.column("rating").to_numpy()
    assert got["rows"] == 50
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)


def test_ranking_metrics_by_hand():
    top = np.array([[5, 1, 7], [2, 3, 4], [9, -1, -1]])
    relevant = [np.array([1, 7]), np.array([8]), np.array([9, 4, 2, 1])]
    got = ranking_metrics(top, relevant + [], k=3)
    d = 1 / np.log2([2, 3, 4])
    ndcg = [(d[1] + d[2]) / (d[0] + d[1]), 0.0, d[0] / d.sum()]
    ap = [(1 / 2 + 2 / 3) / 2, 0.0, 1.0 / 3]
    assert got["users"] == 3
    assert got["precision"] == pytest.approx(np.mean([2 / 3, 0, 1 / 3]))
    assert got["recall"] == pytest.approx(np.mean([1.0, 0.0, 0.25]))
    assert got["ndcg"] == pytest.approx(np.mean(ndcg))
    assert got["map"] == pytest.approx(np.mean(ap))
    # Relevant items outside the catalogue count in |R| and are never hit: user 1 has 3 relevant, 1 reachable.
    wider = ranking_metrics(top, relevant, k=3, n_relevant=[2, 3, 4])
    assert wider["recall"] == pytest.approx(np.mean([1.0, 0.0, 0.25]))
    assert wider["map"] == pytest.approx(np.mean([ap[0], 0.0, ap[2]]))
    skipped = ranking_metrics(top, relevant, k=3, n_relevant=[2, 0, 4])
    assert skipped["users"] == 2


def test_ranking_holdout_excludes_training_items(root):
    train = write_table(root / "train", train_rows(np.array([2, 2, 3]), np.array([2, 3, 5])))
    holdout = write_table(root / "holdout", train_rows(np.array([2, 2, 3]), np.array([3, 4, 6])))
    evaluator = RankingHoldout.from_examples(holdout, train, write_catalogue(root), SPEC, k=2)
    assert evaluator.users.ids.to_pylist() == [2, 3]
    # Catalogue positions: item idx 2..7 -> 0..5. User 2 had item 3 in training: only item 4 is relevant.
    assert [r.tolist() for r in evaluator.relevant] == [[2], [4]]
    assert [s.tolist() for s in evaluator.seen] == [[0, 1], [3]]


def _holdout_table(root, rows: list[dict]):
    """A ranking holdout table as jobs.evaluate.ranking_holdout writes it (ids of TRAIN_SPEC: item = 10 x index)."""
    ids = pa.list_(pa.int64())
    return write_table(root / "ranking_holdout", pa.table({
        "user_id": pa.array([r["user"] for r in rows], pa.int64()),
        "source": pa.array([r["source"] for r in rows]),
        "relevant": pa.array([r["relevant"] for r in rows], ids),
        "seen": pa.array([r.get("seen") for r in rows], ids),
        "fixed": pa.array([r.get("fixed") for r in rows], ids),
        "user_idx": pa.array([r.get("user") if r["source"] != "popularity" else None for r in rows], pa.int32()),
        "user_x": pa.array([float(r["user"] % 2) if r["source"] != "popularity" else None for r in rows],
                           pa.float32()),
    }))


def test_ranking_holdout_from_table_ranks_model_users_and_keeps_the_fixed_lists(root):
    path, _ = write_examples(root, n=200)
    model = load_model(train_model("mf", SPEC, path, root / "m", settings=TrainSettings(epochs=1, batch_size=32),
                                   model_params={"embedding_dim": 4}, log=lambda _: None).model_file)
    catalogue = write_catalogue(root)     # items 20..70
    table = _holdout_table(root, [
        # user 2: seen 20, 30; relevant 40 and 990 (outside the catalogue: counts, never hit)
        {"user": 2, "source": "model", "relevant": [40, 990], "seen": [20, 30]},
        {"user": 3, "source": "features", "relevant": [50, 60]},
        # user 9 is new: ranked by popularity, its list fixed: 60, 20 (hit at rank 2)
        {"user": 9, "source": "popularity", "relevant": [20], "fixed": [60, 20]},
    ])
    holdout = RankingHoldout.from_table(table, catalogue, SPEC, k=2)
    assert holdout.users.ids.to_pylist() == [2, 3] and holdout.evaluated_users == 3
    assert holdout.n_relevant.tolist() == [2, 2, 1]
    got = holdout.evaluate(model)
    # NumPy reference: the model's scores of users 2 and 3 over items 2..7, seen masked
    scores = np.array(model.score_matrix(train_feed([2, 3], [2, 2]), train_feed([2] * 6, np.arange(2, 8))))
    scores[0, [0, 1]] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :2]
    d = 1 / np.log2([2, 3])
    per_user = []
    for row, rel, size in ((top[0], {2}, 2), (top[1], {3, 4}, 2), (np.array([4, 0]), {0}, 1)):
        hits = np.array([p in rel for p in row], float)
        per_user.append((hits @ d) / d[: min(2, size)].sum())
    assert got["users"] == 3 and got["ndcg"] == pytest.approx(np.mean(per_user))


def test_click_holdout_auc_and_log_loss_against_numpy(root):
    path, _ = write_examples(root, n=256)
    model = load_model(train_model("gmf", SPEC, path, root / "m", settings=TrainSettings(epochs=2, batch_size=32),
                                   item_features=write_catalogue(root), model_params={"embedding_dim": 4},
                                   log=lambda _: None).model_file)
    holdout, users, items = write_holdout(root)
    click = ClickHoldout(holdout, write_catalogue(root), SPEC, negative_ratio=3, seed=4)
    again = ClickHoldout(holdout, write_catalogue(root), SPEC, negative_ratio=3, seed=4)
    other = ClickHoldout(holdout, write_catalogue(root), SPEC, negative_ratio=3, seed=5)
    assert np.array_equal(click.negative_items, again.negative_items)
    assert not np.array_equal(click.negative_items, other.negative_items)
    # a negative is never the user's held-out item (catalogue position = index - 2), and at most 3 per positive
    negative_index = click.negative_items + 2
    assert not np.any(negative_index == items[click.negative_rows])
    assert len(click.negative_rows) <= 3 * len(users)
    got = click.evaluate(model)
    # NumPy: score every (user, item) pair, then compare each positive with each negative
    matrix = np.asarray(model.score_matrix(train_feed(users, users), train_feed(np.zeros(6, int), np.arange(2, 8))),
                        np.float64)
    positive = matrix[np.arange(len(users)), items - 2]
    negative = matrix[click.negative_rows, click.negative_items]
    pairs = positive[:, None] - negative[None, :]
    auc = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    sigmoid = lambda s: 1 / (1 + np.exp(-s))
    loss = -(np.log(sigmoid(positive)).sum() + np.log(1 - sigmoid(negative)).sum()) / (positive.size + negative.size)
    assert (got["positives"], got["negatives"]) == (len(users), len(negative))
    assert got["auc"] == pytest.approx(auc, abs=1e-6)
    assert got["log_loss"] == pytest.approx(loss, rel=1e-5)
