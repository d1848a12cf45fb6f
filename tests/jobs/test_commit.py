"""jobs.commit: a night's partitions staged, then swapped in together, a commit record, forward-only pointers."""

import datetime as dt
import json

import pandas as pd
import pytest

from jobs import commit
from jobs.run_catalogue import MANIFEST, SCHEMA_VERSION, SUCCESS_MARKER, RunCatalogue
from jobs.storage import Location, StorageError

DS = dt.date(2024, 1, 2)


@pytest.fixture(params=["local", "mock"])
def root(request, tmp_path):
    return Location(str(tmp_path / "w")) if request.param == "local" else Location(f"mock:///{tmp_path.name}")


def _text(*values):
    def write(staged: Location) -> None:
        (staged / "data.txt").write_text(",".join(values))
    return write


def _night(root, run_id, values, ds=DS, models=("mf",), **kwargs):
    night = commit.NightCommit(root, ds, run_id, **kwargs)
    night._stage("metrics", {}, _text(*values), {"what": "metrics"})
    for model in models:
        night._stage("recommendations", {"model": model}, _text(model, *values), {})
    return night


def test_stage_dataframe_writes_data_then_manifest_and_marker(spark, tmp_path):
    root = Location(str(tmp_path))
    night = commit.NightCommit(root, DS, "r1")
    df = spark.createDataFrame([(3, "c"), (1, "a"), (2, "b")], "n int, s string")
    part = night.stage_dataframe("metrics", df, {"model": "x"}, sort_by=("n",), side_files={"_extra.json": "{}"})
    staged = night.staged_location(part)
    assert part.path == "metrics/ds=2024-01-02" and part.manifest["row_count"] == 3
    assert part.manifest["columns"] == [{"name": "n", "type": "int"}, {"name": "s", "type": "string"}]
    assert {SUCCESS_MARKER, MANIFEST, "_extra.json"} <= set(staged.names())
    on_disk = json.loads((staged / MANIFEST).read_text())
    assert on_disk["run_id"] == "r1" and on_disk["schema_version"] == SCHEMA_VERSION and on_disk["ds"] == "2024-01-02"
    assert pd.read_parquet(staged.local_path).n.tolist() == [1, 2, 3]
    assert not (root / "metrics").exists()  # nothing is visible before the commit


def test_commit_swaps_every_partition_in_writes_the_record_and_moves_the_pointers(root):
    steps = []
    record = _night(root, "r1", ["1"], on_step=steps.append).commit({"config_hash": "abc"})
    assert (root / "metrics/ds=2024-01-02/data.txt").read_text() == "1"
    assert (root / "recommendations/ds=2024-01-02/model=mf/data.txt").read_text() == "mf,1"
    assert record["run_id"] == "r1" and record["config_hash"] == "abc"
    assert commit.commit_record(root, DS)["run_id"] == "r1" and commit.is_committed(root, DS)
    pointer = commit.pointers(root)["model=mf"]
    assert (pointer["ds"], pointer["run_id"]) == ("2024-01-02", "r1")
    assert pointer["partitions"] == {"metrics": "metrics/ds=2024-01-02",
                                     "recommendations": "recommendations/ds=2024-01-02/model=mf"}
    assert steps[0] == "commit:intent-written" and "commit:record-written" in steps
    assert not (root / "_staging/run=r1").exists()
    assert [n for n in (root / "_commits/ds=2024-01-02").names() if n.endswith(".pending.json")] == []
    # a later run of the same night replaces it and keeps the old copy as a version
    _night(root, "r2", ["2"]).commit({})
    assert (root / "metrics/ds=2024-01-02/data.txt").read_text() == "2"
    versions = (root / "_versions/metrics/ds=2024-01-02").names()
    assert len(versions) == 1 and versions[0].endswith("-run=r1")
    assert commit.commit_record(root, DS)["run_id"] == "r2"


def test_pointers_only_move_forward(root):
    _night(root, "late", ["b"], ds=dt.date(2024, 1, 5)).commit({})
    _night(root, "backfilled", ["a"], ds=dt.date(2024, 1, 3)).commit({})
    assert commit.pointers(root)["night"]["ds"] == "2024-01-05"
    assert commit.is_committed(root, dt.date(2024, 1, 3))  # committed all the same
    assert commit.committed_partitions(root)["metrics"] == {"ds": "2024-01-05", "run_id": "late",
                                                           "path": "metrics/ds=2024-01-05"}


def test_old_versions_beyond_the_limit_are_removed(root):
    for n in range(4):
        _night(root, f"r{n}", [str(n)], keep_versions=2).commit({})
    assert sorted(v.rsplit("-", 1)[1] for v in (root / "_versions/metrics/ds=2024-01-02").names()) == \
        ["run=r1", "run=r2"]


class Killed(Exception):
    pass


def _kill_at(step):
    def on_step(name):
        if name == step:
            raise Killed(step)
    return on_step


@pytest.mark.parametrize("step", ["commit:intent-written", "commit:swapped", "commit:between-renames",
                                  "commit:partitions-swapped", "commit:record-written"])
def test_recover_completes_an_interrupted_commit(root, step):
    _night(root, "r1", ["1"], models=("mf", "tt")).commit({})
    night = _night(root, "r2", ["2"], models=("mf", "tt"), on_step=_kill_at(step))
    if step in ("commit:swapped", "commit:between-renames") and (step == "commit:swapped") != root.is_local:
        pytest.skip("this step is only reached on the other kind of file system")
    with pytest.raises(Killed):
        night.commit({})
    # Whatever the kill point, every partition is readable: the old night's or the new one's, never missing.
    for rel in ("metrics/ds=2024-01-02", "recommendations/ds=2024-01-02/model=mf",
                "recommendations/ds=2024-01-02/model=tt"):
        if (root / rel).exists():
            assert (root / rel / SUCCESS_MARKER).exists()
    lines = []
    assert commit.recover(root, lines.append) == ["ds=2024-01-02 run=r2"]
    assert "recovered the interrupted commit of ds=2024-01-02 run=r2" in lines[0]
    assert (root / "recommendations/ds=2024-01-02/model=tt/data.txt").read_text() == "tt,2"
    assert commit.commit_record(root, DS)["run_id"] == "r2" and commit.is_committed(root, DS)
    assert commit.pointers(root)["model=tt"]["run_id"] == "r2"
    assert commit.recover(root, lines.append) == []  # nothing left to do
    for rel in ("metrics/ds=2024-01-02", "recommendations/ds=2024-01-02/model=mf"):
        assert sorted((root / rel).names()) == sorted([MANIFEST, SUCCESS_MARKER, "data.txt"])  # nothing nested


def test_recover_leaves_a_live_commit_alone(root):
    from jobs.run_lock import RunLock

    night = _night(root, "r1", ["1"], on_step=_kill_at("commit:intent-written"))
    with pytest.raises(Killed):
        night.commit({})
    with RunLock(root, "ds=2024-01-02", "r1"):  # the run is still alive
        assert commit.recover(root, print) == []
    assert commit.recover(root, print) == ["ds=2024-01-02 run=r1"]


def test_staging_of_dead_runs_is_cleaned_but_not_of_live_or_committing_ones(root):
    _night(root, "dead", ["x"])  # staged, never committed
    _night(root, "live", ["y"])
    committing = _night(root, "committing", ["z"], on_step=_kill_at("commit:intent-written"))
    with pytest.raises(Killed):
        committing.commit({})
    assert commit.cleanup_staging(root, live={"live"}, log=print) == 1
    assert sorted((root / "_staging").names()) == ["run=committing", "run=live"]


def test_a_model_folder_is_staged_with_its_embedding_tables(root):
    cat = RunCatalogue(root, DS, "r1")
    model, user = cat.dataset("full.model/mf"), cat.dataset("full.embeddings/mf/user")
    (model.location / "model.keras").write_bytes(b"weights")
    (user.location / "part-0.parquet").write_bytes(b"x")
    night = commit.NightCommit(root, DS, "r1")
    with pytest.raises(commit.CommitError, match="is incomplete"):
        night.stage_dataset("models", model, {}, model="mf")
    model.mark_complete()
    user.mark_complete()
    night.stage_dataset("models", model, {"model_version": "mf@x"}, beside={"user_embeddings.parquet": user},
                        model="mf")
    night.commit({})
    final = root / "models/ds=2024-01-02/model=mf"
    assert (final / "model.keras").read_bytes() == b"weights"
    assert (final / "user_embeddings.parquet/part-0.parquet").read_bytes() == b"x"
    assert json.loads((final / MANIFEST).read_text())["model_version"] == "mf@x"


def test_two_commits_racing_on_one_partition_never_nest_or_double(root):
    import concurrent.futures

    _night(root, "r0", ["0"]).commit({})  # a published partition to replace

    def racer(n):
        # the run lock is bypassed here: two runs of one ds commit at the same moment
        try:
            _night(root, f"r{n}", [str(n)]).commit({})
        except (commit.CommitError, StorageError):  # a loser may fail loudly; it must not corrupt the table
            pass
        return n

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(racer, range(1, 5)))
    commit.recover(root, print)
    for rel in ("metrics/ds=2024-01-02", "recommendations/ds=2024-01-02/model=mf"):
        names = sorted((root / rel).names())
        assert names == sorted([MANIFEST, SUCCESS_MARKER, "data.txt"])  # one copy, nothing nested inside
    value = (root / "metrics/ds=2024-01-02/data.txt").read_text()
    assert value in {"1", "2", "3", "4"}
    assert json.loads((root / "metrics/ds=2024-01-02" / MANIFEST).read_text())["run_id"] == f"r{value}"
