"""The whole nightly flow on a tiny synthetic dataset, checked against the table contract."""

import json
import os

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from tests.fixtures.tiny_night import DS, K, TINY, events_through_ds, run_nightly


@pytest.fixture(scope="module")
def run(spark, prefect_server, tmp_path_factory):
    """The default run (with the ALS baseline), with the warehouse given as a file:// URI, scored through a
    flat (exact) FAISS index by ``scoring.method: ann``."""
    warehouse = tmp_path_factory.mktemp("night") / "warehouse"
    config = {**TINY, "warehouse": "file://" + str(warehouse), "evaluation": {"k": K},
              "scoring": {"method": "ann", "ann": {"index": "flat", "recall_sample_users": 40}}}
    return warehouse, config, run_nightly(config)


def test_recommendations_follow_the_table_contract(run):
    warehouse, _, summary = run
    part = warehouse / "recommendations" / f"ds={DS}" / "model=two_tower"
    recs = pd.read_parquet(part)
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score", "source"]
    events = events_through_ds()
    # Every user (the users table holds all 150; some have no events through ds)
    # has exactly K rows with ranks 1..K.
    assert set(recs.user_id) == set(range(1, 151))
    assert set(events.user_id) < set(recs.user_id)
    cold = set(recs.user_id) - set(events.user_id)
    assert set(recs[recs.user_id.isin(cold)].source) == {"features"}
    assert set(recs[~recs.user_id.isin(cold)].source) == {"model"}
    per_user = recs.groupby("user_id")["rank"].apply(sorted)
    assert all(ranks == list(range(1, K + 1)) for ranks in per_user)
    # No item the user rated up to ds (events after ds are not in the run).
    rated = set(zip(events.user_id, events.item_id))
    assert not any((u, i) in rated for u, i in zip(recs.user_id, recs.item_id))
    # Scores never increase with rank.
    ordered = recs.sort_values(["user_id", "rank"])
    assert (ordered.groupby("user_id")["score"].diff().dropna() <= 1e-6).all()
    assert set(recs.source) <= {"model", "features", "popularity"}
    assert recs.user_id.dtype == "int64" and recs.item_id.dtype == "int64"


def test_manifest_and_marker(run):
    warehouse, config, summary = run
    part = warehouse / "recommendations" / f"ds={DS}" / "model=two_tower"
    assert (part / "_SUCCESS").exists()
    manifest = json.loads((part / "_manifest.json").read_text())
    recs = pd.read_parquet(part)
    assert manifest["row_count"] == len(recs)
    assert manifest["k"] == K and manifest["model"] == "two_tower"
    assert set(manifest["metrics"]["model"]) >= {"recall", "ndcg"}
    assert len(manifest["config_hash"]) == 16
    for table in ("user_features", "item_features", "metrics", "quarantine"):
        assert (warehouse / table / f"ds={DS}" / "_SUCCESS").exists(), table
    assert (warehouse / "models" / f"ds={DS}" / "model=two_tower" / "model.keras").exists()
    # ann scoring: its recall against exact scoring is measured (a flat index is exact) and published
    assert manifest["scoring"] == "ann: flat index candidates re-scored exactly"
    assert manifest["ann"]["ann_recall_at_k"] == 1.0 and manifest["ann"]["ann_recall_users"] == 40
    metrics = pd.read_parquet(warehouse / "metrics" / f"ds={DS}")
    recall = metrics[metrics.metric == "ann_recall"]
    assert list(zip(recall.model, recall.value, recall.users, recall.k)) == [("two_tower", 1.0, 40, K)]
    # the ALS baseline stands beside popularity
    assert {"model", "popularity", "als"} <= set(metrics[metrics.metric == "ndcg"].scorer)
    assert {"all", "users:warm", "items:warm"} <= set(metrics.slice)


def test_training_examples_and_feature_state_are_published(run):
    from jobs.features import FeatureState

    warehouse, _, _ = run
    events = events_through_ds()
    # refit_on_full (the default): the published window is every event through ds, one example each.
    examples = pd.read_parquet(warehouse / "training_examples" / f"ds={DS}")
    assert len(examples) == len(events)
    assert set(zip(examples.user_id, examples.item_id)) == set(zip(events.user_id, events.item_id))
    manifest = json.loads((warehouse / "training_examples" / f"ds={DS}" / "_manifest.json").read_text())
    assert manifest["row_count"] == len(events) and manifest["window"] == "full"
    for table in ("user_features", "item_features", "training_examples"):
        text = (warehouse / table / f"ds={DS}" / "_feature_state.json").read_text()
        state = FeatureState.from_json(text)
        assert state.user_vocab == sorted(events.user_id.unique().tolist())
        assert state.item_vocab == sorted(events.item_id.unique().tolist())
        assert state.example_statistics == "leave_one_out"  # the config default, recorded with the tables


def test_metrics_table_has_model_beside_the_baselines_by_slice(run):
    warehouse, _, summary = run
    metrics = pd.read_parquet(warehouse / "metrics" / f"ds={DS}")
    assert set(metrics.scorer) == {"model", "popularity", "als"}
    ranking = {"precision", "recall", "ndcg", "map", "mrr", "hit_rate"}
    beyond = {"coverage", "novelty", "popularity_bias", "exposure_gini", "genre_diversity"}
    assert set(metrics.metric) == ranking | beyond | {"ann_recall"}
    assert metrics[metrics.metric.isin(ranking)].value.between(0, 1).all()
    ndcg = metrics[(metrics.metric == "ndcg") & (metrics.scorer == "model")].set_index("slice")
    # every holdout user is warm or cold, and a warm user in exactly one activity bucket
    assert ndcg.users["all"] == ndcg.users["users:warm"] + ndcg.users.get("users:cold", 0)
    assert ndcg.users["users:warm"] == ndcg.users[ndcg.index.str.startswith("activity:")].sum()
    assert ndcg.users["all"] == summary.metrics["two_tower"].model["users"] > 0
    assert ndcg.value["all"] == pytest.approx(summary.metrics["two_tower"].model["ndcg"])


def test_readers_pandas_pyarrow_duckdb(run):
    warehouse, _, _ = run
    root = warehouse / "recommendations"
    table = pads.dataset(str(root), format="parquet", partitioning="hive").to_table()
    assert {"ds", "model"} <= set(table.column_names)
    con = duckdb.connect()
    n = con.execute(
        f"select count(*) from read_parquet('{root}/*/*/*.parquet', hive_partitioning = true) "
        f"where model = 'two_tower'"
    ).fetchone()[0]
    assert n == table.num_rows


def test_work_folder_is_cleaned(run):
    warehouse, _, _ = run
    runs = os.listdir(warehouse / "_work" / f"ds={DS}") if (warehouse / "_work" / f"ds={DS}").exists() else []
    assert runs == []


MULTI = {
    **TINY,
    "models": [
        {"name": "ratings", "kind": "mf_mean", "objective": "rating", "embedding_dim": 4, "epochs": 2,
         "batch_size": 128},
        {"name": "dfm", "kind": "deepfm", "embedding_dim": 4, "deep_layers": [8], "epochs": 1, "batch_size": 128,
         "negative_ratio": 2},
        {"name": "reranked", "kind": "deepfm", "embedding_dim": 4, "deep_layers": [8], "epochs": 1,
         "batch_size": 128, "negative_ratio": 2, "retrieve_with": "ratings", "candidates": 12},
        {"name": "als", "kind": "als", "embedding_dim": 6, "max_iter": 4},
    ],
    "related_items": {"k": 6},
    "publish": {"k": K, "refit_on_full": False},
}


@pytest.fixture(scope="module")
def multi_run(spark, prefect_server, tmp_path_factory):
    """The multi-model run goes through the command line (``nightrec nightly --config F --json``), with the
    warehouse given as a path relative to the working directory."""
    import contextlib
    import io

    import yaml

    from flows import cli

    here = tmp_path_factory.mktemp("multi")
    config_file = here / "multi.yaml"
    config_file.write_text(yaml.safe_dump({**MULTI, "warehouse": "warehouse_multi"}))
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(here)
    try:
        with contextlib.redirect_stdout(out):
            code = cli.main(["nightly", "--ds", DS, "--config", "multi.yaml", "--json"])
    finally:
        os.chdir(cwd)
    assert code == 0
    summary = json.loads(out.getvalue())
    assert summary["warehouse"] == str(here / "warehouse_multi")
    return here / "warehouse_multi", summary


def test_several_models_are_trained_evaluated_and_published(multi_run):
    from models.registry import load_model

    warehouse, summary = multi_run
    rated = set(zip(events_through_ds().user_id, events_through_ds().item_id))
    for name in ("ratings", "dfm"):
        recs = pd.read_parquet(warehouse / "recommendations" / f"ds={DS}" / f"model={name}")
        assert set(recs.user_id) == set(range(1, 151)) and (recs.groupby("user_id").size() == K).all()
        assert not any((u, i) in rated for u, i in zip(recs.user_id, recs.item_id))
    metrics = pd.read_parquet(warehouse / "metrics" / f"ds={DS}")
    rating_rows = metrics[metrics.metric.isin(["rmse", "mae"])]
    assert set(rating_rows.model) == {"ratings"}
    assert set(rating_rows.scorer) == {"model", "user_mean", "item_mean"}
    assert rating_rows.k.isna().all() and (rating_rows.value > 0).all()
    assert set(metrics[metrics.model == "dfm"].metric) == {
        "precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage", "novelty", "popularity_bias",
        "exposure_gini", "genre_diversity", "related_hit_rate"}  # the co-occurrence baseline's, beside every model
    assert summary["metrics"]["ratings"]["rating"]["rows"] > 0
    ratings_dir = warehouse / "models" / f"ds={DS}" / "model=ratings"
    dfm_dir = warehouse / "models" / f"ds={DS}" / "model=dfm"
    for folder in (ratings_dir, dfm_dir):
        assert (folder / "model.keras").exists() and (folder / "feature_state.json").exists()
    assert (ratings_dir / "user_embeddings.parquet").exists()          # factorised: embedding tables
    assert not (dfm_dir / "user_embeddings.parquet").exists()          # DeepFM: scored from the saved model

    # The published DeepFM scores are the model's own scores of those (user, item) pairs.
    model = load_model(str(dfm_dir / "model.keras"))
    users = pd.read_parquet(warehouse / "user_features" / f"ds={DS}").set_index("user_id")
    items = pd.read_parquet(warehouse / "item_features" / f"ds={DS}").set_index("item_id")
    recs = pd.read_parquet(warehouse / "recommendations" / f"ds={DS}" / "model=dfm")
    sample = recs[recs["rank"].isin([1, K])].head(6)
    batch = {}
    for side, table, ids in (("user", users, sample.user_id), ("item", items, sample.item_id)):
        rows = table.loc[ids.to_numpy()]
        for column in model.input_names(side):
            values = rows[column].to_numpy()
            if values.dtype == object:                          # multi-valued: pad with -1
                width = max(e["max_len"] for e in model.spec[side]["multi_categorical"] if e["name"] == column)
                values = np.array([list(v)[:width] + [-1] * (width - len(v)) for v in values])
            batch[column] = values.astype(np.float32 if values.dtype.kind == "f" else np.int32)
    np.testing.assert_allclose(np.asarray(model(batch)), sample.score.to_numpy(), rtol=1e-4, atol=1e-5)


def test_two_stage_model_ranks_only_the_retrievers_candidates(multi_run):
    warehouse, summary = multi_run
    part = warehouse / "recommendations" / f"ds={DS}" / "model=reranked"
    manifest = json.loads((part / "_manifest.json").read_text())
    assert manifest["scoring"] == "two-stage: top 12 unseen items by ratings, ranked by reranked"
    assert json.loads((warehouse / "recommendations" / f"ds={DS}" / "model=dfm" / "_manifest.json").read_text()
                      )["scoring"] == "exhaustive"
    recs = pd.read_parquet(part)
    rated = set(zip(events_through_ds().user_id, events_through_ds().item_id))
    assert (recs.groupby("user_id").size() == K).all()
    assert not any((u, i) in rated for u, i in zip(recs.user_id, recs.item_id))
    # The retriever's candidates, recomputed from its published embedding tables in NumPy.
    folder = warehouse / "models" / f"ds={DS}" / "model=ratings"
    user_emb = pd.read_parquet(folder / "user_embeddings.parquet").set_index("user_id")
    item_emb = pd.read_parquet(folder / "item_embeddings.parquet").sort_values("item_id")
    items = item_emb.item_id.to_numpy()
    item_matrix = np.stack(item_emb.embedding.to_numpy()).astype(np.float64)
    modelled = recs[recs.source != "popularity"]
    assert len(modelled) > 0
    for user, rows in modelled.groupby("user_id"):
        scores = item_matrix @ np.asarray(user_emb.loc[user, "embedding"], np.float64)
        unseen = [j for j in range(len(items)) if (user, items[j]) not in rated]
        top = sorted(unseen, key=lambda j: (-scores[j], items[j]))
        # float32 vs float64: allow the boundary candidate to differ
        assert set(rows.item_id) <= set(items[top[:13]]), user
    assert summary["metrics"]["reranked"]["model"]["users"] > 0


def test_the_run_leaves_a_summary_and_links_to_its_tables_as_prefect_artifacts(run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    warehouse, _, summary = run

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    # Other tests of this session write artifacts under the same keys: take this run's own.
    mine = [a for a in asyncio.run(read("nightrec-summary")) if f"(run {summary.run_id}," in a.data]
    assert len(mine) == 1
    assert f"# nightrec ds={DS}" in mine[0].data
    assert "| two_tower | popularity |" in mine[0].data
    # a link artifact's data is the Markdown link "[text](url)"
    links = [a.data for a in asyncio.run(read("nightrec-recommendations-two-tower"))]
    assert f"(file://{warehouse}/recommendations/ds={DS}/model=two_tower)" in "\n".join(links)
    # the night's report, beside its tables, linked from the run
    report = warehouse / "_reports" / f"ds={DS}.html"
    assert f"(file://{report})" in "\n".join(a.data for a in asyncio.run(read("nightrec-report")))
    html = report.read_text()
    assert "<img" in html and "data:image/png;base64," in html


def test_the_readmes_reading_snippets_run_on_the_published_warehouse(run, capsys):
    """Every Python snippet of README.md, Spark's included, as written but for the night's date and the
    warehouse's place (Spark's JVM resolves relative paths against its own working directory)."""
    import re
    from pathlib import Path

    warehouse, _, _ = run
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert any("SparkSession.builder.getOrCreate()" in b for b in blocks)
    for block in blocks:
        code = re.sub(r"\d{4}-\d{2}-\d{2}", DS, block).replace("warehouse/", f"{warehouse}/")
        exec(compile(code, "<README snippet>", "exec"), {"__name__": "__snippet__"})
        out = capsys.readouterr().out
        assert out.strip() and "False" not in out, f"the snippet printed {out!r}:\n{block}"


def test_factorised_models_publish_embedding_tables_and_related_items(multi_run):
    """ratings (mf_mean) and als: user/item embedding tables with their manifests, related items by the cosine
    of the item embeddings (recomputed in NumPy), the co-occurrence baseline, and their hit rates."""
    warehouse, summary = multi_run
    for name, dim in (("ratings", 4 + 2), ("als", 6)):  # mf_mean: [p_u, b_u, 1] . [q_i, 1, b_i]
        for side in ("user", "item"):
            part = warehouse / f"{side}_embeddings" / f"ds={DS}" / f"model={name}"
            manifest = json.loads((part / "_manifest.json").read_text())
            assert (part / "_SUCCESS").exists()
            assert manifest["dimension"] == dim and manifest["score_function"] == "dot"
            table = pd.read_parquet(part)
            assert list(table.columns) == [f"{side}_id", "embedding", "model_version"]
            assert manifest["row_count"] == len(table) and table[f"{side}_id"].is_monotonic_increasing
            assert set(table.model_version) == {f"{name}@{DS}"}
        items = pd.read_parquet(warehouse / "item_embeddings" / f"ds={DS}" / f"model={name}")
        ids = items.item_id.to_numpy()
        unit = np.stack(items.embedding).astype(np.float64)
        unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        cosine = unit @ unit.T
        np.fill_diagonal(cosine, -np.inf)
        related = pd.read_parquet(warehouse / "related_items" / f"ds={DS}" / f"model={name}")
        assert (related.groupby("item_id").size() == 6).all() and set(related.item_id) == set(ids)
        for a, rows in related.groupby("item_id"):
            row = int(np.searchsorted(ids, a))
            order = sorted(range(len(ids)), key=lambda j: (-cosine[row, j], ids[j]))
            assert set(rows.related_item_id) <= set(ids[order[:8]]), (name, a)
            np.testing.assert_allclose(rows.sort_values("rank").score.to_numpy(),
                                       np.sort(cosine[row, [int(np.searchsorted(ids, b)) for b in rows.related_item_id]])[::-1],
                                       rtol=1e-4, atol=1e-5)
    co = pd.read_parquet(warehouse / "related_items" / f"ds={DS}" / "model=co_occurrence")
    assert (co.item_id != co.related_item_id).all() and co.groupby("item_id").size().max() <= 6
    assert ((co.score > 0) & (co.score <= 1)).all()
    metrics = pd.read_parquet(warehouse / "metrics" / f"ds={DS}")
    hit = metrics[metrics.metric == "related_hit_rate"]
    assert {("ratings", "model"), ("als", "model"), ("ratings", "co_occurrence")} <= set(zip(hit.model, hit.scorer))
    assert (hit.k == 6).all() and hit.value.between(0, 1).all()
    # the als kind: trained in Spark, scored by the top-K job, published like any model
    recs = pd.read_parquet(warehouse / "recommendations" / f"ds={DS}" / "model=als")
    assert (recs.groupby("user_id").size() == K).all()
    assert json.loads((warehouse / "models" / f"ds={DS}" / "model=als" / "als.json").read_text())["rank"] == 6
