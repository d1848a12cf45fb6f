"""Benchmark of the feature stage on N synthetic ratings generated inside Spark.

    .venv/bin/python bench/features.py [--ratings 10000000] [--master local[2]] [--repeat 1]

Generates the ratings with ``jobs.synthetic.synthetic_ratings_spark`` and
writes them to Parquet (not timed), then runs the feature stage the way the
nightly flow does (fit on the window, write user_features, item_features and
the leakage-safe training examples) and prints its wall time, ratings/s and
the time of every sub-stage. A second, untimed run of the examples pass with
a no-op sink splits the examples time into the item pass, the user pass and
the Parquet write. Target: 10 million ratings in <= 60 s on local[2].
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.proc_cpu import tree_cpu_by_process  # noqa: E402
from jobs import features, schema, sources, synthetic  # noqa: E402
from jobs.features.examples import example_passes  # noqa: E402
from jobs.run_catalogue import RunCatalogue  # noqa: E402
from jobs.session import build_spark  # noqa: E402
from jobs.storage import Location  # noqa: E402


def _timed(timings: dict, name: str, fn):
    start = time.perf_counter()
    result = fn()
    timings[name] = time.perf_counter() - start
    return result


class Steps:
    """Wall and CPU seconds between calls (the ``on_step`` of ``FeatureFitter.fit_transform``)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, dict[str, float]] = {}
        self._wall, self._cpu = time.perf_counter(), tree_cpu_by_process()

    def __call__(self, name: str) -> None:
        wall, cpu = time.perf_counter(), tree_cpu_by_process()
        self.wall[name] = wall - self._wall
        self.cpu[name] = {kind: cpu[kind] - self._cpu[kind] for kind in cpu}
        self._wall, self._cpu = wall, cpu


def _source(spark, source: RunCatalogue):
    return tuple(source.dataset(f"raw.{name}").load(spark) for name in ("interactions", "users", "items"))


def _feature_stage(spark, source: RunCatalogue, out: RunCatalogue, as_of: dt.datetime, steps: Steps):
    train, users, items = _source(spark, source)
    fitter = features.FeatureFitter(schema.MOVIELENS_USER_FEATURES, schema.MOVIELENS_ITEM_FEATURES)
    fitted = fitter.fit_transform(train, users, items, as_of=as_of, on_step=steps)
    features.write_feature_table(fitted.user_features, out.dataset("eval.user_features").location)
    steps("write user_features")
    features.write_feature_table(fitted.item_features, out.dataset("eval.item_features").location)
    steps("write item_features")
    rows = features.write_training_examples(train, users, items, fitted.state, out.dataset("eval.examples").location,
                                            tables=fitted)
    steps("examples (item pass + user pass + write)")
    fitted.release()
    return rows, fitted


def _examples_breakdown(spark, source: RunCatalogue, fitted) -> dict:
    """Untimed diagnosis: the examples passes with a no-op sink (no Parquet write)."""
    state = fitted.state
    train, users, items = _source(spark, source)
    shuffled, _, _ = example_passes(train, users, items, state, features.FeatureSettings.rows_per_partition, fitted)
    timings = {}
    _timed(timings, "item pass only (noop sink)", lambda: shuffled.write.format("noop").mode("overwrite").save())
    examples = features.training_examples(train, users, items, state, tables=fitted)
    _timed(timings, "item + user pass (noop sink)", lambda: examples.write.format("noop").mode("overwrite").save())
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=10_000_000, help="number of synthetic ratings (about)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of the feature stage in one session; the last is reported (the first pays the JVM warm-up)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the untimed examples breakdown")
    parser.add_argument("--source", help="reuse the raw tables an earlier run wrote and kept (--keep) in this folder")
    parser.add_argument("--keep", help="write the generated raw tables (a run catalogue) to this folder and keep them")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Spark setting for the session (repeatable), to compare settings")
    args = parser.parse_args(argv)

    scratch = tempfile.mkdtemp(prefix="nightrec-bench-features-")
    spark = build_spark(master=args.master, driver_memory=args.driver_memory, shuffle_partitions=8,
                        local_dir=os.path.join(scratch, "spark"), conf=dict(c.split("=", 1) for c in args.conf))
    per_user = 40.0
    spec = synthetic.SyntheticSpec(
        n_users=max(10, round(args.ratings / per_user)), n_items=max(100, min(20_000, args.ratings // 500)),
        ratings_per_user=per_user, days=365, end_date=dt.date(2024, 6, 30), seed=7,
    )
    # The generated tables and each run's output are datasets of run catalogues, as in a nightly run.
    source = RunCatalogue(Location(args.source or args.keep or os.path.join(scratch, "source")), spec.end_date, "bench")
    start = time.perf_counter()
    if not args.source:
        tables = sources.load_synthetic(spark, spec, in_spark=True)
        for name in ("interactions", "users", "items"):
            source.dataset(f"raw.{name}").save(getattr(tables, name))
    n = source.dataset("raw.interactions").load(spark).count()
    print(f"{'read' if args.source else 'generated'} {n:,} ratings in {time.perf_counter() - start:.1f}s (not timed); "
          f"master {args.master}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    as_of = dt.datetime.combine(spec.end_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)

    walls, runs = [], []
    for run in range(args.repeat):
        out = RunCatalogue(Location(scratch), spec.end_date, f"run{run}")
        start = time.perf_counter()
        steps = Steps()
        rows, fitted = _feature_stage(spark, source, out, as_of, steps)
        walls.append(time.perf_counter() - start)
        runs.append(steps)
        print(f"run {run + 1}: feature stage {walls[-1]:.1f}s, {rows:,} examples, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    wall = walls[-1]
    steps = runs[-1]
    cpu = sum(sum(kinds.values()) for kinds in steps.cpu.values())
    cores = int(args.master[len("local["):-1]) if args.master[len("local["):-1].isdigit() else os.cpu_count()
    spec_cols = fitted.state.model_spec()
    n_cont = len(spec_cols["user"]["continuous"]) + len(spec_cols["item"]["continuous"])
    print(f"\nfeature stage on {n:,} ratings, {args.master}: {wall:.1f}s wall (run {len(walls)} of {len(walls)}), "
          f"{n / wall:,.0f} ratings/s; target 10M in <= 60 s (= {10_000_000 / 60:,.0f} ratings/s)")
    print(f"CPU used by the driver, the JVM and the Python workers: {cpu:.1f}s; on {cores} otherwise idle cores "
          f"that is at least {cpu / cores:.1f}s wall ({n / (cpu / cores):,.0f} ratings/s at full use)")
    print(f"examples: {rows:,} rows x {n_cont} continuous + ids/categoricals")
    print(f"sub-stages:{'wall s':>37}{'share':>8}{'CPU s':>9}{'JVM':>7}{'Python':>8}{'driver':>8}")
    for name, seconds in sorted(steps.wall.items(), key=lambda kv: -kv[1]):
        kinds = steps.cpu[name]
        print(f"  {name:<40} {seconds:7.1f}  {seconds / wall:6.1%}  {sum(kinds.values()):7.1f}{kinds['jvm']:7.1f}"
              f"{kinds['python workers']:8.1f}{kinds['driver']:8.1f}")
    if args.conf:
        print("extra Spark settings:", ", ".join(args.conf))
    if not args.no_breakdown:
        breakdown = _examples_breakdown(spark, source, fitted)
        total = steps.wall["examples (item pass + user pass + write)"]
        item_pass = breakdown["item pass only (noop sink)"]
        both = breakdown["item + user pass (noop sink)"]
        print("examples breakdown (separate untimed runs with a no-op sink):")
        print(f"  {'item pass (shuffle by item, prefix stats)':<44} {item_pass:7.1f}")
        print(f"  {'user pass (shuffle by user, prefix stats)':<44} {max(0.0, both - item_pass):7.1f}")
        print(f"  {'pyarrow Parquet write (by difference)':<44} {max(0.0, total - both):7.1f}")
    spark.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
