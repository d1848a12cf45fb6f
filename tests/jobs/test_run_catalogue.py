"""jobs.run_catalogue: dataset names, completion markers and the publishing protocol."""

import datetime as dt

import pytest

from jobs import run_catalogue as rc
from jobs.storage import Location

DS = dt.date(2024, 1, 2)


def test_partition_locations():
    root = Location("/w")
    assert rc.partition_location(root, "recommendations", DS, model="mf").uri == \
        "file:///w/recommendations/ds=2024-01-02/model=mf"
    assert rc.partition_location(root, "metrics", "2024-01-02").uri == "file:///w/metrics/ds=2024-01-02"
    with pytest.raises(ValueError, match="unknown table 'recs'"):
        rc.partition_location(root, "recs", DS)
    with pytest.raises(ValueError, match="partitioned by ds, model; got ds"):
        rc.partition_location(root, "recommendations", DS)


@pytest.mark.parametrize("name, rel, fmt", [
    ("raw.interactions", "raw/interactions", "parquet"),
    ("raw.source", "raw/source.json", "json"),
    ("train", "train", "parquet"),
    ("eval.examples", "eval/examples", "parquet"),
    ("full.feature_state", "full/feature_state.json", "json"),
    ("eval.model/two-tower_2", "eval/model/two-tower_2", "folder"),
    ("full.embeddings/mf/item", "full/embeddings/mf/item", "parquet"),
    ("eval.user_history/mf", "eval/user_history/mf", "parquet"),
    ("scored/deepfm", "scored/deepfm", "parquet"),
])
def test_dataset_names_map_to_the_run_folder(name, rel, fmt):
    cat = rc.RunCatalogue(Location("/w"), DS, "r1")
    ds = cat.dataset(name)
    assert ds.location.uri == f"file:///w/_work/ds=2024-01-02/run=r1/{rel}"
    assert ds.format == fmt


@pytest.mark.parametrize("name", ["raw.nope", "test.examples", "eval.embeddings/mf/both", "eval.model/a.b", "scored"])
def test_unknown_dataset_names_are_refused(name):
    with pytest.raises(ValueError, match=f"unknown dataset '{name}'; the run catalogue names: raw.interactions"):
        rc.RunCatalogue(Location("/w"), DS, "r1").dataset(name)


def test_datasets_know_when_they_are_complete(spark, tmp_path):
    cat = rc.RunCatalogue(Location(str(tmp_path)), DS, "r1")
    train = cat.dataset("train")
    assert not train.complete()
    with pytest.raises(rc.IncompleteDataset, match="dataset 'train' at .* is missing or incomplete"):
        train.load(spark)
    assert cat.dataset("raw.users").load_optional(spark) is None
    train.save(spark.createDataFrame([(1, 2)], "user_id int, item_id int"))
    assert train.complete()
    assert train.load(spark).collect()[0].asDict() == {"user_id": 1, "item_id": 2}
    # A half-written folder (no marker) is not complete.
    half = cat.dataset("holdout")
    (half.location / "part-0.parquet").write_text("")
    assert half.exists() and not half.complete()
    state = cat.dataset("eval.feature_state")
    assert not state.complete()
    state.write_json({"a": 1})
    assert state.complete() and state.read_json() == {"a": 1}
    with pytest.raises(TypeError, match="dataset 'eval.feature_state' is json, not parquet"):
        state.load(spark)
    cat.remove_work()
    assert not (tmp_path / "_work" / "ds=2024-01-02").exists()
