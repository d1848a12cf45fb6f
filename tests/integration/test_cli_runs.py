"""The command line as a user runs it (a subprocess): quiet start-up, and a failure said once."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from tests.fixtures.tiny_night import DS, TINY

#: Start-up lines of TensorFlow, absl, CUDA and oneDNN (driver and Spark workers) that a run must not print.
NOISE = re.compile(r"absl::InitializeLog|cuInit|cudart_stub|cuda drivers|oneDNN|cpu_feature_guard|"
                   r"rebuild TensorFlow|TF_ENABLE_ONEDNN_OPTS")


def _nightrec(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)  # the command's own temporary server, not the test session's
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=900)


def test_a_run_prints_no_tensorflow_start_up_lines(tmp_path):
    model = {**TINY["models"][0], "epochs": 1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, "models": [model], "warehouse": "wh"}))
    proc = _nightrec(tmp_path, "nightly", "--ds", DS, "--config", "c.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"nightrec nightly ds={DS} finished" in proc.stdout
    noisy = [line for line in proc.stderr.splitlines() if NOISE.search(line)]
    assert noisy == []
    assert "evaluate[two_tower]" in proc.stderr  # nightrec's own progress is still shown


def test_a_failed_run_says_its_error_once_and_the_traceback_only_with_debug(tmp_path):
    (tmp_path / "events.csv").write_text("user,item,when\nu1,i1,1711000000\n")
    config = {**TINY, "warehouse": "wh", "source": {"kind": "files", "files": {"interactions": {
        "path": str(tmp_path / "events.csv"), "format": "csv",
        "columns": {"user_id": "user", "item_id": "item", "rating": None, "ts": "ts"}}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = _nightrec(tmp_path, "nightly", "--ds", DS, "--config", "c.yaml")
    assert proc.returncode == 1
    # The error is said once, naming the missing column and the config key that maps it; no traceback.
    assert proc.stderr.count("expected a column named 'ts' in the header") == 1, proc.stderr
    assert "Set source.files.interactions.columns.ts to the name of the column" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"nightrec: the run for ds={DS} failed (run with --debug for the traceback)" in proc.stderr
    debug = _nightrec(tmp_path, "nightly", "--ds", DS, "--config", "c.yaml", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_model_worse_than_popularity_is_held_back_and_the_previous_night_stays(tmp_path):
    import json

    import pandas as pd

    from tests.fixtures.tiny_night import SMALL

    before = "2024-03-30"
    config = {**SMALL, "warehouse": "wh", "gate": {"margin": 0.05}}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(config))
    first = _nightrec(tmp_path, "nightly", "--ds", before, "--config", "good.yaml", "--publish-anyway")
    assert first.returncode == 0, first.stderr[-3000:]
    # A model that cannot learn: its scores are its random initial weights.
    bad = {**config, "models": [{**SMALL["models"][0], "learning_rate": 1e-9}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = _nightrec(tmp_path, "nightly", "--ds", DS, "--config", "bad.yaml")

    assert proc.returncode == 4, proc.stderr[-3000:]
    assert re.search(r"held back two_tower nDCG@3 [0-9.]+ is [0-9.]+% below popularity's [0-9.]+", proc.stderr)
    wh = tmp_path / "wh"
    # The model's tables and pointer stay those of the night before; the night's shared tables moved on.
    assert json.loads((wh / "_latest" / "model=two_tower.json").read_text())["ds"] == before
    assert json.loads((wh / "_latest" / "night.json").read_text())["ds"] == DS
    assert (wh / "recommendations" / f"ds={before}" / "model=two_tower" / "_SUCCESS").exists()
    assert not (wh / "recommendations" / f"ds={DS}" / "model=two_tower").exists()
    record = json.loads((wh / "_commits" / f"ds={DS}.json").read_text())
    decision = record["gate"]["two_tower"]
    assert decision["status"] == "held_back" and not decision["published"] and not decision["override"]
    # The figures the gate compared are the metrics tables' (read here with pandas).
    tonight = pd.read_parquet(wh / "metrics" / f"ds={DS}")
    previous = pd.read_parquet(wh / "metrics" / f"ds={before}")

    def figure(table, scorer):
        row = table[(table.model == "two_tower") & (table.scorer == scorer) & (table.slice == "all")
                    & (table.metric == "ndcg") & (table.k == 3)]
        assert len(row) == 1
        return float(row.value.iloc[0])

    assert decision["value"] == figure(tonight, "model") < figure(tonight, "popularity") == decision["popularity"]
    assert decision["previous"] == figure(previous, "model") and decision["previous_ds"] == before
    assert {"ndcg", "mrr", "hit_rate", "coverage", "novelty", "popularity_bias", "exposure_gini"} <= set(tonight.metric)

    # The override publishes it, and says so in the manifest.
    again = _nightrec(tmp_path, "nightly", "--ds", DS, "--config", "bad.yaml", "--publish-anyway")
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((wh / "recommendations" / f"ds={DS}" / "model=two_tower" / "_manifest.json").read_text())
    assert manifest["gate"]["two_tower"]["override"] is True
    assert json.loads((wh / "_latest" / "model=two_tower.json").read_text())["ds"] == DS
