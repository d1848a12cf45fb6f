"""Holdout metrics: ranking formulas by hand, the holdouts' rows, RMSE against NumPy."""

import numpy as np
import pytest

from models.evaluation import RankingHoldout, RatingHoldout, ranking_metrics
from models.registry import load_model
from models.settings import TrainSettings
from models.train import train_model
from tests.fixtures.models import TRAIN_SPEC as SPEC
from tests.fixtures.models import train_feed, train_rows, write_catalogue, write_examples, write_table


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


def test_ranking_holdout_excludes_training_items(root):
    train = write_table(root / "train", train_rows(np.array([2, 2, 3]), np.array([2, 3, 5])))
    holdout = write_table(root / "holdout", train_rows(np.array([2, 2, 3]), np.array([3, 4, 6])))
    evaluator = RankingHoldout(holdout, train, write_catalogue(root), SPEC, k=2)
    assert evaluator.users.ids.to_pylist() == [2, 3]
    # Catalogue positions: item idx 2..7 -> 0..5. User 2 had item 3 in training: only item 4 is relevant.
    assert [r.tolist() for r in evaluator.relevant] == [[2], [4]]
    assert [s.tolist() for s in evaluator.seen] == [[0, 1], [3]]
