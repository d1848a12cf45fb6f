"""One training worker process: ``python -m models.worker FOLDER`` (started by ``models.launch``).

``FOLDER/job.pkl`` holds the ``(TrainJob, LaunchSettings)``; ``TF_CONFIG`` in
the environment names every worker and this one's index. The process
creates ``tf.distribute.MultiWorkerMirroredStrategy`` first (before any other
TensorFlow operation, as the strategy requires), with ring all-reduce and
peer health checks that find a dead peer within about ``worker_timeout_s``,
trains, and writes
``FOLDER/result.json`` (the ``TrainResult``) or, on an exception,
``FOLDER/error.txt`` (the traceback) and exits with code 1. Its training log
goes to stdout, each line prefixed with ``models.launch.LOG_PREFIX``.

It exits by itself when the process that started it goes away (a killed
Spark task, a killed launcher), so no worker outlives its job.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
import time
import traceback


def _exit_with_parent(parent: int) -> None:
    """Leave (exit code 3) as soon as the parent process is gone (this process is re-parented)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="nightrec-parent-watch", daemon=True).start()


def _peer_health_checks(timeout_s: float) -> None:
    """Make MultiWorkerMirroredStrategy find a dead or hung peer within about ``timeout_s``.

    The strategy waits for every worker at start, then a thread of each worker checks its peers
    every ``_check_health_interval`` seconds (``_check_health_timeout`` each, ``_check_health_retry_limit``
    tries) and aborts the worker's collectives when one is down: the worker then fails with
    "cluster check alive failed, /job:worker/replica:0/task:N is down". Its defaults (30 s, 10 s, 3,
    and no limit at start) are class attributes, set here for this process only. The other way,
    ``CommunicationOptions(timeout_seconds=...)``, is not usable: each collective with a timeout
    starts a thread that lives for the whole timeout (thousands per minute of training).
    """
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective

    extended = collective.CollectiveAllReduceExtended
    if all(hasattr(extended, name) for name in ("_check_health_interval", "_check_health_timeout",
                                                 "_check_health_retry_limit", "_check_health_initial_timeout")):
        extended._check_health_initial_timeout = timeout_s       # every worker up within the timeout
        extended._check_health_interval = max(1.0, timeout_s / 6)
        extended._check_health_timeout = max(1.0, timeout_s / 6)  # interval + 3 tries: about 2/3 of it
        extended._check_health_retry_limit = 3


def main(folder: str) -> int:
    _exit_with_parent(os.getppid())
    with open(os.path.join(folder, "job.pkl"), "rb") as handle:
        job, launch = pickle.load(handle)
    try:
        from models.launch import LOG_PREFIX
        from models.tf_runtime import tf

        _peer_health_checks(float(launch.worker_timeout_s))
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)

        def log(line: str) -> None:
            print(f"{LOG_PREFIX}{line}", flush=True)

        result = job.run(strategy=strategy, checkpoint_every_steps=launch.checkpoint_every_steps, log=log)
    except BaseException:
        with open(os.path.join(folder, "error.txt"), "w") as handle:
            handle.write(traceback.format_exc())
        return 1
    tmp = os.path.join(folder, "result.json.tmp")
    with open(tmp, "w") as handle:
        json.dump(result.to_json(), handle)
    os.replace(tmp, os.path.join(folder, "result.json"))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    # os._exit: skip TensorFlow's teardown at exit (its collective threads can hang a clean exit)
    os._exit(main(sys.argv[1]))
