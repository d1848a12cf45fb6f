"""TensorFlow and Keras, imported once per process without their start-up noise.

Importing TensorFlow writes lines to the process's stderr from native code
before its logging is set up (so ``TF_CPP_MIN_LOG_LEVEL`` cannot silence
them): the absl "before absl::InitializeLog()" warning, oneDNN and CPU
feature notes, "Could not find cuda drivers", and on a machine without a GPU
``E0000 … failed call to cuInit``. Every process that runs models (the
driver, each Spark Python worker, each training worker) pays them once per
TensorFlow import. Every module of ``models/`` takes ``tf``, ``keras`` and
``ops`` from here, so the first import in a process happens here: file
descriptor 2 is captured for the import and the device probe, the known
start-up lines are dropped, and anything else is written back to stderr.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

#: Lines TensorFlow writes on every start-up on a CPU machine; nothing else is dropped.
_START_UP = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IW]\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cpu_feature_guard|cuda_executor|gpu_device)\.cc:\d+\]"
    r"|^E\d{4} [\d:.]+\s+\d+ cuda_(platform|executor|diagnostics)\.cc:\d+\] failed call to cuInit"
    r"|^To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r"|^\S+ \S+: I tensorflow/core/util/port\.cc:\d+\] oneDNN custom operations are on"
)


def _quiet_import():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras
            import tensorflow

            tensorflow.config.list_physical_devices("GPU")  # the device probe that logs cuInit
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        kept = [line for line in captured.read().decode("utf-8", "replace").splitlines()
                if line.strip() and not _START_UP.search(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)
    return tensorflow, keras


tf, keras = _quiet_import()
ops = keras.ops

__all__ = ["tf", "keras", "ops"]
