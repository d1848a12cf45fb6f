"""The spark launcher end to end on a real standalone cluster (the ``spark_cluster`` fixture: a master and a
worker with 2 cores on 127.0.0.1).

The driver runs in a fresh process: a process has one SparkContext, and the test session's own (the local
``spark`` fixture) may already be running. The executors run in the worker's folders, not in the driver's
working directory; they get nightrec's code the way a cluster without a packed environment does, as a
zip in ``spark.submit.pyFiles`` (``jobs.pack.pack_sources``), and read and write the test's folder through
``jobs.storage`` like any shared file system.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jobs.pack import pack_sources
from jobs.storage import Location
from models.launch import TrainJob, train
from models.registry import load_model
from models.settings import LaunchSettings, TrainSettings
from tests.fixtures.models import TRAIN_SPEC, train_feed, write_catalogue, write_examples

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _driver(script: str, tmp_path, spark_cluster: str) -> dict:
    code = pack_sources(tmp_path / "nightrec-code.zip")
    prelude = textwrap.dedent(f"""
        import json, pickle, sys
        from jobs.distributed import barrier_runner
        from jobs.session import build_spark
        from models.launch import train, WorkerFailed
        spark = build_spark(master={spark_cluster!r}, app_name="nightrec-spark-launcher-test", driver_memory="1g",
                            conf={{"spark.submit.pyFiles": {str(code)!r}, "spark.executor.memory": "1g",
                                  "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}})
        barrier = barrier_runner(spark)
        out = {{}}
    """)
    epilogue = '\nspark.stop()\nprint("RESULT" + json.dumps(out))\n'
    env = {**os.environ, "PYTHONPATH": ROOT, "SPARK_LOCAL_IP": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script) + epilogue], capture_output=True,
                          text=True, env=env, timeout=900, cwd=str(tmp_path))
    assert proc.returncode == 0 and "RESULT" in proc.stdout, (proc.stdout[-3000:], proc.stderr[-5000:])
    return json.loads(proc.stdout.split("RESULT", 1)[1])


@pytest.mark.cluster
def test_spark_launcher_trains_two_workers_in_a_barrier_stage_like_the_local_launcher(tmp_path, spark_cluster):
    root = Location(str(tmp_path / "data"))
    examples, _ = write_examples(root, n=512, row_groups=4)
    job = TrainJob("two_tower", TRAIN_SPEC, examples, root / "spark-model",
                   settings=TrainSettings(epochs=2, batch_size=64, seed=7),
                   model_params={"embedding_dim": 4, "tower_layers": [8]}, item_features=write_catalogue(root))
    bad = TrainJob("mf", TRAIN_SPEC, write_examples(root, n=64, seed=1)[0], root / "never",   # one unit, two workers
                   settings=TrainSettings(epochs=1, batch_size=32))
    with open(tmp_path / "jobs.pkl", "wb") as handle:
        pickle.dump((job, bad), handle)
    out = _driver("""
        from models.settings import LaunchSettings
        job, bad = pickle.load(open("jobs.pkl", "rb"))
        launch = LaunchSettings(workers=2, launcher="spark", worker_timeout_s=60)
        lines = []
        result = train(job, launch, barrier=barrier, log=lines.append)
        out["result"] = result.to_json()
        out["lines"] = lines
        try:
            train(bad, launch, barrier=barrier)
        except WorkerFailed as exc:
            out["failure"] = str(exc)
    """, tmp_path, spark_cluster)
    result = out["result"]
    assert result["workers"] == 2 and len(set(result["weight_fingerprints"])) == 1
    assert [h["epoch"] for h in result["history"]] == [1, 2] and result["steps_run"] == 2 * (512 // 64)
    assert len(out["lines"]) == 2 and out["lines"][0].startswith("epoch 1/2: loss")     # the chief's log, replayed
    # The same job through the local launcher: the same sharding, seeds and steps, so the same training.
    local = train(dataclasses.replace(job, out_dir=root / "local-model"),
                  LaunchSettings(workers=2, worker_timeout_s=60), log=lambda _: None)
    np.testing.assert_allclose([h["loss"] for h in result["history"]], [h["loss"] for h in local.history], rtol=1e-5)
    batch = train_feed(np.repeat(np.arange(2, 12), 6), np.tile(np.arange(2, 8), 10))
    np.testing.assert_allclose(np.asarray(load_model(root / "spark-model" / "model.keras")(batch)),
                               np.asarray(load_model(local.model_file)(batch)), rtol=1e-4, atol=1e-5)
    # A failing training fails on the driver with every worker's error, without Spark retrying the stage.
    failure = out["failure"]
    assert "2 of 2 workers failed" in failure and "worker 0 raised ValueError" in failure
    assert "worker 1 raised ValueError" in failure
    assert "unit(s) of training examples for 2 workers" in failure
