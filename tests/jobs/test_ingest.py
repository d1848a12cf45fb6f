import datetime as dt
import json

import pytest

from jobs import ingest, schema, sources

DS = dt.date(2024, 1, 10)
NOW = dt.datetime(2024, 1, 20, tzinfo=dt.timezone.utc)


def _ts(day, hour=12):
    return dt.datetime(2024, 1, day, hour, tzinfo=dt.timezone.utc)


def test_quarantine_reasons_and_window(spark):
    rows = [
        (1, 10, 4.0, _ts(1)),          # kept
        (1, 11, 5.0, _ts(10, 23)),     # kept: last hour of ds
        (2, 10, 3.0, _ts(11, 0)),      # after ds, before now: outside the run, not quarantined
        (2, 12, 3.0, _ts(21, 0)),      # after the wall clock: quarantined in every run
        (None, 10, 3.0, _ts(2)),       # null user
        (3, None, 3.0, _ts(2)),        # null item
        (3, 12, 6.0, _ts(2)),          # rating out of range
        (3, 13, 0.0, _ts(2)),          # rating out of range
        (3, 14, 4.0, None),            # no timestamp
        (4, 10, 2.0, _ts(3)),          # kept once ...
        (4, 10, 2.0, _ts(3)),          # ... exact duplicate quarantined
        (4, 11, None, _ts(3)),         # implicit event (no rating): kept
        (5, 11, 9.0, _ts(15)),         # out of range but after ds: a later run's problem
    ]
    df = spark.createDataFrame(rows, "user_id bigint, item_id bigint, rating double, ts timestamp")
    result = ingest.ingest_interactions(df, DS, now=NOW)
    kept = sorted((r.user_id, r.item_id) for r in result.interactions.collect())
    assert kept == [(1, 10), (1, 11), (4, 10), (4, 11)]
    reasons = sorted(r.reason for r in result.quarantine.collect())
    assert reasons == sorted(
        [schema.REASON_NULL_ID] * 2 + [schema.REASON_RATING_RANGE] * 2
        + [schema.REASON_BAD_TIMESTAMP, schema.REASON_DUPLICATE, schema.REASON_FUTURE]
    )
    raw = [json.loads(r.raw) for r in result.quarantine.collect() if r.reason == schema.REASON_RATING_RANGE]
    assert sorted(r["rating"] for r in raw) == [0.0, 6.0]
    assert {r.table for r in result.quarantine.collect()} == {"interactions"}


def test_without_a_clock_or_range_nothing_is_checked_against_them(spark):
    df = spark.createDataFrame([(1, 1, 99.0, _ts(5))], "user_id bigint, item_id bigint, rating double, ts timestamp")
    result = ingest.ingest_interactions(df, DS, rating_min=None, rating_max=None, now=None)
    assert result.interactions.count() == 1 and result.quarantine.count() == 0


def test_empty_string_ids_are_quarantined(spark):
    df = spark.createDataFrame(
        [("a", "x", 3.0, _ts(1)), (" ", "x", 3.0, _ts(1)), ("b", "", 3.0, _ts(1))],
        "user_id string, item_id string, rating double, ts timestamp",
    )
    result = ingest.ingest_interactions(df, DS)
    assert [r.user_id for r in result.interactions.collect()] == ["a"]
    assert [r.reason for r in result.quarantine.collect()] == [schema.REASON_NULL_ID] * 2


def test_every_bad_line_of_a_file_source_reaches_the_quarantine_with_its_raw_line(spark, copy_fixture):
    folder = copy_fixture("ml-1m")
    # 978300760 = 2000-12-31 22:12:40 UTC; ds 2001-01-10, now 2001-02-01
    bad = {
        "1::1193::5": "unparseable_line",               # three fields
        "1::1193::5::978300760::extra": "unparseable_line",
        "x1::1193::5::978300760": "unparseable_line",   # id is not a number
        "1::661::five::978300760": "unparseable_line",  # rating is not a number
        "::1193::4::978300760": "null_or_empty_id",
        "2::661::3::soon": "bad_timestamp",
        "2::661::7::978300760": "rating_out_of_range",
        "1::1193::5::978300760": "duplicate_event",     # repeats the first line of the fixture
        "2::2355::4::999999999999": "bad_timestamp",    # beyond what a timestamp holds
        "3::661::4::1893456000": "future_timestamp",    # 2030
        "9::661::4::978300760": "unknown_user",
        "2::4242::4::978300760": "unknown_item",
    }
    with open(folder / "ratings.dat", "a", encoding="latin-1") as f:
        f.write("".join(line + "\n" for line in bad))
        f.write("2::29::4::981000000\n")  # 2001-02-01: after ds, before now: outside the run
    with open(folder / "users.dat", "a", encoding="latin-1") as f:
        f.write("3::F::18::4::12345\n")          # duplicate id
        f.write("4::M::18\n")                    # too few fields
    with open(folder / "movies.dat", "a", encoding="latin-1") as f:
        f.write("::Nameless (1999)::Drama\n")    # no id
    src = sources.load_movielens_1m(spark, str(folder))
    result = ingest.ingest_source(
        src, dt.date(2001, 1, 10), now=dt.datetime(2001, 2, 1, 12, tzinfo=dt.timezone.utc)
    )
    got = sorted((r.table, r.reason, r.raw) for r in result.quarantine.collect())
    expected = [("interactions", reason, line) for line, reason in bad.items()]
    expected += [("users", "duplicate_id", "3::M::25::15::55117"), ("users", "unparseable_line", "4::M::18"),
                 ("items", "null_or_empty_id", "::Nameless (1999)::Drama")]
    # of two rows with user id 3 the one with the smaller raw text stays
    assert got == sorted(expected)
    assert result.interactions.count() == 5
    assert sorted(r.user_id for r in result.users.collect()) == [1, 2, 3]
    counts = ingest.quarantine_counts(result.quarantine)
    assert counts["interactions"] == {
        "bad_timestamp": 2, "duplicate_event": 1, "future_timestamp": 1, "null_or_empty_id": 1,
        "rating_out_of_range": 1, "unknown_item": 1, "unknown_user": 1, "unparseable_line": 4,
    }
    assert counts["users"] == {"duplicate_id": 1, "unparseable_line": 1}


def test_tags_are_validated_and_cut_at_the_end_of_ds(spark):
    tags = spark.createDataFrame(
        [(1, 10, "funny", _ts(2)), (1, 10, "  ", _ts(2)), (1, 99, "x", _ts(2)), (1, 10, "later", _ts(12))],
        "user_id bigint, item_id bigint, tag string, ts timestamp",
    )
    items = spark.createDataFrame([(10,)], "item_id bigint")
    kept, quarantine = ingest.ingest_tags(tags, DS, now=NOW, items=items)
    assert [r.tag for r in kept.collect()] == ["funny"]
    assert sorted(r.reason for r in quarantine.collect()) == ["empty_value", "unknown_item"]


def test_quarantine_share_threshold():
    counts = {"interactions": {"rating_out_of_range": 30, "null_or_empty_id": 10}, "users": {"duplicate_id": 99}}
    assert ingest.check_quarantine_share(counts, 960, max_share=0.05) == pytest.approx(0.04)
    with pytest.raises(ingest.QuarantineError) as err:
        ingest.check_quarantine_share(counts, 360, max_share=0.05, where="/wh/_work/raw/quarantine")
    message = str(err.value)
    assert "10.0% of the run's interaction rows were quarantined (40 of 400: rating_out_of_range 30, " in message
    assert "above ingest.max_quarantine_share = 5.0%" in message
    assert "/wh/_work/raw/quarantine" in message


def test_missing_column_names_table_column_and_fix(spark):
    df = spark.createDataFrame([(1, 2, 3.0)], "user_id bigint, item_id bigint, rating double")
    with pytest.raises(ingest.SchemaError, match=r"ratings.csv: missing column 'ts'.*Found columns: user_id, item_id, rating"):
        ingest.ingest_interactions(df, DS, table="ratings.csv")


def test_wrong_type_names_expected_and_found(spark):
    df = spark.createDataFrame([(1, 2, "high", _ts(1))], "user_id bigint, item_id bigint, rating string, ts timestamp")
    with pytest.raises(ingest.SchemaError, match=r"column 'rating' has type string, expected"):
        ingest.ingest_interactions(df, DS)
