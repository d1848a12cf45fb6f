"""The Spark side of multi-worker training: one barrier-mode stage, one training worker per task.

``barrier_runner(spark)`` is what ``models.launch.train`` takes as
``barrier`` for launcher "spark". The stage has one partition per worker and
runs in barrier mode (``rdd.barrier().mapPartitions``), so Spark starts all
its tasks together or none of them. Each task:

1. reserves a free port on its executor's host;
2. sends ``host:port`` to the others with ``BarrierTaskContext.allGather``
   (so every task learns the whole cluster, by task index);
3. calls the task function it was given (a picklable callable of
   ``models/``, ``models.launch.worker_task``) with its index, the endpoints
   and its CPUs; that function builds ``TF_CONFIG`` and runs the TensorFlow
   worker in a fresh process, and returns the worker's report as JSON text.

The driver collects the reports by task index. This module imports no
TensorFlow, and neither do the tasks: the training runs in the process the
task function starts.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable, Iterator

from pyspark.sql import SparkSession

#: A training task: ``(task index, endpoints by index, CPUs of the task) -> report (text)``.
WorkerTask = Callable[[int, list[str], int], str]


def barrier_runner(spark: SparkSession) -> Callable[[WorkerTask, int], list[str]]:
    """``run(task, workers)`` on ``spark``'s cluster: ``run_barrier_stage`` with this session."""
    return functools.partial(run_barrier_stage, spark)


def run_barrier_stage(spark: SparkSession, task: WorkerTask, workers: int) -> list[str]:
    """Run ``task`` in each of ``workers`` barrier tasks at once; their reports by task index.

    Args:
        spark: a session on the cluster (the stage needs ``workers`` free task slots at once).
        task: the function each task calls (picklable; it must not raise for a failed worker, but
            report it, so that the stage is not retried with every worker restarted).
        workers: number of tasks.

    Returns:
        [workers] the reports, by task index.
    """
    if workers < 1:
        raise ValueError(f"a barrier stage needs at least one task, got workers={workers}")
    rdd = spark.sparkContext.parallelize(range(workers), workers)
    rows = rdd.barrier().mapPartitions(functools.partial(_barrier_task, task)).collect()
    if sorted(index for index, _ in rows) != list(range(workers)):
        raise RuntimeError(f"the barrier stage returned reports of tasks {sorted(i for i, _ in rows)}, "
                           f"expected one of each task 0..{workers - 1}")
    return [report for _, report in sorted(rows)]


def _barrier_task(task: WorkerTask, rows: Iterator[int]) -> Iterator[tuple[int, str]]:
    from pyspark import BarrierTaskContext

    list(rows)
    context = BarrierTaskContext.get()
    index = context.partitionId()
    host = context.getTaskInfos()[index].address.rsplit(":", 1)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    gathered = [json.loads(m) for m in context.allGather(json.dumps({"index": index, "endpoint": f"{host}:{port}"}))]
    endpoints = [m["endpoint"] for m in sorted(gathered, key=lambda m: m["index"])]
    yield index, task(index, endpoints, context.cpus())
