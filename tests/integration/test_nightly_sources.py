"""The nightly flow on a user's own CSV files: quarantine counts in the manifests, the threshold, refit off."""

import datetime as dt
import json

import pandas as pd
import pytest

from jobs import synthetic
from tests.fixtures.tiny_night import run_nightly

DS = "2024-03-31"
SPEC = synthetic.SyntheticSpec(n_users=120, n_items=80, ratings_per_user=12, days=30, end_date=dt.date(2024, 4, 3), seed=4)
BAD_LINES = {
    "u1,i1,9,1711000000": "rating_out_of_range",
    "u2,i2,0,1711000000": "rating_out_of_range",
    "u3,i3": "unparseable_line",
    ",i4,3,1711000000": "null_or_empty_id",
    "u5,i5,3,not-a-time": "bad_timestamp",
    "u6,i6,3,2000000000": "future_timestamp",   # 2033, after ingest.now
    "u7,nosuchitem,3,1711000000": "unknown_item",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mydata")
    world = synthetic.make_world(SPEC)
    ratings = synthetic.synthetic_ratings(world)
    events = pd.DataFrame({
        "user": "u" + ratings.user_id.astype(str), "item": "i" + ratings.item_id.astype(str),
        "stars": ratings.rating.astype(int), "epoch": [int(t.timestamp()) for t in ratings.ts],
    })
    lines = [",".join(map(str, row)) for row in events.itertuples(index=False)]
    lines += list(BAD_LINES) + [lines[0]]  # and one exact duplicate
    (folder / "events.csv").write_text("user,item,stars,epoch\n" + "\n".join(lines) + "\n")
    items = world.items.assign(item_id="i" + world.items.item_id.astype(str))[["item_id", "genres", "year"]]
    items.to_csv(folder / "items.csv", index=False)
    in_run = (ratings.ts < pd.Timestamp("2024-04-01", tz="UTC")).sum()
    return folder, int(in_run)


def _config(folder, warehouse, **ingest):
    return {
        "warehouse": str(warehouse),
        "source": {"kind": "files", "files": {
            "interactions": {"path": str(folder / "events.csv"), "format": "csv",
                             "columns": {"user_id": "user", "item_id": "item", "rating": "stars", "ts": "epoch"}},
            "items": {"path": str(folder / "items.csv"), "format": "csv", "id_column": "item_id",
                      "features": [{"column": "genres", "kind": "multi_categorical"},
                                   {"column": "year", "kind": "continuous"}]},
        }},
        "ingest": {"rating_min": 1, "rating_max": 5, "now": "2024-04-10T00:00:00", **ingest},
        "split": {"holdout_days": 5},
        "models": [{"name": "two_tower", "embedding_dim": 8, "tower_layers": [16], "epochs": 1, "batch_size": 128}],
        "evaluation": {"k": 5},
        "gate": {"publish_anyway": True},  # a one-epoch model on this data loses to popularity
        "publish": {"k": 5, "refit_on_full": False},
        "spark": {"master": "local[2]", "shuffle_partitions": 2},
    }


def test_own_files_run_end_to_end_with_quarantine_counts_and_no_refit(spark, prefect_server, files, tmp_path):
    folder, in_run = files
    summary = run_nightly(_config(folder, tmp_path / "wh"), DS)
    expected = {}
    for reason in [*BAD_LINES.values(), "duplicate_event"]:
        expected[reason] = expected.get(reason, 0) + 1
    assert summary.ingested.quarantined == expected
    assert summary.ingested.events == in_run
    wh = tmp_path / "wh"
    recs = wh / "recommendations" / f"ds={DS}" / "model=two_tower"
    manifest = json.loads((recs / "_manifest.json").read_text())
    assert manifest["trained_on"] == "train window"           # publish.refit_on_full: false
    assert manifest["counts"]["quarantined"] == expected
    assert manifest["counts"]["quarantined_by_table"] == {"interactions": expected}
    assert manifest["counts"]["quarantine_share"] == pytest.approx(8 / (8 + in_run), abs=1e-6)
    quarantine = pd.read_parquet(wh / "quarantine" / f"ds={DS}")
    assert json.loads((wh / "quarantine" / f"ds={DS}" / "_manifest.json").read_text())["reasons"] == expected
    assert sorted(quarantine.raw[quarantine.reason == "unparseable_line"]) == ["u3,i3"]
    assert set(pd.read_parquet(recs).user_id.str[:1]) == {"u"}  # ids keep the source's string type
    items = pd.read_parquet(wh / "item_features" / f"ds={DS}")
    assert {"item_genres", "item_year", "item_rating_p50", "item_days_since_last"} <= set(items.columns)
    users = pd.read_parquet(wh / "user_features" / f"ds={DS}")
    assert "user_genre_share_drama" in users.columns and not users.isna().any().any()


def test_run_fails_when_too_much_is_quarantined(spark, prefect_server, files, tmp_path):
    folder, in_run = files
    with pytest.raises(Exception, match=r"above ingest.max_quarantine_share = 0.1%") as err:
        run_nightly(_config(folder, tmp_path / "wh", max_quarantine_share=0.001), DS)
    assert "rating_out_of_range 2" in str(err.value)
    assert not (tmp_path / "wh" / "recommendations").exists()
