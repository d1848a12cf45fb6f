import datetime as dt
import math

import pytest

from jobs import features

TS = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture()
def tables(spark):
    train = spark.createDataFrame(
        [(1, 10, 4.0, TS), (1, 11, 2.0, TS), (2, 10, 5.0, TS)],
        "user_id bigint, item_id bigint, rating double, ts timestamp",
    )
    users = spark.createDataFrame(
        [
            (1, 20, "M", "eng", "12345"),
            (2, 40, "F", "doc", "98765"),
            (3, 30, None, "eng", None),      # no history, null gender and zip
            (4, 50, "X", "pilot", "55555"),  # categories never seen in training
        ],
        "user_id bigint, age int, gender string, occupation string, zip string",
    )
    items = spark.createDataFrame(
        [(10, "Action|Comedy", 1990), (11, "Drama", 2000), (12, None, 2010)],
        "item_id bigint, genres string, year int",
    )
    return train, users, items


def _state(tables):
    train, users, items = tables
    return features.fit_feature_state(
        train, users, items,
        user_decls=features.MOVIELENS_USER_FEATURES,
        item_decls=features.MOVIELENS_ITEM_FEATURES,
    )


def test_vocabularies_and_scalers_are_fitted_on_training_entities_only(tables):
    state = _state(tables)
    assert state.user_vocab == [1, 2] and state.item_vocab == [10, 11]
    assert state.vocabs["user_gender"] == ["F", "M"]          # "X" (user 4) is not in training
    assert state.vocabs["user_occupation"] == ["doc", "eng"]
    assert state.vocabs["user_zip"] == ["1", "9"]             # first character of the zip
    assert state.vocabs["item_genres"] == ["Action", "Comedy", "Drama"]
    assert state.max_multi_len["item_genres"] == 2
    # log1p(count): users 1 and 2 have 2 and 1 ratings.
    counts = [math.log1p(2), math.log1p(1)]
    mean = sum(counts) / 2
    assert state.scalers["user_rating_count"]["mean"] == pytest.approx(mean)
    assert state.scalers["user_rating_count"]["std"] == pytest.approx(abs(counts[0] - mean))
    assert state.scalers["user_rating_mean"] == pytest.approx({"mean": 4.0, "std": 1.0})  # means 3 and 5
    assert state.scalers["user_age"] == pytest.approx({"mean": 30.0, "std": 10.0})
    assert state.scalers["item_rating_mean"] == pytest.approx({"mean": 3.25, "std": 1.25})  # 4.5 and 2
    assert state.scalers["item_year"] == pytest.approx({"mean": 1995.0, "std": 5.0})
    assert state.global_mean == pytest.approx(11 / 3)


def test_user_features_encode_reserved_indices_and_impute(tables):
    train, users, _ = tables
    state = _state(tables)
    rows = {r.user_id: r for r in features.build_side_features(train, users, state, "user").collect()}
    assert set(rows) == {1, 2, 3, 4}
    u1, u3, u4 = rows[1], rows[3], rows[4]
    assert (u1.user_idx, u1.user_gender, u1.user_occupation, u1.user_zip) == (2, 3, 3, 2)
    assert u1.user_rating_count == pytest.approx(1.0, rel=1e-5)
    assert u1.user_rating_mean == pytest.approx(-1.0)
    assert u1.user_age == pytest.approx(-1.0)
    # No history: unseen id, count 0, mean imputed with the global mean.
    assert u3.user_idx == features.UNSEEN_INDEX
    mean = (math.log1p(2) + math.log1p(1)) / 2
    std = abs(math.log1p(2) - mean)
    assert u3.user_rating_count == pytest.approx((0 - mean) / std, rel=1e-5)
    assert u3.user_rating_mean == pytest.approx((11 / 3 - 4.0) / 1.0, rel=1e-5)
    assert (u3.user_gender, u3.user_zip) == (features.NULL_INDEX, features.NULL_INDEX)
    # Categories never seen in training map to the unseen index.
    assert (u4.user_gender, u4.user_occupation, u4.user_zip) == (features.UNSEEN_INDEX,) * 3


def test_item_features_multi_valued_genres(tables):
    train, _, items = tables
    state = _state(tables)
    rows = {r.item_id: r for r in features.build_side_features(train, items, state, "item").collect()}
    assert rows[10].item_genres == [2, 3]
    assert rows[11].item_genres == [4]
    assert rows[12].item_genres == [features.NULL_INDEX]
    assert rows[12].item_idx == features.UNSEEN_INDEX
    assert rows[12].item_year == pytest.approx(3.0)


def test_min_count_sends_rare_categories_to_unseen(spark):
    df = spark.createDataFrame([("a",), ("a",), ("b",), (None,)], "c string")
    decl = features.FeatureDecl("c", "categorical")
    vocab = features.fit_vocabulary(df, decl, min_count=2)
    assert vocab == ["a"]
    encoded = [r.c_idx for r in features.encode_categorical(df, decl, vocab, "c_idx").collect()]
    assert encoded == [2, 2, features.UNSEEN_INDEX, features.NULL_INDEX]


def test_large_vocabulary_uses_a_join_with_the_same_result(spark):
    values = list(range(7000))
    df = spark.createDataFrame([(v,) for v in (5, 6999, 8000, None)], "c bigint")
    decl = features.FeatureDecl("c", "categorical")
    encoded = [r.c_idx for r in features.encode_categorical(df, decl, values, "c_idx").orderBy("c").collect()]
    # orderBy puts NULL first: null, 5, 6999, 8000 (unseen)
    assert encoded == [features.NULL_INDEX, 5 + 2, 6999 + 2, features.UNSEEN_INDEX]


def test_training_examples_join_both_sides(tables):
    train, users, items = tables
    state = _state(tables)
    uf = features.build_side_features(train, users, state, "user")
    itf = features.build_side_features(train, items, state, "item")
    examples = features.training_examples(train, uf, itf)
    assert examples.count() == 3
    assert {"user_idx", "item_idx", "user_gender", "item_genres", "rating"} <= set(examples.columns)


def test_state_round_trips_through_json(tables):
    state = _state(tables)
    again = features.FeatureState.from_json(state.to_json())
    assert again == state
    spec = again.model_spec()
    assert spec["user"]["id"] == {"name": "user_idx", "vocab_size": 4}
    assert spec["item"]["multi_categorical"] == [{"name": "item_genres", "vocab_size": 5, "max_len": 2}]
