"""Launching a training: in this process, as N local worker processes, or as a barrier stage on Spark.

One entry point, ``train(job, launch)``, whatever runs it:

* one worker with launcher "local" (the default): ``models.train.train_model`` in this process;
* N workers with launcher "local": N processes on this machine
  (``LocalLauncher``), each given a ``TF_CONFIG`` naming every worker's
  localhost port, each running the training loop under
  ``tf.distribute.MultiWorkerMirroredStrategy``;
* launcher "spark": one worker per task of a barrier-mode Spark stage
  (``jobs.distributed.barrier_runner`` runs it; the caller passes it as
  ``barrier``, since ``models/`` does not import pyspark). Each task learns
  every task's host and port through ``BarrierTaskContext.allGather`` and
  starts its worker process with ``worker_task``, the picklable callable
  this module gives the stage.

Every worker is a fresh process (``python -m models.worker``):
MultiWorkerMirroredStrategy must be created before any other TensorFlow
operation of its process, which a long-lived process (the driver, a reused
Spark Python worker) cannot promise. Worker 0 is the chief: it alone writes
the model folder and publishes checkpoints; its ``TrainResult`` comes back,
with every worker's weight fingerprint (checked equal).

Failures surface: a worker that dies (an exception, an exit code, a signal)
fails the job with that worker's error; the local launcher stops the other
workers at once; under Spark each surviving worker fails by itself within
``worker_timeout_s`` (its collectives time out, or TensorFlow's peer health
check finds the dead worker), and the stage returns every worker's report.

This module imports no TensorFlow (Spark Python workers unpickle it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

from jobs.storage import Location
from models.settings import LaunchSettings, TrainResult, TrainSettings

#: Prefix of the lines a worker process prints for the launcher to pass on (its training log).
LOG_PREFIX = "nightrec-train-log: "
#: How many characters of a failed worker's output its error message quotes.
_TAIL_CHARS = 3000
#: Seconds between two looks at the worker processes.
_POLL_S = 0.1

#: A barrier stage: ``(task, workers) -> one report per worker, by task index``, where
#: ``task(index, endpoints, cpus) -> report`` runs inside the stage's task ``index`` (``jobs.distributed``).
BarrierRunner = Callable[[Callable[[int, list[str], int], str], int], list[str]]


class WorkerFailed(RuntimeError):
    """A training worker died or failed; the message names it and quotes its error."""


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One training, as ``models.train.train_model`` takes it (picklable: worker processes receive it).

    Attributes:
        kind: a name in ``models.kinds.KINDS``.
        spec: the model input spec of the feature stage.
        examples: Parquet training examples.
        out_dir: the model folder (written by the chief only).
        settings: objective, loss and optimisation settings (``batch_size`` is the global batch).
        model_params: the kind's hyper-parameters.
        item_features, holdout, ranking_holdout, holdout_catalogue, feature_state_json, user_history: as
            in ``train_model``.
        checkpoint_dir: the training's checkpoint folder (None: no checkpoints, no resuming). It must
            be reachable by every worker (on a cluster: HDFS, an object store, a shared disk).
    """

    kind: str
    spec: Mapping
    examples: Location
    out_dir: Location
    settings: TrainSettings = TrainSettings()
    model_params: Mapping | None = None
    item_features: Location | None = None
    holdout: Location | None = None
    ranking_holdout: Location | None = None
    holdout_catalogue: Location | None = None
    feature_state_json: str | None = None
    user_history: Location | None = None
    checkpoint_dir: Location | None = None

    def run(self, *, strategy=None, checkpoint_every_steps: int = 0,
            log: Callable[[str], None] = print) -> TrainResult:
        """Train in this process (under ``strategy``, default the current one)."""
        from models.train import train_model

        return train_model(
            self.kind, self.spec, self.examples, self.out_dir, settings=self.settings,
            model_params=self.model_params, item_features=self.item_features, holdout=self.holdout,
            ranking_holdout=self.ranking_holdout, holdout_catalogue=self.holdout_catalogue, feature_state_json=self.feature_state_json,
            user_history=self.user_history, strategy=strategy, checkpoint_dir=self.checkpoint_dir,
            checkpoint_every_steps=checkpoint_every_steps, log=log,
        )


def train(job: TrainJob, launch: LaunchSettings = LaunchSettings(), *, barrier: BarrierRunner | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train ``job`` the way ``launch`` says; the one call the nightly flow makes per model.

    Args:
        job: the training.
        launch: workers, launcher, checkpoint cadence and worker timeout (``training:`` of the config).
        barrier: for launcher "spark", the cluster's barrier stage runner
            (``jobs.distributed.barrier_runner(spark)``); ignored otherwise.
        log: receives the chief's progress lines.

    Returns:
        The chief's TrainResult (``workers``, ``resumed_from_step``, ``steps_run`` and every worker's
        ``weight_fingerprints`` filled in).

    Raises:
        WorkerFailed: a worker died or raised; the message names it and quotes its error.
    """
    if launch.in_process:
        return job.run(checkpoint_every_steps=launch.checkpoint_every_steps, log=log)
    if launch.launcher == "local":
        return LocalLauncher(launch).run(job, log=log)
    if barrier is None:
        raise ValueError("training.launcher is spark but no barrier stage runner was given; pass "
                         "barrier=jobs.distributed.barrier_runner(spark) (the session on the cluster)")
    reports = [json.loads(report) for report in barrier(functools.partial(worker_task, job, launch), launch.workers)]
    for line in reports[0].get("log", []):
        log(line)
    return _combine(reports)


def worker_task(job: TrainJob, launch: LaunchSettings, index: int, endpoints: Sequence[str],
                threads: int | None = None) -> str:
    """Run worker ``index`` of ``endpoints`` to its end in a fresh process; its report as JSON text.

    The body of each barrier task of the Spark launcher (it never raises: a failed worker's report
    carries its error, so the stage returns every worker's report and is not retried).

    Args:
        job: the training.
        launch: the launch settings (``worker_timeout_s``).
        index: this worker's task index (0: the chief).
        endpoints: ``host:port`` of every worker, by task index.
        threads: TensorFlow threads of the worker (default: TensorFlow's choice).

    Returns:
        JSON: {"ok": true, "result": TrainResult JSON, "log": [lines]} or {"ok": false, "error": message}.
    """
    with _scratch() as scratch:
        worker = WorkerProcess(job, launch, list(endpoints), index, scratch, threads=threads)
        try:
            while worker.poll() is None:
                time.sleep(_POLL_S)
        finally:
            worker.kill()
        if worker.poll() != 0:
            return json.dumps({"ok": False, "error": worker.failure()})
        return json.dumps({"ok": True, "result": worker.result(), "log": worker.log_lines()})


class LocalLauncher:
    """``launch.workers`` training processes on this machine, on free localhost ports.

    Attributes:
        processes: the running workers' ``subprocess.Popen``s, by task index (empty before ``run``
            starts them), e.g. to watch or stop one from another thread.
    """

    def __init__(self, launch: LaunchSettings):
        self.launch = launch
        self.processes: list[subprocess.Popen] = []

    def run(self, job: TrainJob, log: Callable[[str], None] = print) -> TrainResult:
        """Start every worker, pass the chief's log on, and return its result when all have finished.

        Raises:
            WorkerFailed: a worker exited with an error, an exit code or a signal (the others are
                stopped), or the others did not finish within ``worker_timeout_s`` of one finishing.
        """
        n = self.launch.workers
        threads = max(1, (os.cpu_count() or 1) // n)
        workers: list[WorkerProcess] = []
        self.processes = []
        with _scratch() as scratch:
            endpoints = [f"127.0.0.1:{port}" for port in free_ports(n)]
            try:
                for i in range(n):
                    workers.append(WorkerProcess(job, self.launch, endpoints, i, os.path.join(scratch, f"worker-{i}"),
                                                 threads=threads))
                    self.processes.append(workers[-1].process)
                first_done = None
                while True:
                    for line in workers[0].new_log_lines():
                        log(line)
                    codes = [w.poll() for w in workers]
                    failed = [w for w, code in zip(workers, codes) if code not in (None, 0)]
                    if failed:
                        raise WorkerFailed(_failure_message([w.failure() for w in failed], n, others_stopped=True))
                    if all(code == 0 for code in codes):
                        break
                    if first_done is None and any(code == 0 for code in codes):
                        first_done = time.monotonic()
                    if first_done is not None and time.monotonic() - first_done > self.launch.worker_timeout_s:
                        late = [str(w.index) for w, code in zip(workers, codes) if code is None]
                        raise WorkerFailed(
                            f"training workers {', '.join(late)} of {n} had not finished "
                            f"{self.launch.worker_timeout_s:g} s after another worker finished (a hung worker?); "
                            "they were stopped. Raise training.worker_timeout_s if they were only slow")
                    time.sleep(_POLL_S)
                for line in workers[0].new_log_lines():   # what the chief printed after the last look
                    log(line)
            finally:
                for w in workers:
                    w.kill()
            return _combine([{"ok": True, "result": w.result()} for w in workers])


class WorkerProcess:
    """One training worker: ``python -m models.worker`` with its ``TF_CONFIG``, output in ``folder``.

    Args:
        job: the training (pickled into ``folder`` for the process).
        launch: the launch settings.
        endpoints: ``host:port`` of every worker, by task index.
        index: this worker's task index (0: the chief).
        folder: a local scratch folder of this worker (job, output, result, error).
        threads: TensorFlow intra-op threads (default: TensorFlow's choice).
    """

    def __init__(self, job: TrainJob, launch: LaunchSettings, endpoints: list[str], index: int, folder: str, *,
                 threads: int | None = None):
        self.index = index
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "job.pkl"), "wb") as handle:
            pickle.dump((job, launch), handle)
        env = {**os.environ,
               "TF_CONFIG": json.dumps({"cluster": {"worker": endpoints}, "task": {"type": "worker", "index": index}}),
               # the worker imports what this process imports (a work tree, Spark's shipped files, an archive)
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        if threads:
            env["TF_NUM_INTRAOP_THREADS"] = str(threads)
            env["TF_NUM_INTEROP_THREADS"] = str(min(2, threads))
        self._output = open(os.path.join(folder, "output.txt"), "w+b")
        self._read = 0
        self._pending = b""
        self.process = subprocess.Popen([sys.executable, "-m", "models.worker", folder], stdout=self._output,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def poll(self) -> int | None:
        """The exit code (negative: the signal that ended it), or None while it runs."""
        return self.process.poll()

    def kill(self) -> None:
        """Stop the worker (and anything it started) if it still runs."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._output.close()

    def new_log_lines(self) -> list[str]:
        """The training log lines the worker printed since the last call."""
        with open(self._output.name, "rb") as handle:
            handle.seek(self._read)
            chunk = handle.read()
        self._read += len(chunk)
        data = self._pending + chunk
        complete, _, self._pending = data.rpartition(b"\n")
        return [line[len(LOG_PREFIX):] for line in complete.decode("utf-8", "replace").splitlines()
                if line.startswith(LOG_PREFIX)]

    def log_lines(self) -> list[str]:
        """Every training log line the worker printed."""
        self._read, self._pending = 0, b""
        return self.new_log_lines()

    def result(self) -> dict:
        """The TrainResult JSON the worker wrote when it finished."""
        with open(os.path.join(self.folder, "result.json")) as handle:
            return json.load(handle)

    def failure(self) -> str:
        """What ended the worker: its exception, or its exit code or signal and its last output."""
        code = self.process.poll()
        error_file = os.path.join(self.folder, "error.txt")
        if os.path.exists(error_file):
            with open(error_file) as handle:
                return f"worker {self.index} raised {_exception_of(handle.read())}"
        if code is not None and code < 0:
            how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
        else:
            how = f"exited with code {code}"
        with open(self._output.name, "rb") as handle:
            tail = handle.read().decode("utf-8", "replace")[-_TAIL_CHARS:].rstrip()
        return f"worker {self.index} (pid {self.process.pid}) {how}" + (f"; its last output:\n{tail}" if tail else "")


def _exception_of(traceback_text: str) -> str:
    """The exception of a formatted traceback (its type and message, after the last frame), shortened."""
    lines = traceback_text.rstrip().splitlines()
    start = 0
    for i in range(1, len(lines)):
        if lines[i] and not lines[i][0].isspace() and lines[i - 1][:1].isspace():
            start = i                                   # the first unindented line after a frame
    text = "\n".join(lines[start:]).strip()
    return text if len(text) <= _TAIL_CHARS else text[:_TAIL_CHARS] + " …"


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now (held together while chosen, so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def _scratch():
    folder = tempfile.mkdtemp(prefix="nightrec-workers-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _failure_message(errors: list[str], n: int, *, others_stopped: bool = False) -> str:
    stopped = " The other workers were stopped." if others_stopped else ""
    return (f"training failed: {len(errors)} of {n} workers failed.{stopped} Run again to resume from the last "
            "checkpoint (when the training has a checkpoint folder).\n" + "\n".join(errors))


def _combine(reports: list[dict]) -> TrainResult:
    """The chief's TrainResult with every worker's fingerprint; WorkerFailed when any report failed."""
    n = len(reports)
    failed = [r for r in reports if not r["ok"]]
    if failed:
        # the workers that died first come first: those ended by a signal or an exit code, then the
        # survivors whose collectives found them gone
        failed.sort(key=lambda r: " raised " in r["error"])
        raise WorkerFailed(_failure_message([r["error"] for r in failed], n))
    results = [TrainResult.from_json(r["result"]) for r in reports]
    prints = tuple(fp for r in results for fp in r.weight_fingerprints)
    if len(set(prints)) != 1:
        raise WorkerFailed(f"the {n} training workers ended with different weights (fingerprints "
                           f"{', '.join(p[:12] for p in prints)}); synchronous training must keep them equal, "
                           "so the job is broken: report it with the workers' logs")
    return dataclasses.replace(results[0], workers=n, weight_fingerprints=prints)
