"""Process-wide resources of flows: the SparkSession, progress lines, retries and the test pause points."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time

from prefect import get_run_logger
from pyspark.sql import SparkSession

from flows.config import NightrecConfig
from jobs.session import build_spark
from jobs.storage import Location

#: Environment variable of the fault tests: the name of a step at which a run stops and waits to be killed.
PAUSE_AT = "NIGHTREC_PAUSE_AT"

_SESSION: SparkSession | None = None
_SESSION_LOCK = threading.Lock()


def spark_for(cfg: NightrecConfig) -> SparkSession:
    """The SparkSession for this config (built on first use, then reused by every thread of the process).

    On a local warehouse Spark's shuffle and checkpoint scratch lives under
    ``<warehouse>/_work/spark``; elsewhere Spark's own defaults apply.
    """
    global _SESSION
    with _SESSION_LOCK:
        active = SparkSession.getActiveSession() or _SESSION
        if active is not None and active.sparkContext._jsc is not None:
            _SESSION = active
            return active
        local = Location(cfg.warehouse).local_path
        scratch = os.path.join(local, "_work", "spark") if local else None
        _SESSION = build_spark(
            **cfg.spark.model_dump(),
            local_dir=os.path.join(scratch, "local") if scratch else None,
            checkpoint_dir=os.path.join(scratch, "checkpoints") if scratch else None,
        )
        return _SESSION


def log(message: str) -> None:
    """A progress line: to the Prefect run's log inside a flow or task run, else to stdout."""
    try:
        get_run_logger().info(message)
    except Exception:  # outside a flow/task run
        print(message, flush=True)


def pause_point(step: str) -> None:
    """Stop here and wait to be killed when the fault tests ask for this step (``NIGHTREC_PAUSE_AT``).

    The test waits for the "nightrec: paused at …" line, then kills the run's process group.
    """
    if os.environ.get(PAUSE_AT) == step:
        print(f"nightrec: paused at {step}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


#: errno values of storage failures worth retrying (a busy or unreachable file system).
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE, errno.EIO}


def is_transient(exc: BaseException) -> bool:
    """True for failures of storage or the network that a retry may not meet again.

    Connection and timeout errors and OSErrors of the errnos above are; missing files, permissions,
    bad input (ValueError and its kin: source, schema, config and validation errors) are not.
    """
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    return type(exc).__name__ in ("Py4JNetworkError",)


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a task only when it failed with a transient error."""
    try:
        state.result(raise_on_failure=True)
    except Exception as exc:  # the task's own exception
        return is_transient(exc)
    return False


def with_retries(task, cfg: NightrecConfig):
    """``task`` retried ``run.retries`` times on transient failures, with the configured backoff."""
    return task.with_options(retries=cfg.run.retries, retry_delay_seconds=list(cfg.run.retry_delays_s),
                             retry_condition_fn=retry_transient)


class progress:
    """Logs a step's start and elapsed time, and every ``every_s`` while it runs, Spark's task progress with an
    estimate of the time left (from the rate at which the running stages' tasks finish).

    Use as ``with progress("features[eval]", spark): ...``.
    """

    def __init__(self, step: str, spark: SparkSession | None = None, every_s: float = 30.0):
        self.step, self.spark, self.every_s = step, spark, every_s
        self._stop = threading.Event()

    def _line(self, message: str) -> None:
        self._logger.info(message) if self._logger is not None else print(message, flush=True)

    def _status(self) -> str:
        if self.spark is None:
            return ""
        tracker = self.spark.sparkContext.statusTracker()
        done = total = 0
        for stage_id in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage_id)
            if info is not None:
                done += info.numCompletedTasks
                total += info.numTasks
        if not total:
            return ""
        elapsed = time.perf_counter() - self._started
        left = f", about {elapsed * (total - done) / done:.0f}s left in the running stages" if done else ""
        return f"; Spark tasks {done}/{total}{left}"

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self._line(f"{self.step}: running for {time.perf_counter() - self._started:.0f}s{self._status()}")

    def __enter__(self) -> "progress":
        try:
            self._logger = get_run_logger()
        except Exception:
            self._logger = None
        self._started = time.perf_counter()
        self._line(f"{self.step}: started")
        self._thread = threading.Thread(target=self._watch, name=f"progress {self.step}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._stop.set()
        self._thread.join()
        seconds = time.perf_counter() - self._started
        self._line(f"{self.step}: {'failed after' if kind else 'done in'} {seconds:.1f}s")


def tracked(fn):
    """Task decorator: the task's run inside ``progress`` (start, elapsed, Spark progress every 30 s), labelled
    by the task and the model and window it works on, e.g. ``score[two_tower]``."""
    import functools
    import inspect

    signature = inspect.signature(fn)
    name = fn.__name__.removesuffix("_task")

    @functools.wraps(fn)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        subjects = []
        for key in ("model_cfg", "trained", "fitted", "window"):
            value = bound.get(key)
            label = value if isinstance(value, str) else getattr(value, "name", None)
            if label and label not in subjects:
                subjects.append(label)
        with progress(f"{name}[{'/'.join(subjects)}]" if subjects else name, spark_for(bound["cfg"])):
            return fn(*args, **kwargs)

    return run
