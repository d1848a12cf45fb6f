import datetime as dt
import json

import pytest

from jobs import ingest

DS = dt.date(2024, 1, 10)


def _ts(day, hour=12):
    return dt.datetime(2024, 1, day, hour, tzinfo=dt.timezone.utc)


def test_quarantine_reasons_and_window(spark):
    rows = [
        (1, 10, 4.0, _ts(1)),          # kept
        (1, 11, 5.0, _ts(10, 23)),     # kept: last hour of ds
        (2, 10, 3.0, _ts(11, 0)),      # after ds: outside the run, not quarantined
        (None, 10, 3.0, _ts(2)),       # null user
        (3, None, 3.0, _ts(2)),        # null item
        (3, 12, 6.0, _ts(2)),          # rating out of range
        (3, 13, 0.0, _ts(2)),          # rating out of range
        (3, 14, 4.0, None),            # no timestamp
        (4, 10, 2.0, _ts(3)),          # kept once ...
        (4, 10, 2.0, _ts(3)),          # ... exact duplicate quarantined
        (4, 11, None, _ts(3)),         # implicit event (no rating): kept
    ]
    df = spark.createDataFrame(rows, "user_id bigint, item_id bigint, rating double, ts timestamp")
    result = ingest.ingest_interactions(df, DS)
    kept = sorted((r.user_id, r.item_id) for r in result.interactions.collect())
    assert kept == [(1, 10), (1, 11), (4, 10), (4, 11)]
    reasons = sorted(r.reason for r in result.quarantine.collect())
    assert reasons == sorted(
        [ingest.REASON_NULL_ID] * 2 + [ingest.REASON_RATING_RANGE] * 2
        + [ingest.REASON_BAD_TIMESTAMP, ingest.REASON_DUPLICATE]
    )
    raw = [json.loads(r.raw) for r in result.quarantine.collect() if r.reason == ingest.REASON_RATING_RANGE]
    assert sorted(r["rating"] for r in raw) == [0.0, 6.0]
    assert {r.table for r in result.quarantine.collect()} == {"interactions"}


def test_empty_string_ids_are_quarantined(spark):
    df = spark.createDataFrame(
        [("a", "x", 3.0, _ts(1)), (" ", "x", 3.0, _ts(1)), ("b", "", 3.0, _ts(1))],
        "user_id string, item_id string, rating double, ts timestamp",
    )
    result = ingest.ingest_interactions(df, DS)
    assert [r.user_id for r in result.interactions.collect()] == ["a"]
    assert result.quarantine.count() == 2


def test_missing_column_names_table_column_and_fix(spark):
    df = spark.createDataFrame([(1, 2, 3.0)], "user_id bigint, item_id bigint, rating double")
    with pytest.raises(ingest.SchemaError, match=r"ratings.csv: missing column 'ts'.*Found columns: user_id, item_id, rating"):
        ingest.ingest_interactions(df, DS, table="ratings.csv")


def test_wrong_type_names_expected_and_found(spark):
    df = spark.createDataFrame([(1, 2, "high", _ts(1))], "user_id bigint, item_id bigint, rating string, ts timestamp")
    with pytest.raises(ingest.SchemaError, match=r"column 'rating' has type string, expected"):
        ingest.ingest_interactions(df, DS)
