"""A backfill of a past ds builds what a run on a source without the later events builds."""

import dataclasses
import datetime as dt

import pandas as pd

from jobs import features, ingest, sources, split, synthetic

DS = dt.date(2024, 3, 20)
NOW = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
SPEC = synthetic.SyntheticSpec(n_users=40, n_items=30, ratings_per_user=8, days=30, end_date=dt.date(2024, 3, 31), seed=3)


def _night(spark, source):
    result = ingest.ingest_source(source, DS, now=NOW)
    train, _ = split.temporal_split(result.interactions, DS, holdout_days=3)
    fitter = features.FeatureFitter(source.user_features, source.item_features)
    out = fitter.fit_transform(train, result.users, result.items, as_of=split.window_end(DS, 3, includes_holdout=False))
    examples = features.training_examples(train, result.users, result.items, out.state)
    frames = [out.user_features, out.item_features, examples]
    return out.state, [_comparable(f.toPandas(), list(f.columns[:2])) for f in frames]


def _comparable(df, key):
    """Sorted by ``key``, with index lists as tuples."""
    for column in df.columns:
        if df[column].dtype == object and len(df) and hasattr(df[column].iloc[0], "__len__"):
            df[column] = df[column].map(tuple)
    return df.sort_values(key).reset_index(drop=True)


def test_backfill_equals_a_source_that_never_had_the_later_events(spark):
    full = sources.load_synthetic(spark, SPEC)
    end = ingest.end_of_day(DS)
    assert full.interactions.filter(full.interactions.ts >= end).count() > 0  # there are later events
    truncated = dataclasses.replace(full, interactions=full.interactions.filter(full.interactions.ts < end))
    state_full, tables_full = _night(spark, full)
    state_cut, tables_cut = _night(spark, truncated)
    assert state_full.to_json() == state_cut.to_json()
    for got, expected in zip(tables_full, tables_cut):
        pd.testing.assert_frame_equal(got, expected)
