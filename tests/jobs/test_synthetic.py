import datetime as dt

import numpy as np
import pandas as pd
import pytest

from jobs import synthetic

SMALL = synthetic.SyntheticSpec(n_users=300, n_items=200, ratings_per_user=20, days=30,
                                end_date=dt.date(2024, 3, 31), seed=3)


def test_same_seed_gives_same_data_and_another_seed_differs():
    a = synthetic.synthetic_ratings(synthetic.make_world(SMALL))
    b = synthetic.synthetic_ratings(synthetic.make_world(SMALL))
    pd.testing.assert_frame_equal(a, b)
    other = synthetic.synthetic_ratings(synthetic.make_world(synthetic.SyntheticSpec(**{**SMALL.__dict__, "seed": 4})))
    assert not a.equals(other)


def test_ratings_respect_ranges_window_and_uniqueness():
    world = synthetic.make_world(SMALL)
    ratings = synthetic.synthetic_ratings(world)
    assert set(ratings.rating.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ratings.user_id.between(1, 300).all() and ratings.item_id.between(1, 200).all()
    first = pd.Timestamp("2024-03-02", tz="UTC")  # 30 days ending 2024-03-31
    assert ratings.ts.min() >= first
    assert ratings.ts.max() < pd.Timestamp("2024-04-01", tz="UTC")
    assert not ratings.duplicated(["user_id", "item_id"]).any()
    per_user = ratings.groupby("user_id").size()
    assert per_user.min() >= 5 and len(per_user) == 300


def test_side_tables_have_demographics_and_genres():
    world = synthetic.make_world(SMALL)
    assert list(world.users.columns) == ["user_id", "age", "gender", "occupation", "zip"]
    assert set(world.users.gender) == {"M", "F"}
    assert world.users.zip.str.len().eq(5).all()
    genres = world.items.genres.str.split("|")
    assert genres.map(len).between(1, 3).all()
    assert set(g for gs in genres for g in gs) <= set(synthetic.GENRES)
    years = world.items.title.str.extract(r"\((\d{4})\)$")[0].astype(int)
    assert (years == world.items.year).all()


def test_popularity_is_skewed():
    ratings = synthetic.synthetic_ratings(synthetic.make_world(synthetic.SyntheticSpec(n_users=1000, n_items=500)))
    counts = ratings.groupby("item_id").size().sort_values(ascending=False).to_numpy()
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.25  # the top 10% of items take well over 10% of ratings


def test_spark_generator_matches_in_process_generator(spark):
    world = synthetic.make_world(synthetic.SyntheticSpec(n_users=5000, n_items=300, ratings_per_user=6, days=20))
    local = synthetic.synthetic_ratings(world).sort_values(["user_id", "item_id"]).reset_index(drop=True)
    remote = synthetic.synthetic_ratings_spark(spark, world, num_partitions=2).toPandas()
    remote = remote.sort_values(["user_id", "item_id"]).reset_index(drop=True)
    assert len(local) == len(remote)
    np.testing.assert_array_equal(local.user_id, remote.user_id)
    np.testing.assert_array_equal(local.item_id, remote.item_id)
    np.testing.assert_array_equal(local.rating, remote.rating)
    assert (local.ts.dt.tz_convert("UTC").values == remote.ts.dt.tz_localize("UTC").values).all() or (
        local.ts.values == remote.ts.values
    ).all()


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="n_users"):
        synthetic.SyntheticSpec(n_users=0)
