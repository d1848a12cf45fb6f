"""Training checkpoints on any file system: save every N steps, resume where a killed job stopped.

A checkpoint is everything a training needs to go on as if it had not
stopped: the model's variables, the optimizer's (Adam's moments and its
iteration count), the global step, and the loop's own state as JSON (the
epoch in progress and how many of its steps are done, that epoch's losses so
far, the history of finished epochs, the best epoch, its holdout metric, and
whether early stopping has ended the training), plus the best epoch's
weights when a holdout chooses them.

``tf.train.CheckpointManager`` writes it to a local folder of the process.
The chief worker then copies it to ``folder / step-NNNNNNNNNNNN/`` (any
``jobs.storage.Location``: a local disk, HDFS, an object store) and only
then moves the pointer ``folder / latest.json`` to it, so a job killed while
copying leaves the previous checkpoint in force. The other workers write
theirs to temporary folders and discard them (under
``MultiWorkerMirroredStrategy`` every worker must take part in saving). On
a restart every worker reads the checkpoint the pointer names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np

from jobs.storage import Location
from models.tf_runtime import tf

#: The pointer to the last complete checkpoint inside a checkpoint folder.
LATEST_FILE = "latest.json"
_STEP_PREFIX = "step-"


def weights_fingerprint(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 (hex) of a model's weights (``model.get_weights()``), shape and dtype included."""
    digest = hashlib.sha256()
    for w in weights:
        w = np.ascontiguousarray(w)
        digest.update(f"{w.dtype.str}{w.shape}".encode())
        digest.update(w.tobytes())
    return digest.hexdigest()


class TrainingCheckpoint:
    """The checkpoint of one training job: ``save`` it as the loop goes, ``restore`` it on a restart.

    Args:
        folder: where the job's checkpoints live (shared by every worker and by later runs of the
            same job).
        model: the built Keras model (under the job's strategy scope).
        optimizer: its optimizer, already built (``optimizer.build(model.trainable_variables)``)
            so that its variables exist before a restore.
        job_key: identifies the training (kind, settings, data): a checkpoint written by another
            training is refused rather than resumed.
        chief: whether this process publishes the checkpoint (the other workers write to a
            temporary folder).
        every_steps: save every this many steps (0: only when ``save(force=True)``, at epoch ends).
        keep_best: also hold the best epoch's weights (training with a holdout).
    """

    def __init__(self, folder: Location, model, optimizer, *, job_key: str, chief: bool, every_steps: int,
                 keep_best: bool):
        self.folder = folder
        self.job_key = job_key
        self.chief = chief
        self.every_steps = int(every_steps)
        self.last_saved = 0
        self._model = model
        self._local = tempfile.mkdtemp(prefix="nightrec-checkpoint-")
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="checkpoint_step")
        self._state = tf.Variable("", dtype=tf.string, trainable=False, name="checkpoint_state")
        self._best = tf.Module()
        self._best.weights = [tf.Variable(w, trainable=False) for w in model.get_weights()] if keep_best else []
        self._checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self._step,
                                               state=self._state, best=self._best)
        self._manager = tf.train.CheckpointManager(self._checkpoint, self._local, max_to_keep=1)

    def due(self, step: int) -> bool:
        """Whether ``step`` is a step to save at (every ``every_steps`` since the last save)."""
        return bool(self.every_steps) and step - self.last_saved >= self.every_steps

    def save(self, step: int, state: dict, best_weights: list[np.ndarray] | None) -> None:
        """Write the checkpoint of ``step``; the chief publishes it to ``folder``.

        Args:
            step: global steps done.
            state: the loop's state (JSON-able).
            best_weights: the best epoch's weights (``model.get_weights()`` layout) or None.
        """
        self._step.assign(step)
        self._state.assign(json.dumps(state))
        if best_weights is not None:
            for variable, value in zip(self._best.weights, best_weights):
                variable.assign(value)
        prefix = self._manager.save(checkpoint_number=step)
        self.last_saved = step
        if not self.chief:
            return
        name = f"{_STEP_PREFIX}{step:012d}"
        Location(self._local).copy_to(self.folder / name)
        (self.folder / LATEST_FILE).write_text(json.dumps({
            "step": step, "folder": name, "prefix": os.path.basename(prefix), "job_key": self.job_key,
        }))
        for older in self.folder.list():
            if older.name.startswith(_STEP_PREFIX) and older.name != name:
                older.delete()

    def restore(self) -> tuple[int, dict, list[np.ndarray] | None] | None:
        """Load the last published checkpoint into the model and optimizer.

        Returns:
            None when ``folder`` holds no checkpoint; else (its step, the loop's state, the best
            epoch's weights or None).

        Raises:
            ValueError: the checkpoint belongs to another training (other kind, settings or data).
        """
        pointer = self.folder / LATEST_FILE
        if not pointer.exists():
            return None
        latest = json.loads(pointer.read_text())
        if latest["job_key"] != self.job_key:
            raise ValueError(f"{self.folder.display()}: the checkpoint of step {latest['step']} was written by "
                             f"another training (job key {latest['job_key']}, this one is {self.job_key}: other "
                             "kind, settings or examples); delete the folder or give this training another "
                             "checkpoint folder")
        local = tempfile.mkdtemp(prefix="nightrec-restore-")
        try:
            (self.folder / latest["folder"]).copy_to(Location(local))
            self._checkpoint.restore(os.path.join(local, latest["prefix"])).assert_existing_objects_matched()
        finally:
            shutil.rmtree(local, ignore_errors=True)
        step = int(self._step.numpy())
        self.last_saved = step
        best = [v.numpy() for v in self._best.weights] if self._best.weights else None
        return step, json.loads(self._state.numpy().decode("utf-8")), best

    def close(self) -> None:
        """Remove this process's local checkpoint folder (the published checkpoint stays)."""
        shutil.rmtree(self._local, ignore_errors=True)


def job_key(**parts) -> str:
    """A short stable key of what a training is (JSON of ``parts``, hashed)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
