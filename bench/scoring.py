"""Exhaustive top-K scoring: nightrec's job beside Spark ALS and the NumPy floor, in one process.

    .venv/bin/python bench/scoring.py                 # U=50,000 I=20,000 d=64 K=10, local[2]
    .venv/bin/python bench/scoring.py --quick         # a small smoke run
    .venv/bin/python bench/scoring.py --ann-only      # only (f): ann beside exact at I=20,000 and 1,000,000

(a) nightrec: ``jobs.scoring.top_k_for_users`` from embedding Parquet files to
    written recommendation Parquet (item matrix collected and broadcast, users
    scored in blocks, exact top-K). Also with 20 seen items per user excluded,
    and at 4x the users (cost should grow linearly).
(b) Spark MLlib ``ALSModel.recommendForAllUsers(K)`` at the same sizes and
    rank, written to Parquet the same way.
(c) the floor: a single-process NumPy float32 matrix product of the same
    size (all cores, no selection, nothing written).
(d) the top-K selection alone on one [256, items] score block, one thread:
    nightrec's two-level selection beside np.argpartition and tf.math.top_k.
(e) the real Keras DeepFM of ``models/`` (random weights; user id, gender,
    occupation, age; item id, genres, year) scored exhaustively the way the
    nightly run scores it (``models.model_scoring.recommend``: each side's parts
    once, then only the pair part per pair), beside calling the plain model
    on every (user, item) row for a slice of the users.
(f) ann: ``jobs.ann.AnnScorer`` (FAISS IVF candidates, exact re-score, seen
    items excluded, exhaustive fallback) beside ``jobs.scoring.BlockScorer``
    (exact), both one thread as inside one Spark task, ns per user and
    recall@K of ann against exact, on clustered synthetic embeddings at
    ``--items`` and at ``--ann-large-items`` items; the index build (once a
    night, on the driver) is timed apart.

Figures are medians of ``--repeats`` timed runs after one warm-up run (Python
workers started, JIT warm). The machine may be shared: the load average is
printed before and after, and beside each wall time the CPU time of this
process tree (driver, Spark JVM, Python workers) per pair, which other
people's processes inflate much less than they inflate wall time.
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
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # (d) imports TensorFlow

from bench.proc_cpu import tree_cpu_seconds  # noqa: E402
from jobs import embeddings, scoring  # noqa: E402
from jobs.storage import Location  # noqa: E402
from jobs.session import build_spark  # noqa: E402

SEEN_PER_USER = 20


def write_embeddings(path: str, id_col: str, matrix: np.ndarray, files: int) -> None:
    """[n, d] -> Parquet folder of ``files`` files: id_col bigint (0..n-1), embedding list<float>."""
    os.makedirs(path)
    n, d = matrix.shape
    for f, rows in enumerate(np.array_split(np.arange(n), files)):
        lists = pa.FixedSizeListArray.from_arrays(pa.array(matrix[rows].reshape(-1)), d)
        table = pa.table({id_col: pa.array(rows, pa.int64()), "embedding": lists.cast(pa.list_(pa.float32()))})
        pq.write_table(table, os.path.join(path, f"part-{f:03d}.parquet"))


def write_seen(path: str, n_users: int, n_items: int, rng: np.random.Generator) -> None:
    """SEEN_PER_USER distinct random items per user -> Parquet folder [user_id, item_id]."""
    os.makedirs(path)
    users = np.repeat(np.arange(n_users, dtype=np.int64), SEEN_PER_USER)
    items = (rng.integers(0, n_items, size=(n_users, 1)) + np.arange(SEEN_PER_USER) * 7) % n_items
    pq.write_table(pa.table({"user_id": users, "item_id": items.reshape(-1).astype(np.int64)}),
                   os.path.join(path, "part-000.parquet"))


def timed(run, repeats: int) -> tuple[float, list[float], float]:
    """One warm-up call, then ``repeats`` timed calls.

    Returns:
        (median wall seconds, every wall time, median CPU seconds of the process tree).
    """
    run()
    times, cpus = [], []
    for _ in range(repeats):
        cpu = tree_cpu_seconds()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        cpus.append(tree_cpu_seconds() - cpu)
    return statistics.median(times), times, statistics.median(cpus)


def nightrec_job(spark, users_path: str, items_path: str, out: str, k: int, seen_path: str | None) -> None:
    """Embeddings on disk -> top-K recommendations on disk."""
    from pyspark.sql import functions as F

    item_ids, item_matrix = embeddings.load_embeddings(Location(items_path), "item_id")
    users = embeddings.read_embeddings(spark, Location(users_path), "user_id").withColumn("source", F.lit("model"))
    partitions = None
    if seen_path:
        catalogue = scoring.catalogue_frame(spark, item_ids)
        seen = scoring.seen_positions(spark.read.parquet(seen_path), catalogue)
        users = users.join(seen, on="user_id", how="left")
        partitions = 2 * spark.sparkContext.defaultParallelism  # as the nightly flow does
    else:
        users = users.withColumn("seen_pos", F.lit(None).cast("array<int>"))
    recs = scoring.top_k_for_users(users, item_ids, item_matrix, k=k, partitions=partitions)
    recs.write.mode("overwrite").parquet(out)


def als_model(spark, n_users: int, n_items: int, rank: int, seed: int):
    """An ALSModel with ``n_users`` x ``n_items`` factors of width ``rank`` (one cheap iteration)."""
    from pyspark.ml.recommendation import ALS

    users = np.arange(n_users)
    ratings = pa.table({
        "user": pa.array(np.concatenate([users, np.arange(n_items) % n_users]), pa.int32()),
        "item": pa.array(np.concatenate([users % n_items, np.arange(n_items)]), pa.int32()),
        "rating": pa.array(np.ones(n_users + n_items), pa.float32()),
    })
    frame = spark.createDataFrame(ratings.to_pandas())
    als = ALS(rank=rank, maxIter=1, regParam=0.1, userCol="user", itemCol="item", ratingCol="rating", seed=seed)
    model = als.fit(frame)
    assert model.userFactors.count() == n_users and model.itemFactors.count() == n_items
    return model


def floor_matmul(users: np.ndarray, items: np.ndarray, block: int = 4096) -> None:
    """users @ items.T block by block (the full [U, I] matrix would take U*I*4 bytes)."""
    out = np.empty((block, items.shape[0]), np.float32)
    items_t = np.ascontiguousarray(items.T)
    for start in range(0, users.shape[0], block):
        part = users[start : start + block]
        np.matmul(part, items_t, out=out[: part.shape[0]])


def selection_figures(rng: np.random.Generator, n_items: int, dim: int, k: int, repeats: int) -> str:
    """ns per score of three exact top-k selections on one [256, n_items] block, one thread."""
    import tensorflow as tf

    from jobs import topk

    tf_name = "tf.math.top_k"
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:  # (e) started TensorFlow already, with its own thread pool
        tf_name = "tf.math.top_k (TF's thread pool, all cores)"
    rows = 256
    width = topk.padded_width(n_items)
    scores = np.full((rows, width), -np.inf, np.float32)
    scores[:, :n_items] = rng.standard_normal((rows, dim), dtype=np.float32) @ rng.standard_normal(
        (n_items, dim), dtype=np.float32).T
    candidates = {
        "two-level (nightrec)": lambda: topk.select_top_k(scores, k),
        "np.argpartition": lambda: np.argpartition(-scores, k - 1, axis=1),
        tf_name: lambda: tf.math.top_k(scores, k),
    }
    figures = []
    with threadpool_limits(limits=1, user_api="blas"):
        for name, run in candidates.items():
            seconds, _, _ = timed(run, max(repeats, 5))
            figures.append(f"{name} {seconds / (rows * width) * 1e9:.2f}")
    return ", ".join(figures)


def keras_deepfm_figures(n_users: int, n_items: int, k: int, repeats: int) -> str:
    """(e): ns/pair of the real DeepFM, decomposed exhaustive top-k vs the plain model on aligned pairs."""
    import tensorflow as tf

    from models.catalogue import SideTable
    from models.registry import build_model
    from models.model_scoring import recommend

    rng = np.random.default_rng(5)
    spec = {
        "user": {"id": {"name": "user_idx", "vocab_size": n_users + 2},
                 "categorical": [{"name": "user_gender", "vocab_size": 4},
                                 {"name": "user_occupation", "vocab_size": 23}],
                 "multi_categorical": [], "continuous": ["user_age"]},
        "item": {"id": {"name": "item_idx", "vocab_size": n_items + 2}, "categorical": [],
                 "multi_categorical": [{"name": "item_genres", "vocab_size": 20, "max_len": 3}],
                 "continuous": ["item_year"]},
    }
    users = {"user_idx": np.arange(2, n_users + 2, dtype=np.int32),
             "user_gender": rng.integers(2, 4, n_users).astype(np.int32),
             "user_occupation": rng.integers(2, 23, n_users).astype(np.int32),
             "user_age": rng.standard_normal(n_users).astype(np.float32)}
    genres = rng.integers(2, 20, (n_items, 3)).astype(np.int32)
    genres[:, 1:][rng.random((n_items, 2)) < 0.5] = -1
    items = {"item_idx": np.arange(2, n_items + 2, dtype=np.int32), "item_genres": genres,
             "item_year": rng.standard_normal(n_items).astype(np.float32)}
    model = build_model("deepfm", spec, embedding_dim=16, deep_layers=[64, 32])

    def aligned(user_rows: np.ndarray) -> dict:
        rows = {c: np.repeat(v[user_rows], n_items, axis=0) for c, v in users.items()}
        rows.update({c: np.tile(v, (len(user_rows),) + (1,) * (v.ndim - 1)) for c, v in items.items()})
        return rows

    model(aligned(np.arange(2)))
    model.set_weights([rng.normal(scale=0.1, size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                       for w in model.get_weights()])
    user_table = SideTable(ids=pa.array(np.arange(n_users)), columns=users)
    catalogue = SideTable(ids=pa.array(np.arange(n_items)), columns=items)
    none_seen = [np.zeros(0, np.int64)] * n_users
    fast, _, _ = timed(lambda: recommend(model, user_table, catalogue, none_seen, k), repeats)
    sliced = max(1, n_users // 20)
    plain_fn = tf.function(lambda rows: model(rows), reduce_retracing=True)

    def plain():
        for start in range(0, sliced, 8):
            plain_fn({c: tf.constant(v) for c, v in aligned(np.arange(start, min(start + 8, sliced))).items()})

    slow, _, _ = timed(plain, repeats)
    fast_ns, slow_ns = fast / (n_users * n_items) * 1e9, slow / (sliced * n_items) * 1e9
    return (f"{model.pair_flops():,} FLOPs/pair in the pair part; "
            f"{fast_ns:.1f} ns/pair decomposed with top-{k} (U={n_users:,} I={n_items:,}); plain model on every "
            f"(user, item) row, no selection: {slow_ns:.1f} ns/pair ({sliced:,} users); {slow_ns / fast_ns:.1f}x")


def clustered_embeddings(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray) -> np.ndarray:
    """[n, dim] float32 vectors around random ``centres`` (real embeddings cluster; pure noise has no neighbours)."""
    picked = centres[rng.integers(0, len(centres), n)]
    return (picked + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)).astype(np.float32)


def ann_figures(rng: np.random.Generator, n_users: int, n_items: int, dim: int, k: int, repeats: int,
                settings) -> str:
    """(f): ns/user of ann and exact on one thread, recall@k of ann vs exact, the index build time."""
    from jobs import ann

    centres = rng.standard_normal((256, dim), dtype=np.float32)
    items = clustered_embeddings(rng, n_items, dim, centres)
    users = clustered_embeddings(rng, n_users, dim, centres)
    seen = (rng.integers(0, n_items, size=(n_users, 1)) + np.arange(SEEN_PER_USER) * 7) % n_items
    start = time.perf_counter()
    index = ann.build_index(items, settings)
    build = time.perf_counter() - start
    exact_scorer = scoring.BlockScorer(items, k, block_rows=scoring.DEFAULT_BLOCK_ROWS)
    ann_scorer = ann.AnnScorer(index, items, k, settings, block_rows=scoring.DEFAULT_BLOCK_ROWS)
    blocks = [(users[lo:lo + 128], np.arange(0, SEEN_PER_USER * (min(lo + 128, n_users) - lo) + 1, SEEN_PER_USER),
               seen[lo:lo + 128].reshape(-1)) for lo in range(0, n_users, 128)]

    def run(scorer):
        return [scorer.top_k(*block) for block in blocks]

    faiss = ann._faiss()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        e_sec, _, _ = timed(lambda: run(exact_scorer), repeats)
        a_sec, _, _ = timed(lambda: run(ann_scorer), repeats)
        exact_lists, ann_lists = run(exact_scorer), run(ann_scorer)
    hits = 0
    for (er, ep, _), (ar, ap, _) in zip(exact_lists, ann_lists):
        hits += len(set(zip(er.tolist(), ep.tolist())) & set(zip(ar.tolist(), ap.tolist())))
    recall = hits / (n_users * k)
    per_call = ann_scorer.fallback_users / (repeats + 2)
    return (f"I={n_items:,}: exact {e_sec / n_users * 1e9:,.0f} ns/user, ann ({settings.index} nlist="
            f"{settings.cells(n_items)} nprobe={settings.nprobe}) {a_sec / n_users * 1e9:,.0f} ns/user = "
            f"{e_sec / a_sec:.1f}x faster, recall@{k} {recall:.4f}, exhaustive fallback for "
            f"{per_call / n_users:.2%} of users; index build {build:.1f} s ({settings.build_threads} threads)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--deepfm-users", type=int, default=2_000)
    parser.add_argument("--deepfm-items", type=int, default=5_000)
    parser.add_argument("--quick", action="store_true", help="U=5,000 I=2,000, one repeat")
    parser.add_argument("--ann-only", action="store_true", help="only (f), ann beside exact (no Spark)")
    parser.add_argument("--ann-users", type=int, default=None, help="users timed in (f) (default --users)")
    parser.add_argument("--ann-large-items", type=int, default=1_000_000)
    parser.add_argument("--ann-nprobe", type=int, default=32)
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.items, args.repeats, args.deepfm_users, args.deepfm_items = 5_000, 2_000, 1, 200, 1_000
    U, I, d, k = args.users, args.items, args.dim, args.k
    pairs = U * I
    rng = np.random.default_rng(0)
    from jobs.ann import AnnSettings

    ann_users = args.ann_users or U
    ann_settings = AnnSettings(index="ivf", nprobe=args.ann_nprobe, build_threads=os.cpu_count() or 1)
    if args.ann_only:
        print(f"ann       U={ann_users:,} d={d} K={k}, {SEEN_PER_USER} seen per user, one thread, median of "
              f"{args.repeats}; load average before {os.getloadavg()[0]:.2f}")
        for items in (I, args.ann_large_items):
            print(f"ann       {ann_figures(rng, ann_users, items, d, k, args.repeats, ann_settings)}")
        print(f"load average after {os.getloadavg()[0]:.2f}")
        return
    tmp = tempfile.mkdtemp(prefix="nightrec-bench-")
    load_before = os.getloadavg()
    try:
        user_emb = rng.standard_normal((4 * U, d), dtype=np.float32)
        item_emb = rng.standard_normal((I, d), dtype=np.float32)
        users_1x, users_4x, items_path, seen_path = (os.path.join(tmp, n) for n in ("users", "users4", "items", "seen"))
        write_embeddings(users_1x, "user_id", user_emb[:U], files=8)
        write_embeddings(users_4x, "user_id", user_emb, files=32)
        write_embeddings(items_path, "item_id", item_emb, files=1)
        write_seen(seen_path, U, I, rng)
        spark = build_spark(master=args.master, app_name="nightrec-bench-scoring", driver_memory="4g",
                            shuffle_partitions=8, local_dir=os.path.join(tmp, "spark"),
                            checkpoint_dir=os.path.join(tmp, "checkpoints"))
        print(f"sizes: U={U:,} I={I:,} d={d} K={k} ({pairs:,} pairs), master={args.master}, "
              f"median of {args.repeats} runs after a warm-up; load average before {load_before[0]:.2f}")

        out = os.path.join(tmp, "recs")
        a, a_runs, a_cpu = timed(lambda: nightrec_job(spark, users_1x, items_path, out, k, None), args.repeats)
        rows = spark.read.parquet(out).count()
        assert rows == U * k, f"nightrec wrote {rows} rows, expected {U * k}"
        a_ns = a / pairs * 1e9
        print(f"nightrec  scoring job, embeddings -> Parquet: {a_ns:.2f} ns/pair "
              f"({a:.2f} s; runs {', '.join(f'{t:.2f}' for t in a_runs)}; {a_cpu / pairs * 1e9:.2f} CPU-ns/pair)")

        s, _, s_cpu = timed(lambda: nightrec_job(spark, users_1x, items_path, out, k, seen_path), args.repeats)
        print(f"nightrec  same, {SEEN_PER_USER} seen items per user excluded (join + mask): {s / pairs * 1e9:.2f} ns/pair "
              f"({s:.2f} s; {s_cpu / pairs * 1e9:.2f} CPU-ns/pair)")

        a4, _, a4_cpu = timed(lambda: nightrec_job(spark, users_4x, items_path, out, k, None), args.repeats)
        print(f"nightrec  at 4x users (U={4 * U:,}): {a4 / (4 * pairs) * 1e9:.2f} ns/pair "
              f"({a4:.2f} s = {a4 / a:.2f}x the 1x time, CPU {a4_cpu / a_cpu:.2f}x; linear is 4.00x); "
              f"the extra 3x{pairs:,} pairs cost {(a4 - a) / (3 * pairs) * 1e9:.2f} ns/pair wall, "
              f"{(a4_cpu - a_cpu) / (3 * pairs) * 1e9:.2f} CPU-ns/pair")

        model = als_model(spark, U, I, d, seed=0)
        als_out = os.path.join(tmp, "als")
        b, b_runs, b_cpu = timed(lambda: model.recommendForAllUsers(k).write.mode("overwrite").parquet(als_out),
                          args.repeats)
        b_ns = b / pairs * 1e9
        print(f"ALS       recommendForAllUsers({k}) -> Parquet: {b_ns:.2f} ns/pair "
              f"({b:.2f} s; runs {', '.join(f'{t:.2f}' for t in b_runs)}; {b_cpu / pairs * 1e9:.2f} CPU-ns/pair)")
        spark.stop()

        c, _, c_cpu = timed(lambda: floor_matmul(user_emb[:U], item_emb), args.repeats)
        c_ns = c / pairs * 1e9
        print(f"floor     NumPy float32 matmul, one process, all cores, no selection: {c_ns:.2f} ns/pair ({c:.2f} s; {c_cpu / pairs * 1e9:.2f} CPU-ns/pair)")

        du, di = args.deepfm_users, args.deepfm_items
        print(f"deepfm    the Keras DeepFM of models/ (embedding 16, deep [64, 32]), all cores: "
              f"{keras_deepfm_figures(du, di, k, args.repeats)}")

        print(f"select    top-{k} of one [256, {I:,}] block, one thread, ns per score: "
              f"{selection_figures(rng, I, d, k, args.repeats)}")

        for items in (I, args.ann_large_items):
            print(f"ann       {ann_figures(rng, ann_users, items, d, k, args.repeats, ann_settings)}")

        print(f"ratios    ALS / nightrec = {b / a:.1f}x wall, {b_cpu / a_cpu:.1f}x CPU "
              f"(target >= 7x: {'met' if b / a >= 7 else 'MISSED'}); nightrec / floor = {a / c:.1f}x wall, "
              f"{a_cpu / c_cpu:.1f}x CPU; nightrec {a_ns:.2f} ns/pair (target <= 3: {'met' if a_ns <= 3 else 'MISSED'}); "
              f"4x users / 1x = {a4 / a:.2f}x")
        print(f"load average after {os.getloadavg()[0]:.2f} (other processes on the machine slow every figure)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
