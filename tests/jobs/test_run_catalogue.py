"""jobs.run_catalogue: dataset names, completion markers and the publishing protocol."""

import datetime as dt
import json

import pandas as pd
import pytest

from jobs import run_catalogue as rc
from jobs.storage import Location, StorageError

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


def test_publish_writes_data_then_manifest_and_marker(spark, tmp_path):
    root = Location(str(tmp_path))
    pub = rc.Publisher(root)
    final = rc.partition_location(root, "metrics", DS)
    df = spark.createDataFrame([(3, "c"), (1, "a"), (2, "b")], "n int, s string")
    manifest = pub.publish_dataframe(df, final, {"model": "x"}, sort_by=("n",), side_files={"_extra.json": "{}"})
    assert manifest["row_count"] == 3 and manifest["model"] == "x"
    assert manifest["columns"] == [{"name": "n", "type": "int"}, {"name": "s", "type": "string"}]
    assert {rc.SUCCESS_MARKER, rc.MANIFEST, "_extra.json"} <= set(final.names())
    on_disk = json.loads((final / rc.MANIFEST).read_text())
    assert on_disk["row_count"] == 3 and on_disk["schema_version"] == rc.SCHEMA_VERSION
    # Plain readers see only the data files, sorted.
    assert pd.read_parquet(final.local_path).n.tolist() == [1, 2, 3]
    assert (root / "_staging/metrics/ds=2024-01-02").names() == []


@pytest.fixture(params=["local", "mock"])
def root(request, tmp_path):
    return Location(str(tmp_path / "w")) if request.param == "local" else Location(f"mock:///{tmp_path.name}")


def _writer(*values):
    def write(staging: Location) -> None:
        (staging / "data.txt").write_text(",".join(values))
    return write


def test_republish_replaces_and_a_failed_publish_keeps_the_old(root):
    pub = rc.Publisher(root)
    final = rc.partition_location(root, "metrics", DS)
    pub.publish(final, _writer("1"), {})
    pub.publish(final, _writer("7", "8"), {})
    assert (final / "data.txt").read_text() == "7,8"

    def crash(staging):
        _writer("99")(staging)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        pub.publish(final, crash, {})
    assert (final / "data.txt").read_text() == "7,8" and pub.is_published(final)
    assert (root / "_staging/metrics/ds=2024-01-02").names() == []  # the failed staging copy is gone
    assert (root / "_trash/metrics/ds=2024-01-02").names() == []


def test_recover_restores_the_partition_after_a_crash_between_the_renames(root):
    pub = rc.Publisher(root)
    final = rc.partition_location(root, "metrics", DS)
    pub.publish(final, _writer("5"), {})
    final.move_to(pub._scratch("_trash", final))  # the crash: old copy in the trash, new one never moved
    assert not pub.is_published(final)
    pub.recover(final)
    assert pub.is_published(final) and (final / "data.txt").read_text() == "5"


def test_a_rename_never_lands_inside_an_existing_partition(root):
    (root / "elsewhere/x").write_text("1")
    final = rc.partition_location(root, "metrics", DS)
    (final / "old").write_text("0")
    with pytest.raises(StorageError, match="destination exists"):
        (root / "elsewhere").move_to(final)
    assert final.names() == ["old"]


def test_read_manifest_refuses_unpublished(tmp_path):
    pub = rc.Publisher(Location(str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="not a published partition"):
        pub.read_manifest(Location(str(tmp_path / "metrics" / "ds=2024-01-01")))


def test_publish_dataset_copies_a_complete_folder(root):
    cat = rc.RunCatalogue(root, DS, "r1")
    model = cat.dataset("full.model/mf")
    (model.location / "model.keras").write_bytes(b"weights")
    with pytest.raises(rc.IncompleteDataset):
        cat.publisher().publish_dataset(model, cat.partition("models", model="mf"), {})
    model.mark_complete()
    manifest = cat.publisher().publish_dataset(model, cat.partition("models", model="mf"), {"model": "mf"})
    final = cat.partition("models", model="mf")
    assert (final / "model.keras").read_bytes() == b"weights"
    assert json.loads((final / rc.MANIFEST).read_text())["model"] == manifest["model"] == "mf"
