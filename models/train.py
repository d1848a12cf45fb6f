"""Training entry point: a custom loop (strategy.run + GradientTape) around Keras 3.

Keras 3 ``model.fit`` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so nightrec drives Keras models and optimizers with
its own loop; the same loop runs under the default (one-worker) strategy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping

import keras
import numpy as np
import pyarrow.parquet as pq
import tensorflow as tf

from models.data import input_columns, make_dataset, parquet_files
from models.two_tower import TwoTowerModel

MODEL_FILE = "model.keras"


@dataclasses.dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_path: the saved ``.keras`` file.
        history: one dict per epoch (epoch, loss, examples_per_s, seconds).
        examples: training rows seen per epoch.
    """

    model_path: str
    history: list[dict]
    examples: int


def item_log_frequencies(files: list[str], item_col: str, vocab_size: int) -> np.ndarray:
    """log(share of training rows) of every item index: [vocab_size] float32.

    Indices never seen get the log of half a row's share (a finite value).
    """
    counts = np.zeros(vocab_size, dtype=np.float64)
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=[item_col], batch_size=65536):
            idx = batch.column(0).to_numpy(zero_copy_only=False)
            counts += np.bincount(idx, minlength=vocab_size)[:vocab_size]
    total = max(counts.sum(), 1.0)
    return np.log(np.maximum(counts, 0.5) / total).astype(np.float32)


def train_two_tower(
    examples_path: str,
    spec: Mapping,
    out_dir: str,
    *,
    embedding_dim: int = 32,
    hidden: tuple[int, ...] = (64,),
    temperature: float = 0.1,
    normalize: bool = False,
    l2: float = 0.0,
    epochs: int = 8,
    batch_size: int = 1024,
    learning_rate: float = 0.005,
    seed: int = 42,
    strategy: tf.distribute.Strategy | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a two-tower model with in-batch softmax on training examples.

    Args:
        examples_path: Parquet folder of training examples (one positive
            (user, item) pair per row with every input column of ``spec``).
        spec: model input spec from the feature stage.
        out_dir: local folder; receives ``model.keras`` and ``train.json``.
        strategy: tf.distribute strategy (default: the current one).
        log: receives one progress line per epoch.

    Returns:
        TrainResult.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    strategy = strategy or tf.distribute.get_strategy()
    files = parquet_files(examples_path)
    n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if n_rows == 0:
        raise ValueError(f"{examples_path}: no training examples")
    batch_size = min(batch_size, n_rows)
    columns = input_columns(spec)
    item_col = spec["item"]["id"]["name"]
    log_q = tf.constant(item_log_frequencies(files, item_col, int(spec["item"]["id"]["vocab_size"])))

    with strategy.scope():
        model = TwoTowerModel(
            spec, embedding_dim=embedding_dim, hidden=hidden, temperature=temperature, normalize=normalize, l2=l2
        )
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        first = next(iter(make_dataset(files, columns, 4, shuffle=False)))
        model(first)
        optimizer.build(model.trainable_variables)

    def replica_step(batch):
        with tf.GradientTape() as tape:
            loss = model.loss_on_batch(batch, tf.gather(log_q, batch[item_col]))
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    history = []
    rows = 0
    for epoch in range(1, epochs + 1):
        dataset = make_dataset(files, columns, batch_size, shuffle=True, seed=seed * 1000 + epoch, drop_remainder=True)
        dist = strategy.experimental_distribute_dataset(dataset)
        start = time.perf_counter()
        losses, rows = [], 0
        for batch in dist:
            losses.append(float(train_step(batch)))
            rows += batch_size
        seconds = time.perf_counter() - start
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "examples_per_s": rows / max(seconds, 1e-9),
            "seconds": seconds,
        }
        history.append(record)
        log(
            f"epoch {epoch}/{epochs}: loss {record['loss']:.4f}, "
            f"{record['examples_per_s']:,.0f} examples/s, {seconds:.1f}s"
        )
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, MODEL_FILE)
    model.save(model_path)
    with open(os.path.join(out_dir, "train.json"), "w") as fh:
        json.dump({"history": history, "examples_per_epoch": rows}, fh, indent=2)
    return TrainResult(model_path=model_path, history=history, examples=rows)


def load_model(path: str) -> keras.Model:
    """Load a saved nightrec model (its custom layers are registered on import)."""
    import models.two_tower  # noqa: F401  (registers the serializable classes)

    return keras.models.load_model(path)
