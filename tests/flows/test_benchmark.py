"""``nightrec benchmark``: the protocols' splits against pandas references, and the CLI's table and JSON rows.

The dataset is a small synthetic world written in ml-latest's own format (movies.csv, ratings.csv), so the
product's MovieLens loader reads it; tests/fixtures/ml-latest's four ratings are too few to split per user.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from jobs import synthetic


@pytest.fixture(scope="module")
def ml_latest(tmp_path_factory):
    """A folder in ml-latest's format: 60 users, 50 items, ~15 ratings a user (half-star ratings)."""
    world = synthetic.make_world(synthetic.SyntheticSpec(n_users=60, n_items=50, ratings_per_user=15, seed=3))
    ratings = synthetic.synthetic_ratings(world)
    folder = tmp_path_factory.mktemp("bench") / "ml-latest-tiny"
    folder.mkdir()
    out = pd.DataFrame({"userId": ratings.user_id, "movieId": ratings.item_id,
                        "rating": (ratings.rating * 2).round() / 2,
                        "timestamp": ratings.ts.astype("int64") // 10 ** 9})
    out = out.drop_duplicates(["userId", "movieId"])
    out.to_csv(folder / "ratings.csv", index=False)
    movies = world.items.rename(columns={"item_id": "movieId"})[["movieId", "title", "genres"]]
    movies.to_csv(folder / "movies.csv", index=False)
    return folder, out


def _loaded(spark, folder):
    from jobs import protocols

    ratings, items = protocols.load_dataset(spark, str(folder), "movielens_latest")
    return ratings.toPandas(), ratings, items


def _per_user(frame: pd.DataFrame) -> pd.Series:
    return frame.groupby("user_id").size()


def test_stratified_keeps_a_seeded_75_percent_of_each_user_in_train(spark, ml_latest):
    from jobs import protocols

    frame, ratings, _ = _loaded(spark, ml_latest[0])
    train, test = (d.toPandas() for d in protocols.protocol_split(ratings, "stratified"))
    n = _per_user(frame)
    expected_train = n.map(lambda c: math.ceil(0.75 * c - 1e-9))
    pd.testing.assert_series_equal(_per_user(train), expected_train, check_names=False)
    pd.testing.assert_series_equal(_per_user(test).reindex(n.index, fill_value=0), n - expected_train,
                                   check_names=False)
    assert len(pd.concat([train, test]).drop_duplicates(["user_id", "item_id"])) == len(frame)


def test_temporal_tests_each_users_latest_quarter(spark, ml_latest):
    from jobs import protocols

    frame, ratings, _ = _loaded(spark, ml_latest[0])
    train, test = (d.toPandas() for d in protocols.protocol_split(ratings, "temporal"))
    n = _per_user(frame)
    pd.testing.assert_series_equal(_per_user(train), n.map(lambda c: math.ceil(0.75 * c - 1e-9)),
                                   check_names=False)
    latest_train = train.groupby("user_id").ts.max()
    earliest_test = test.groupby("user_id").ts.min()
    assert (earliest_test >= latest_train.reindex(earliest_test.index)).all()


def test_leave_last_out_tests_each_users_latest_event(spark, ml_latest):
    from jobs import protocols

    frame, ratings, _ = _loaded(spark, ml_latest[0])
    train, test = (d.toPandas() for d in protocols.protocol_split(ratings, "leave-last-out"))
    many = _per_user(frame)[lambda s: s >= 2].index
    assert sorted(test.user_id) == sorted(many)
    latest = frame.groupby("user_id").ts.max()
    assert (test.set_index("user_id").ts == latest.reindex(test.user_id).to_numpy()).all()
    assert len(train) + len(test) == len(frame)


def test_the_cli_prints_one_row_per_model_and_baseline_as_json(spark, ml_latest, capsys):
    from flows import cli

    code = cli.main(["benchmark", "--dataset", str(ml_latest[0]), "--format", "movielens_latest",
                     "--protocol", "stratified", "--only", "item_item", "--als-grid", "defaults",
                     "--max-epochs", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    rows = json.loads(captured.out)
    assert [r["name"] for r in rows] == ["popularity", "als_implicit (defaults)", "als_explicit (defaults)",
                                         "item_item"]
    keys = {"name", "objective", "p@10", "r@10", "ndcg@10", "map@10", "rmse", "mae", "coverage", "train_s", "note"}
    assert all(set(r) == keys for r in rows)
    for r in rows:
        if r["objective"] == "implicit":
            assert all(0.0 <= r[m] <= 1.0 for m in ("p@10", "r@10", "ndcg@10", "map@10", "coverage")), r
            assert r["rmse"] is None
    assert rows[2]["rmse"] > 0 and rows[2]["ndcg@10"] is None
    assert rows[0]["train_s"] is None and rows[3]["train_s"] > 0
    assert "ndcg@10" in captured.err  # the table's header, printed as the rows come


def test_unknown_models_and_missing_datasets_are_usage_errors(tmp_path, capsys):
    from flows import cli

    assert cli.main(["benchmark", "--dataset", str(tmp_path / "nope"), "--format", "movielens_100k",
                     "--protocol", "temporal"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert cli.main(["benchmark", "--dataset", str(tmp_path), "--format", "movielens_100k",
                     "--only", "no_such_model"]) == 2
    assert "--only no_such_model: no such model" in capsys.readouterr().err
