"""The NumPy statistics kernels on hand-worked cases, and the imputer against scikit-learn."""

import numpy as np
import pytest
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer

from jobs.features import stats as fs

DAY = fs.DAY_US
GRID = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


def test_prefix_statistics_exclude_the_event_and_its_instant():
    # entity 0: ratings 4 @ day 0, 2 @ day 1, 5 @ day 1 (same instant), 3 @ day 3; entity 1: one event
    codes = np.array([0, 0, 0, 0, 1])
    ts = np.array([0, DAY, DAY, 3 * DAY, 0])
    rating = np.array([4.0, 2.0, 5.0, 3.0, 1.0])
    layout = fs.StatLayout("user", (0.5,), tuple(GRID))
    suff = fs.prefix_sufficient(codes, ts, rating, GRID, np.zeros(5, dtype=np.int64), 0)
    stats = fs.statistics(suff, ts.astype(float), layout)
    assert list(stats["user_rating_count"]) == [0, 1, 1, 3, 0]
    np.testing.assert_allclose(stats["user_rating_mean"], [np.nan, 4.0, 4.0, 11 / 3, np.nan])
    np.testing.assert_allclose(stats["user_rating_std"][3], np.std([4.0, 2.0, 5.0]))
    np.testing.assert_allclose(stats["user_rating_p50"], [np.nan, 4.0, 4.0, 4.0, np.nan])
    np.testing.assert_allclose(stats["user_days_since_first"], [np.nan, 1.0, 1.0, 3.0, np.nan])
    np.testing.assert_allclose(stats["user_days_since_last"], [np.nan, 1.0, 1.0, 2.0, np.nan])


def test_leave_one_out_statistics_drop_only_the_event_itself():
    # the same events: entity 0 rates 4 @ day 0, 2 @ day 1, 5 @ day 1, 3 @ day 3; entity 1 has one event
    codes = np.array([0, 0, 0, 0, 1])
    ts = np.array([0, DAY, DAY, 3 * DAY, 0])
    rating = np.array([4.0, 2.0, 5.0, 3.0, 1.0])
    layout = fs.StatLayout("user", (0.5,), tuple(GRID))
    suff = fs.leave_one_out_sufficient(codes, ts, rating, GRID, np.zeros(5, dtype=np.int64), 0)
    stats = fs.statistics(suff, 4.0 * DAY, layout)
    assert list(stats["user_rating_count"]) == [3, 3, 3, 3, 0]
    np.testing.assert_allclose(stats["user_rating_mean"], [10 / 3, 4.0, 3.0, 11 / 3, np.nan])
    np.testing.assert_allclose(stats["user_rating_std"][0], np.std([2.0, 5.0, 3.0]))
    # others' sorted ratings: [2,3,5] [3,4,5] [2,3,4] [2,4,5] -> medians (p50: 2nd of 3)
    np.testing.assert_allclose(stats["user_rating_p50"], [3.0, 4.0, 3.0, 4.0, np.nan])
    # first/last of the others, counted to day 4
    np.testing.assert_allclose(stats["user_days_since_first"], [3.0, 4.0, 4.0, 4.0, np.nan])
    np.testing.assert_allclose(stats["user_days_since_last"], [1.0, 1.0, 1.0, 3.0, np.nan])


def test_totals_and_genre_affinity():
    # items: bit 0 = Action, bit 1 = Drama; the user rates Action 4, Action+Drama 2, Drama (no rating)
    codes = np.array([3, 3, 3])
    ts = np.array([0, DAY, 2 * DAY])
    rating = np.array([4.0, 2.0, np.nan])
    mask = np.array([0b01, 0b11, 0b10])
    layout = fs.StatLayout("user", (0.1, 0.9), tuple(GRID), ("action", "drama"))
    starts, suff = fs.total_sufficient(codes, ts, rating, GRID, mask, 2)
    stats = fs.statistics(suff, 4.0 * DAY, layout)
    assert list(starts) == [0]
    assert stats["user_rating_count"][0] == 3
    assert stats["user_rating_mean"][0] == 3.0
    assert (stats["user_rating_p10"][0], stats["user_rating_p90"][0]) == (2.0, 4.0)
    assert (stats["user_days_since_first"][0], stats["user_days_since_last"][0]) == (4.0, 2.0)
    assert stats["user_genre_share_action"][0] == pytest.approx(2 / 3)
    assert stats["user_genre_share_drama"][0] == pytest.approx(2 / 3)
    assert stats["user_genre_mean_action"][0] == 3.0   # (4 + 2) / 2
    assert stats["user_genre_mean_drama"][0] == 2.0    # the unrated Drama event has no rating


def test_partial_totals_combine_to_the_hand_worked_totals():
    # the events of test_totals_and_genre_affinity split into two blocks, plus entity 5 in the second only
    mask_of = {0: 0b01, 1: 0b11, 2: 0b10}
    blocks = [
        (np.array([3]), np.array([DAY]), np.array([2.0]), np.array([mask_of[1]])),
        (np.array([3, 3, 5]), np.array([2 * DAY, 0, DAY]), np.array([np.nan, 4.0, 5.0]),
         np.array([mask_of[2], mask_of[0], mask_of[0]])),
    ]
    record = fs.sufficient_record(len(GRID), 2)
    codes, parts = [], []
    for c, t, r, m in blocks:
        order = np.argsort(c, kind="stable")
        starts, suff = fs.total_sufficient(c[order], t[order], r[order], GRID, m[order], 2)
        codes.append(c[order][starts])
        parts.append(fs.pack_sufficient(suff, record))
    codes, parts = np.concatenate(codes), np.concatenate(parts)
    order = np.argsort(codes, kind="stable")
    starts, suff = fs.combine_sufficient(codes[order], parts[order])
    layout = fs.StatLayout("user", (0.1, 0.9), tuple(GRID), ("action", "drama"))
    stats = fs.statistics(suff, 4.0 * DAY, layout)
    assert len(starts) == 2  # entities 3 and 5
    assert list(stats["user_rating_count"]) == [3, 1]
    assert list(stats["user_rating_mean"]) == [3.0, 5.0]
    assert (stats["user_rating_p10"][0], stats["user_rating_p90"][0]) == (2.0, 4.0)
    assert list(stats["user_days_since_first"]) == [4.0, 3.0]
    assert list(stats["user_days_since_last"]) == [2.0, 3.0]
    assert stats["user_genre_share_action"][0] == pytest.approx(2 / 3)
    assert stats["user_genre_share_drama"][0] == pytest.approx(2 / 3)
    assert (stats["user_genre_mean_action"][0], stats["user_genre_mean_drama"][0]) == (3.0, 2.0)
    assert stats["user_genre_share_drama"][1] == 0.0 and np.isnan(stats["user_genre_mean_drama"][1])


def test_ratings_snap_down_to_the_grid():
    assert list(fs.rating_bins(np.array([0.5, 1.0, 2.7, 5.0, 9.0, np.nan]), GRID)) == [0, 0, 1, 4, 4, -1]


def test_chunks_never_split_an_entity():
    codes = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    assert fs.chunks(codes, 4) == [(0, 5), (5, 6), (6, 10)]
    assert fs.chunks(codes[:0], 4) == []


def test_names():
    assert fs.quantile_name(0.1) == "p10" and fs.quantile_name(0.975) == "p97_5"
    assert fs.affinity_slugs(["Sci-Fi", "Children's", "sci fi"]) == ["sci_fi", "children_s", "sci_fi_2"]


def test_iterative_transform_equals_scikit_learn():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 1))
    x = np.hstack([base, 2 * base + rng.normal(0, 0.1, (200, 1)), rng.normal(size=(200, 1)), np.full((200, 1), np.nan)])
    x[rng.random(x.shape) < 0.2] = np.nan
    imputer = IterativeImputer(max_iter=30, random_state=0, keep_empty_features=True).fit(x)
    params = fs.iterative_params(imputer)
    new = x[:50].copy()
    new[rng.random(new.shape) < 0.3] = np.nan
    np.testing.assert_allclose(fs.iterative_transform(new, params), imputer.transform(new), rtol=1e-10, atol=1e-10)


def test_moments_combine_to_the_whole():
    rng = np.random.default_rng(3)
    x = rng.normal(5, 2, size=101)
    x[::7] = np.nan
    parts = [fs.moments(chunk) for chunk in np.array_split(x, 4)] + [fs.moments(x[:0])]
    total = (0.0, 0.0, 0.0)
    for part in parts:
        total = fs.combine_moments(total, part)
    clean = x[~np.isnan(x)]
    assert total[0] == len(clean)
    assert total[1] == pytest.approx(clean.mean(), rel=1e-12)
    assert np.sqrt(total[2] / total[0]) == pytest.approx(clean.std(), rel=1e-12)
