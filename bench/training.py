"""Training throughput per model family on 1 and 2 local workers, and the input pipeline's share of a step.

    .venv/bin/python bench/training.py             # 200,000 synthetic examples, 2 epochs per run
    .venv/bin/python bench/training.py --quick     # a small smoke run

For each family (two-tower: ``two_tower``; DeepFM: ``deepfm``; NCF: ``neumf``), with the nightly
defaults (embedding 32, batch 1024, Adam) on synthetic examples shaped like the nightly run's (user id,
gender, age; item id, genres (multi-valued), year; 10,000 users, 2,000 items, 8 Parquet files):

(a) examples/s of ``models.launch.train`` on 1 worker (in-process) and on 2 local workers
    (``LaunchSettings(workers=2)``: 2 processes, ring all-reduce over localhost), from the last epoch
    (the first pays tracing);
(b) the input pipeline's share of step time on 1 worker: the same training loop fed the same batches
    from memory (each epoch's batches read through ``models.data.make_dataset`` beforehand, then served
    by ``tf.data.Dataset.from_tensor_slices``) against fed from Parquet (the real pipeline), as
    1 - (examples/s from Parquet) / (examples/s from memory);
(c) the pipeline alone: examples/s and CPU time per example of reading ``make_dataset`` inside tf.data
    with no training.

The machine may be shared: the load average is printed before and after, and every figure is the
median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jobs.storage import Location  # noqa: E402

FAMILIES = {"two-tower": "two_tower", "DeepFM": "deepfm", "NCF": "neumf"}
N_USERS, N_ITEMS, MAX_GENRES = 10_000, 2_000, 3
SPEC = {
    "user": {"id": {"name": "user_idx", "vocab_size": N_USERS + 2},
             "categorical": [{"name": "user_gender", "vocab_size": 4}], "multi_categorical": [],
             "continuous": ["user_age"]},
    "item": {"id": {"name": "item_idx", "vocab_size": N_ITEMS + 2}, "categorical": [],
             "multi_categorical": [{"name": "item_genres", "vocab_size": 20, "max_len": MAX_GENRES}],
             "continuous": ["item_year"]},
}


def write_examples(folder: str, rows: int, files: int, seed: int = 0) -> None:
    """``rows`` synthetic examples of ``SPEC`` in ``files`` Parquet files, each user's rows together (as the
    feature stage writes them); popular items drawn more often (Zipf-like)."""
    rng = np.random.default_rng(seed)
    users = np.sort(rng.integers(2, N_USERS + 2, size=rows))
    popularity = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8
    items = rng.choice(np.arange(2, N_ITEMS + 2), size=rows, p=popularity / popularity.sum())
    genre_count = rng.integers(1, MAX_GENRES + 1, size=N_ITEMS + 2)
    genres = [list(rng.integers(2, 20, size=genre_count[i])) for i in range(N_ITEMS + 2)]
    os.makedirs(folder)
    for f, part in enumerate(np.array_split(np.arange(rows), files)):
        u, i = users[part], items[part]
        table = pa.table({
            "user_idx": pa.array(u, pa.int32()), "user_gender": pa.array(u % 3 + 1, pa.int32()),
            "user_age": pa.array((u % 50) / 50.0, pa.float32()), "item_idx": pa.array(i, pa.int32()),
            "item_genres": pa.array([genres[k] for k in i], pa.list_(pa.int32())),
            "item_year": pa.array((i % 30) / 30.0, pa.float32()), "item_id": pa.array(i, pa.int64()),
        })
        pq.write_table(table, os.path.join(folder, f"part-{f:05d}.parquet"))


def write_catalogue(folder: str) -> None:
    rng = np.random.default_rng(1)
    idx = np.arange(2, N_ITEMS + 2)
    os.makedirs(folder)
    pq.write_table(pa.table({
        "item_id": pa.array(idx, pa.int64()), "item_idx": pa.array(idx, pa.int32()),
        "item_genres": pa.array([list(rng.integers(2, 20, size=2)) for _ in idx], pa.list_(pa.int32())),
        "item_year": pa.array((idx % 30) / 30.0, pa.float32()),
    }), os.path.join(folder, "part-0.parquet"))


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def from_memory():
    """A ``make_dataset`` that reads the shard's batches of one pass through the real pipeline first and then
    serves them from memory (the same batches, no Parquet, no Python per batch)."""
    import models.data
    from models.tf_runtime import tf

    real = models.data.make_dataset

    def make_dataset(files, columns, batch_size, **kwargs):
        batches = list(real(files, columns, batch_size, **{**kwargs, "repeat": False}).as_numpy_iterator())
        stacked = {n: np.stack([b[n] for b in batches]) for n in batches[0]}
        return tf.data.Dataset.from_tensor_slices(stacked).repeat().prefetch(tf.data.AUTOTUNE)

    return make_dataset


def run_training(kind: str, data: str, out: str, workers: int, epochs: int, memory: bool = False) -> float:
    """examples/s of the last epoch of one training."""
    import models.train
    from models.launch import TrainJob, train
    from models.settings import LaunchSettings, TrainSettings

    job = TrainJob(kind, SPEC, Location(os.path.join(data, "examples")), Location(out),
                   settings=TrainSettings(epochs=epochs, batch_size=1024, seed=1),
                   model_params={"embedding_dim": 32}, item_features=Location(os.path.join(data, "items")))
    saved = models.train.make_dataset
    if memory:
        models.train.make_dataset = from_memory()
    try:
        result = train(job, LaunchSettings(workers=workers, worker_timeout_s=600), log=lambda _: None)
    finally:
        models.train.make_dataset = saved
    shutil.rmtree(out, ignore_errors=True)
    return result.history[-1]["examples_per_s"]


def pipeline_alone(data: str, passes: int = 3) -> tuple[float, float]:
    """The training input pipeline of ``SPEC`` (batch 1024) with nothing trained, read inside tf.data
    (``Dataset.reduce``, no Python per batch): (examples/s, CPU microseconds per example), best of ``passes``."""
    from models.data import input_columns, make_dataset, parquet_files
    from models.tf_runtime import tf

    files = parquet_files(Location(os.path.join(data, "examples")))
    dataset = make_dataset(files, input_columns(SPEC), 1024, seed=3, drop_remainder=True)
    rate, cpu = 0.0, float("inf")
    for _ in range(passes):
        wall, used = time.perf_counter(), time.process_time()
        rows = int(dataset.reduce(0, lambda n, batch: n + tf.shape(batch["user_idx"])[0]))
        rate = max(rate, rows / (time.perf_counter() - wall))
        cpu = min(cpu, (time.process_time() - used) / rows * 1e6)
    return rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: " + ", ".join(FAMILIES))
    parser.add_argument("--no-two-workers", action="store_true", help="skip the 2-worker runs")
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 20_000, 1
    work = tempfile.mkdtemp(prefix="nightrec-bench-training-")
    try:
        write_examples(os.path.join(work, "examples"), args.rows, files=8)
        write_catalogue(os.path.join(work, "items"))
        print(f"{args.rows:,} examples, batch 1024, {args.epochs} epochs per run, median of {args.repeats}; "
              f"{os.cpu_count()} cores; load {load()}")
        rate, cpu = pipeline_alone(work)
        print(f"input pipeline alone: {rate:,.0f} examples/s, {cpu:.2f} CPU us per example")
        print(f"{'family':<10} {'kind':<10} {'1 worker':>12} {'2 workers':>12} {'from memory':>12} {'input share':>12}")
        for family in args.families.split(","):
            kind = FAMILIES[family]

            def median(**kw):
                return statistics.median(run_training(kind, work, os.path.join(work, "out"), epochs=args.epochs, **kw)
                                         for _ in range(args.repeats))

            one = median(workers=1)
            memory = median(workers=1, memory=True)
            two = float("nan") if args.no_two_workers else median(workers=2)
            share = 1.0 - one / memory
            print(f"{family:<10} {kind:<10} {one:>12,.0f} {two:>12,.0f} {memory:>12,.0f} {share:>11.1%}", flush=True)
        print(f"load after: {load()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
