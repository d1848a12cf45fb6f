"""Feature statistics against a plain Python/pandas reference written independently here."""

import dataclasses
import datetime as dt
import math
import re
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from jobs import features, schema
from jobs.features import passes

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
AS_OF = dt.datetime(2024, 1, 12, tzinfo=dt.timezone.utc)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
GENRES = {10: "Action|Comedy", 11: "Drama", 12: "Comedy", 13: None, 14: "Drama|Action"}
YEARS = {10: 1990, 11: 2000, 12: 2010, 13: None, 14: 1980}
EVENTS_SCHEMA = "user_id bigint, item_id bigint, rating double, ts timestamp"


def _events():
    """60 seeded events: users 1..6, items 10..13, 10% without rating, many same-instant ties."""
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(60):
        user = int(rng.integers(1, 7))
        item = int(rng.integers(10, 14))
        rating = None if rng.random() < 0.1 else float(rng.integers(1, 6))
        ts = T0 + dt.timedelta(days=int(rng.integers(0, 10)), hours=12 * int(rng.integers(0, 2)))
        rows.append((user, item, rating, ts))
    rows.append((99, 12, 5.0, T0 + dt.timedelta(days=3)))  # a user with one training rating
    return rows


def _users(spark):
    rows = [(u, 20 + 5 * u, "M" if u % 2 else "F", "eng" if u < 4 else "doc") for u in range(1, 7)]
    rows += [(99, None, "F", "eng"), (7, 30, "X", "pilot"), (8, 40, None, None)]  # 7, 8: no events
    return spark.createDataFrame(rows, "user_id bigint, age int, gender string, occupation string")


def _items(spark):
    return spark.createDataFrame(
        [(i, GENRES[i], YEARS[i]) for i in GENRES], "item_id bigint, genres string, year int"
    )


USER_DECLS = (
    features.FeatureDecl("age", "continuous"),
    features.FeatureDecl("gender", "categorical"),
    features.FeatureDecl("occupation", "categorical"),
)
ITEM_DECLS = (features.FeatureDecl("year", "continuous"), features.FeatureDecl("genres", "multi_categorical"))


@pytest.fixture(scope="module")
def fitted(spark):
    train = spark.createDataFrame(_events(), EVENTS_SCHEMA)
    users, items = _users(spark), _items(spark)
    fitter = features.FeatureFitter(USER_DECLS, ITEM_DECLS, features.FeatureSettings(quantiles=QUANTILES))
    out = fitter.fit_transform(train, users, items, as_of=AS_OF)
    assert out.state.example_statistics == "leave_one_out"  # the default
    point_in_time = dataclasses.replace(out.state, example_statistics="point_in_time")
    return {
        "state": out.state,
        "users": out.user_features.toPandas().set_index("user_id"),
        "items": out.item_features.toPandas().set_index("item_id"),
        "examples": features.training_examples(train, users, items, point_in_time).toPandas(),
        "examples_loo": features.training_examples(train, users, items, out.state).toPandas(),
        "point_in_time_state": point_in_time,
        "tables": (train, users, items),
        "fitted_tables": out,
    }


# -- the reference ------------------------------------------------------------------------------------
def ref_quantile(values, q):
    """Smallest value whose share of values <= it reaches q (inverse empirical CDF), exactly."""
    ordered = sorted(values)
    need = Fraction(str(q)) * len(ordered)
    return next(v for i, v in enumerate(ordered, start=1) if i >= need)


def ref_stats(events, ref_time, side, affinity=()):
    """Raw statistics of ``events`` [(item, rating, ts)] as seen at ``ref_time``."""
    rated = [r for _, r, _ in events if r is not None]
    out = {f"{side}_rating_count": float(len(events))}
    out[f"{side}_rating_mean"] = float(np.mean(rated)) if rated else math.nan
    out[f"{side}_rating_std"] = float(np.std(rated)) if rated else math.nan
    for q in QUANTILES:
        out[f"{side}_rating_p{round(q * 100)}"] = ref_quantile(rated, q) if rated else math.nan
    times = [t for _, _, t in events]
    out[f"{side}_days_since_first"] = (ref_time - min(times)) / dt.timedelta(days=1) if times else math.nan
    out[f"{side}_days_since_last"] = (ref_time - max(times)) / dt.timedelta(days=1) if times else math.nan
    for genre in affinity:
        has = [(i, r) for i, r, _ in events if GENRES[i] and genre in GENRES[i].split("|")]
        g_rated = [r for _, r in has if r is not None]
        out[f"{side}_genre_share_{genre.lower()}"] = len(has) / len(events) if events else math.nan
        out[f"{side}_genre_mean_{genre.lower()}"] = float(np.mean(g_rated)) if g_rated else math.nan
    return out


def ref_entity_stats(side, affinity=()):
    """{entity: raw statistics at AS_OF} over the training events (pandas groupby)."""
    df = pd.DataFrame(_events(), columns=["user_id", "item_id", "rating", "ts"])
    key, other = ("user_id", "item_id") if side == "user" else ("item_id", "user_id")
    out = {}
    for entity, group in df.groupby(key):
        events = [(i, None if pd.isna(r) else r, t) for i, r, t in zip(group.item_id, group.rating, group.ts)]
        out[entity] = ref_stats(events, AS_OF, side, affinity)
    return pd.DataFrame.from_dict(out, orient="index")


def ref_scalers(raw):
    """Mean/std over training entities (log1p for counts), population std, NaN ignored."""
    scalers = {}
    for name in raw.columns:
        x = np.log1p(raw[name]) if name.endswith("_rating_count") else raw[name]
        x = x.dropna().astype(float)
        std = float(x.std(ddof=0)) if len(x) else 0.0
        scalers[name] = (float(x.mean()) if len(x) else 0.0, std if std > 1e-12 else 1.0)
    return scalers


def ref_scale(name, value, scalers):
    mean, std = scalers[name]
    x = math.log1p(value) if name.endswith("_rating_count") and not math.isnan(value) else value
    return ((mean if math.isnan(x) else x) - mean) / std  # mean imputation


AFFINITY = ("Action", "Comedy", "Drama")


# -- statistics at scoring time ------------------------------------------------------------------------------
def test_state_vocabularies_grid_and_affinity(fitted):
    state = fitted["state"]
    assert state.user_vocab == [1, 2, 3, 4, 5, 6, 99]
    assert state.item_vocab == [10, 11, 12, 13]  # item 14 has no training event
    assert state.vocabs["user_gender"] == ["F", "M"]          # "X" belongs to a user without events
    assert state.vocabs["item_genres"] == ["Action", "Comedy", "Drama"]
    assert state.rating_grid == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert state.affinity == ["Action", "Comedy", "Drama"]
    rated = [r for _, _, r, _ in _events() if r is not None]
    assert state.global_mean == pytest.approx(np.mean(rated))


def test_scalers_match_pandas(fitted):
    state = fitted["state"]
    raw = ref_entity_stats("user", AFFINITY)
    ages = {u: 20 + 5 * u for u in range(1, 7)}
    raw["user_age"] = [ages.get(u, math.nan) for u in raw.index]
    for name, (mean, std) in ref_scalers(raw).items():
        assert state.scalers[name]["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-9), name
        assert state.scalers[name]["std"] == pytest.approx(std, rel=1e-9, abs=1e-9), name
        assert state.scalers[name]["impute"] == pytest.approx(mean, rel=1e-9, abs=1e-9), name


@pytest.mark.parametrize("side", ["user", "item"])
def test_every_statistic_matches_pandas(fitted, side):
    affinity = AFFINITY if side == "user" else ()
    raw = ref_entity_stats(side, affinity)
    if side == "item":
        raw["item_year"] = [YEARS[i] if YEARS[i] is not None else math.nan for i in raw.index]
    else:
        raw["user_age"] = [20 + 5 * u if u < 99 else math.nan for u in raw.index]
    scalers = ref_scalers(raw)
    table = fitted["users" if side == "user" else "items"]
    assert sorted(fitted["state"].continuous[side]) == sorted(raw.columns)
    for entity, row in raw.iterrows():
        for name, value in row.items():
            assert table.loc[entity, name] == pytest.approx(ref_scale(name, value, scalers), rel=1e-4, abs=1e-5), (
                entity, name)


@pytest.mark.parametrize("pre_aggregate", [True, False])
@pytest.mark.parametrize("side", ["user", "item"])
def test_raw_totals_match_pandas_with_and_without_map_side_partial_sums(spark, fitted, side, pre_aggregate):
    train, users, items = fitted["tables"]
    state = fitted["state"]
    many = train.repartition(5)  # several partial sums per entity
    item_static = features.side_static(items.select("item_id").distinct(), items, state, "item")
    user_static = features.side_static(users.select("user_id").distinct(), users, state, "user")
    statics = passes.static_arrow(user_static, item_static)
    bc, side_pass = passes.side_passes(spark, state, statics, fitted=False)[side]
    static = user_static if side == "user" else item_static
    got = passes.entity_totals(many, bc, side_pass, static, 3, len(_events()), pre_aggregate=pre_aggregate).toPandas()
    expected = ref_entity_stats(side, AFFINITY if side == "user" else ())
    got = got.set_index(f"{side}_id").sort_index()
    assert list(got.index) == list(expected.index)
    for name in expected.columns:
        np.testing.assert_allclose(got[name].to_numpy(float), expected[name].to_numpy(float), rtol=1e-9, atol=1e-9,
                                   err_msg=name)


def test_entities_without_history_get_imputed_statistics_and_reserved_indices(fitted):
    users = fitted["users"]
    state = fitted["state"]
    count = state.scalers["user_rating_count"]
    for user in (7, 8):  # in the users table, no events
        assert users.loc[user, "user_idx"] == schema.UNSEEN_INDEX
        assert users.loc[user, "user_rating_count"] == pytest.approx((0.0 - count["mean"]) / count["std"], rel=1e-5)
        assert users.loc[user, "user_rating_mean"] == pytest.approx(0.0, abs=1e-6)  # mean-imputed -> 0
    assert users.loc[7, "user_gender"] == schema.UNSEEN_INDEX   # "X" never seen in training
    assert users.loc[7, "user_occupation"] == schema.UNSEEN_INDEX
    assert users.loc[8, "user_gender"] == schema.NULL_INDEX     # null
    assert users.loc[8, "user_occupation"] == schema.NULL_INDEX
    items = fitted["items"]
    assert items.loc[14, "item_idx"] == schema.UNSEEN_INDEX
    assert list(items.loc[14, "item_genres"]) == [4, 2]           # Drama, Action
    assert list(items.loc[13, "item_genres"]) == [schema.NULL_INDEX]


def test_new_state_applies_to_later_events_and_new_categories(spark, fitted):
    """Scoring with a saved state: unseen users and categories get the reserved indices."""
    state = features.FeatureState.from_json(fitted["state"].to_json())
    train, _, items = fitted["tables"]
    later_users = spark.createDataFrame(
        [(1, 25, "M", "eng"), (50, 33, "Q", None)], "user_id bigint, age int, gender string, occupation string"
    )
    rows = {r.user_id: r for r in features.build_side_features(train, later_users, state, "user", items=items).collect()}
    assert rows[50].user_idx == schema.UNSEEN_INDEX
    assert (rows[50].user_gender, rows[50].user_occupation) == (schema.UNSEEN_INDEX, schema.NULL_INDEX)
    assert rows[1].user_rating_mean == pytest.approx(fitted["users"].loc[1, "user_rating_mean"])


# -- leakage-safe examples ------------------------------------------------------------------------------------
def _others(events, key, ex, ts, mode):
    """The entity's events an example may read: strictly earlier ones, or all but the example's own row."""
    mine = events[events[key] == getattr(ex, key)]
    if mode == "point_in_time":
        return mine[mine.ts < ts], ts
    own = mine[(mine.user_id == ex.user_id) & (mine.item_id == ex.item_id) & (mine.ts == ts)
               & ((mine.rating == ex.rating) | (mine.rating.isna() & np.isnan(ex.rating)))]
    return mine.drop(index=own.index[:1]), AS_OF


@pytest.mark.parametrize("mode", ["point_in_time", "leave_one_out"])
def test_example_statistics_match_the_reference(fitted, mode):
    """point_in_time: events strictly before the example, counted to it; leave_one_out: all others, to AS_OF."""
    examples = fitted["examples" if mode == "point_in_time" else "examples_loo"]
    assert len(examples) == len(_events())
    events = pd.DataFrame(_events(), columns=["user_id", "item_id", "rating", "ts"])
    raw_users = ref_entity_stats("user", AFFINITY)
    raw_users["user_age"] = [20 + 5 * u if u < 99 else math.nan for u in raw_users.index]
    raw_items = ref_entity_stats("item")
    raw_items["item_year"] = [YEARS[i] if YEARS[i] is not None else math.nan for i in raw_items.index]
    scalers = {**ref_scalers(raw_users), **ref_scalers(raw_items)}
    for ex in examples.itertuples(index=False):
        ts = ex.ts.to_pydatetime().replace(tzinfo=dt.timezone.utc) if ex.ts.tzinfo is None else ex.ts.to_pydatetime()
        for side, key, affinity, static in (
            ("user", "user_id", AFFINITY, {"user_age": 20 + 5 * ex.user_id if ex.user_id < 99 else math.nan}),
            ("item", "item_id", (), {"item_year": YEARS[ex.item_id] if YEARS[ex.item_id] else math.nan}),
        ):
            mine, ref_time = _others(events, key, ex, ts, mode)
            prior = [(i, None if pd.isna(r) else r, t) for i, r, t in zip(mine.item_id, mine.rating, mine.ts)]
            expected = {**ref_stats(prior, ref_time, side, affinity), **static}
            for name, value in expected.items():
                assert getattr(ex, name) == pytest.approx(ref_scale(name, value, scalers), rel=1e-4, abs=1e-5), (
                    ex.user_id, ex.item_id, ts, name)


@pytest.mark.parametrize("examples", ["examples", "examples_loo"])
def test_a_users_only_rating_never_appears_in_its_own_example(fitted, examples):
    state = fitted["state"]
    (example,) = fitted[examples][fitted[examples].user_id == 99].itertuples()
    mean = state.scalers["user_rating_mean"]
    own_rating_scaled = (5.0 - mean["mean"]) / mean["std"]
    assert example.rating == 5.0
    assert example.user_rating_mean == pytest.approx(0.0, abs=1e-6)  # imputed: no other rating
    assert abs(example.user_rating_mean - own_rating_scaled) > 0.1
    count = state.scalers["user_rating_count"]
    assert example.user_rating_count == pytest.approx((0.0 - count["mean"]) / count["std"], rel=1e-5)
    # The scoring-time table does include the rating.
    assert fitted["users"].loc[99, "user_rating_mean"] == pytest.approx(own_rating_scaled, rel=1e-5)


def test_examples_carry_the_static_columns_of_the_feature_tables(fitted):
    examples, users, items = fitted["examples"], fitted["users"], fitted["items"]
    spec = fitted["state"].model_spec()
    for side in ("user", "item"):
        columns = [spec[side]["id"]["name"]] + [c["name"] for c in spec[side]["categorical"]]
        columns += [c["name"] for c in spec[side]["multi_categorical"]] + spec[side]["continuous"]
        assert set(columns) <= set(examples.columns)
    for ex in examples.itertuples(index=False):
        assert ex.user_idx == users.loc[ex.user_id, "user_idx"]
        assert ex.user_gender == users.loc[ex.user_id, "user_gender"]
        assert list(ex.item_genres) == list(items.loc[ex.item_id, "item_genres"])
        assert ex.item_year == pytest.approx(items.loc[ex.item_id, "item_year"])


def test_fast_parquet_writer_writes_the_same_examples(spark, fitted, tmp_path):
    train, users, items = fitted["tables"]
    path = tmp_path / "examples"
    rows = features.write_training_examples(train, users, items, fitted["point_in_time_state"], str(path))
    written = pd.read_parquet(path)
    assert rows == len(written) == len(fitted["examples"])
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith("part-")) == []
    written["ts"] = written.ts.dt.tz_convert(None).astype("datetime64[ns]")
    key = ["user_id", "item_id", "ts", "rating"]
    expected = fitted["examples"].sort_values(key).reset_index(drop=True)
    got = written[expected.columns].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got.drop(columns=["item_genres"]), expected.drop(columns=["item_genres"]))
    assert [list(g) for g in got.item_genres] == [list(g) for g in expected.item_genres]


@pytest.mark.parametrize("given", ["file_uri", "relative_path"])
def test_examples_are_written_through_the_storage_layer(spark, fitted, tmp_path, monkeypatch, given):
    """The executors write through the Location: a file:// URI and a path relative to the driver's directory."""
    train, users, items = fitted["tables"]
    folder = tmp_path / "warehouse" / "examples"
    folder.mkdir(parents=True)
    (folder / "part-00099.parquet").write_text("an older run's file: replaced, not kept")
    if given == "file_uri":
        path = folder.as_uri()
    else:
        monkeypatch.chdir(tmp_path)
        path = "warehouse/examples"
    rows = features.write_training_examples(train, users, items, fitted["state"], path)
    names = sorted(p.name for p in folder.iterdir())
    assert names and all(re.fullmatch(r"part-\d{5}\.parquet", n) for n in names)
    assert "part-00099.parquet" not in names
    written = pd.read_parquet(folder)
    assert rows == len(written) == len(_events())
    key = ["user_id", "item_id", "ts", "rating"]
    written["ts"] = written.ts.dt.tz_convert(None).astype("datetime64[ns]")
    expected = fitted["examples_loo"].sort_values(key).reset_index(drop=True)
    got = written[expected.columns].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got.drop(columns=["item_genres"]), expected.drop(columns=["item_genres"]))


def test_the_fitted_state_is_frozen(fitted):
    state = fitted["state"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.scalers = {}
    assert isinstance(features.FeatureSettings(quantiles=[0.5, 0.9]).quantiles, tuple)  # a config list, kept fixed


def test_examples_reuse_the_fitted_static_tables(spark, fitted):
    train, users, items = fitted["tables"]
    out = fitted["fitted_tables"]
    assert out.n_events == len(_events())
    assert set(out.statics) == {"user", "item"}
    reused = features.training_examples(train, users, items, fitted["point_in_time_state"], tables=out).toPandas()
    key = ["user_id", "item_id", "ts", "rating"]
    expected = fitted["examples"].sort_values(key).reset_index(drop=True)
    got = reused[expected.columns].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got.drop(columns=["item_genres"]), expected.drop(columns=["item_genres"]))


def test_examples_refuse_tables_of_another_fit(spark, fitted):
    train, users, items = fitted["tables"]
    fewer = train.filter("user_id != 99")
    other = features.FeatureFitter(USER_DECLS, ITEM_DECLS).fit_transform(fewer, users, items, as_of=AS_OF)
    with pytest.raises(ValueError, match="another fit"):
        features.training_examples(fewer, users, items, other.state, tables=fitted["fitted_tables"])


def test_window_end_defaults_to_midnight_after_the_last_event(spark):
    events = _events()
    last = max(ts for *_, ts in events)
    expected = dt.datetime.combine(last.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    train = spark.createDataFrame(events, EVENTS_SCHEMA)
    state = features.FeatureFitter().fit(train, None, None)
    assert dt.datetime.fromisoformat(state.as_of) == expected
    assert state.global_mean == pytest.approx(np.mean([r for _, _, r, _ in events if r is not None]))
    assert state.user_vocab == sorted({u for u, *_ in events})
    assert state.item_vocab == sorted({i for _, i, *_ in events})


def test_feature_tables_are_written_without_float_dictionaries(spark, fitted, tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "user_features"
    frame = fitted["fitted_tables"].user_features
    features.write_feature_table(frame, str(path))
    pd.testing.assert_frame_equal(
        pd.read_parquet(path).set_index("user_id").sort_index()[fitted["users"].columns],
        fitted["users"].sort_index(),
    )
    float_columns = {f.name for f in frame.schema.fields if f.dataType.typeName() in ("float", "double")}
    assert "user_rating_mean" in float_columns

    def dictionary_columns(folder):
        out = set()
        for part in folder.glob("part-*.parquet"):
            meta = pq.ParquetFile(part).metadata
            for g in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    column = meta.row_group(g).column(c)
                    if any("DICTIONARY" in e for e in column.encodings):
                        out.add(column.path_in_schema)
        return out

    assert not dictionary_columns(path) & float_columns
    # Spark's default writer would have used dictionaries for (some of) them
    frame.write.parquet(str(tmp_path / "default"))
    assert dictionary_columns(tmp_path / "default") & float_columns


def test_min_category_count_sends_rare_categories_to_unseen(spark):
    df = spark.createDataFrame([("a",), ("a",), ("b",), (None,)], "c string")
    decl = features.FeatureDecl("c", "categorical")
    vocab = features.fit_vocabulary(df, decl, min_category_count=2)
    assert vocab == ["a"]
    encoded = [r.c_idx for r in features.encode_categorical(df, decl, vocab, "c_idx").collect()]
    assert encoded == [2, 2, schema.UNSEEN_INDEX, schema.NULL_INDEX]


def test_large_vocabulary_uses_a_join_with_the_same_result(spark):
    values = list(range(7000))
    df = spark.createDataFrame([(v,) for v in (5, 6999, 8000, None)], "c bigint")
    decl = features.FeatureDecl("c", "categorical")
    encoded = [r.c_idx for r in features.encode_categorical(df, decl, values, "c_idx").orderBy("c").collect()]
    # orderBy puts NULL first: null, 5, 6999, 8000 (unseen)
    assert encoded == [schema.NULL_INDEX, 5 + 2, 6999 + 2, schema.UNSEEN_INDEX]


def test_integer_categories_keep_their_type(spark):
    df = spark.createDataFrame([(3,), (1,), (3,)], "code int")
    assert features.fit_vocabulary(df, features.FeatureDecl("code", "categorical")) == [1, 3]


# -- settings ---------------------------------------------------------------------------------------------------------
def test_median_imputation_and_coarse_grid(spark):
    # ratings 1..9 over one user: with rating_grid_size 3 they snap down to 3 grid points
    rows = [(1, 10 + k, float(k), T0 + dt.timedelta(hours=k)) for k in range(1, 10)]
    rows += [(2, 10, 2.0, T0), (3, 11, 9.0, T0)]
    train = spark.createDataFrame(rows, EVENTS_SCHEMA)
    users = spark.createDataFrame([(1, 10.0), (2, 20.0), (3, 60.0), (4, None)], "user_id bigint, age double")
    settings = features.FeatureSettings(rating_grid_size=3, impute="median", affinity_column=None)
    out = features.FeatureFitter([features.FeatureDecl("age", "continuous")], [], settings).fit_transform(
        train, users, None, as_of=AS_OF)
    state = out.state
    grid = state.rating_grid
    assert len(grid) == 3 and grid[0] == 1.0 and grid[-1] == 9.0
    assert state.scalers["user_age"]["impute"] == 20.0  # median of 10, 20, 60
    user1 = sorted(float(k) for k in range(1, 10))
    table = out.user_features.toPandas().set_index("user_id")
    for q in QUANTILES:
        exact = ref_quantile(user1, q)
        snapped = max(g for g in grid if g <= exact)  # the grid value at or below the exact quantile
        s = state.scalers[f"user_rating_p{round(q * 100)}"]
        assert table.loc[1, f"user_rating_p{round(q * 100)}"] * s["std"] + s["mean"] == pytest.approx(snapped)
    age = state.scalers["user_age"]
    assert table.loc[4, "user_age"] == pytest.approx((20.0 - age["mean"]) / age["std"], rel=1e-5)


def test_iterative_imputer_fills_from_the_other_columns(spark):
    rng = np.random.default_rng(0)
    rows, user_rows = [], []
    for u in range(1, 41):
        age = 20 + u
        user_rows.append((u, float(age) if u % 5 else None))
        for k in range(u % 4 + 1):  # users with more events are older
            rows.append((u, k, float(1 + (u + k) % 5), T0 + dt.timedelta(days=int(rng.integers(0, 9)))))
    train = spark.createDataFrame(rows, EVENTS_SCHEMA)
    users = spark.createDataFrame(user_rows, "user_id bigint, age double")
    settings = features.FeatureSettings(imputer="iterative", affinity_column=None, iterative_sample_rows=1000)
    out = features.FeatureFitter([features.FeatureDecl("age", "continuous")], [], settings).fit_transform(
        train, users, None, as_of=AS_OF)
    params = out.state.imputer["user"]
    assert params is not None and len(params["initial"]) == len(out.state.continuous["user"])
    table = out.user_features.toPandas().set_index("user_id")
    assert not table.isna().any().any()
    # univariate imputation would give every missing age the same value; these depend on the other columns
    assert table.loc[[5, 10, 15, 20], "user_age"].nunique() > 1


def test_tags_before_the_window_end_most_used_first(spark):
    tags = spark.createDataFrame(
        [(1, 10, "Funny", T0), (2, 10, "funny ", T0), (3, 10, "dark", T0), (1, 10, "b|c", T0),
         (1, 10, "late", AS_OF), (1, 11, "x", T0)],
        "user_id bigint, item_id bigint, tag string, ts timestamp",
    )
    items = spark.createDataFrame([(10,), (11,), (12,)], "item_id bigint")
    rows = {r.item_id: r.tags for r in features.attach_tags(items, tags, as_of=AS_OF, max_tags_per_item=2).collect()}
    # item 10: funny (2 uses), then the alphabetically first of the single uses; 'late' is not before as_of
    assert rows == {10: "funny|b/c", 11: "x", 12: None}
