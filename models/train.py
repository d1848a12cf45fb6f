"""Training entry point: one custom loop (strategy.run + GradientTape) for every model.

Keras 3 ``model.fit`` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so nightrec drives Keras models and optimizers with
its own loop; the same loop runs under the default (one-worker) strategy and
under a ``MultiWorkerMirroredStrategy`` scope. Each worker reads its shard of
the examples (``models.data``); every worker takes the same number of steps
per epoch; gradients are summed across replicas, so each replica's loss is
divided by the number of replicas.

Objectives:

* ``rating``: mean squared error of the score against the rating;
* ``implicit`` with ``in_batch_softmax``: the batch's items are the
  negatives, log-Q corrected, accidental hits masked (``models.tasks``);
* ``implicit`` with ``full_softmax``: every trained catalogue item is a
  candidate of every row (its item part is computed at every step);
* ``implicit`` with ``sampled_bce``: each positive row gets
  ``negative_ratio`` catalogue items drawn uniformly or by popularity;
* ``implicit`` with ``reconstruction`` (``item_item``): each row's user's
  whole history row is reconstructed over the item vocabulary, the row
  weighted 1/n_u so that every user counts once per epoch (each distinct
  user of a batch is reconstructed once, with its rows' summed weight).

After each epoch the holdout metric is computed (RMSE for ratings,
nDCG@K over the catalogue for implicit feedback); training stops after
``patience`` epochs without improvement and the best epoch's weights are kept.

With several workers the in-batch softmax gathers every replica's items, so
each row's candidates are the global batch's items whatever the number of
workers. With a checkpoint folder the loop saves its whole state every N
steps and at every epoch's end (``models.checkpoints``), and a restarted
training resumes from the last checkpoint: it skips the batches of the
resumed epoch that were already trained on (the data order of an epoch is
fixed by its seed) and goes on with the same optimizer state, best weights
and early-stopping count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping

import numpy as np

from jobs.storage import Location
from models.base import expand_rows, group_rows
from models.catalogue import (
    FULL_SOFTMAX_MAX_ITEMS,
    CatalogueItems,
    NegativeSampler,
    index_counts,
    read_side_table,
    read_user_history,
)
from models.checkpoints import TrainingCheckpoint, job_key, weights_fingerprint
from models.data import (
    check_location,
    count_rows,
    input_columns,
    iter_batches,
    make_dataset,
    parquet_files,
    read_parquet,
    row_group_units,
    to_feed,
)
from models.evaluation import RankingHoldout, RatingHoldout
from models.kinds import KINDS
from models.registry import build_model, load_model
from models.settings import MODEL_FILE, SOFTMAX_LOSSES, TrainResult, TrainSettings
from models.tasks import (
    full_softmax_loss,
    in_batch_softmax_from_scores,
    rating_loss,
    reconstruction_loss,
    sampled_bce_loss,
)
from models.tf_runtime import keras, tf

FEATURE_STATE_FILE = "feature_state.json"
TRAIN_FILE = "train.json"

__all__ = ["MODEL_FILE", "TrainSettings", "TrainResult", "train_model", "load_model", "item_log_frequencies"]


def item_log_frequencies(files: list[Location], item_col: str, vocab_size: int) -> np.ndarray:
    """log(share of training rows) of every item index: [vocab_size] float32.

    Indices never seen get the log of half a row's share (a finite value).
    """
    return log_share(index_counts(files, item_col, vocab_size))


def log_share(counts: np.ndarray) -> np.ndarray:
    """log(count / total) with zero counts taken as half a row: [n] float32."""
    return np.log(np.maximum(counts, 0.5) / max(counts.sum(), 1.0)).astype(np.float32)


def _mean_rating(files: list[Location]) -> float:
    total = rows = 0.0
    for file in files:
        column = read_parquet(file, ["rating"]).column(0).to_numpy()
        total += float(np.nansum(column))
        rows += int(np.isfinite(column).sum())
    return total / rows if rows else 0.0


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type in (None, "chief"):
        return True
    jobs = resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in jobs


def gather_replicas(part, device: str, *, differentiable: bool = True):
    """Every replica's rows of ``part``, concatenated by replica, with gradients flowing back to each replica.

    The gradient of a replica's rows is the sum over replicas of the gradients of their copies
    (an all-reduce, then this replica's slice), as ``ReplicaContext.all_gather``'s own. Under
    ``MultiWorkerMirroredStrategy`` inside ``tf.function`` a collective needs its input placed on
    a device ("destinations can not be empty" otherwise), so both directions are placed on the
    replica's device first.

    Args:
        part: [rows, ...] this replica's tensor (every replica the same number of rows).
        device: the replica's device (``strategy.extended.worker_devices[0]``).
        differentiable: False for integer tensors (ids), which have no gradient.

    Returns:
        [replicas * rows, ...].
    """
    context = tf.distribute.get_replica_context()

    def gather(x):
        with tf.device(device):
            return context.all_gather(tf.identity(x), axis=0)

    if not differentiable:
        return gather(part)

    @tf.custom_gradient
    def gathered(x):
        def grad(upstream):
            with tf.device(device):
                total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(upstream))
            rows = tf.shape(x)[0]
            return total[context.replica_id_in_sync_group * rows:][:rows]

        return gather(x), grad

    return gathered(part)


def _workers(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    return max(1, sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values()))


def _evaluator(settings: TrainSettings, spec, holdout: Location | None, ranking_holdout: Location | None,
               examples: Location, catalogue: Location | None, log: Callable[[str], None]):
    """The per-epoch holdout metric (None: train every epoch)."""
    if settings.objective == "rating":
        return RatingHoldout(holdout, spec) if holdout is not None else None
    if holdout is None and ranking_holdout is None:
        return None
    if catalogue is None:
        raise ValueError("a ranking holdout needs item_features (the catalogue to rank)")
    if ranking_holdout is not None:
        evaluator = RankingHoldout.from_table(ranking_holdout, catalogue, spec, k=settings.eval_k)
    else:
        evaluator = RankingHoldout.from_examples(holdout, examples, catalogue, spec, k=settings.eval_k,
                                                 max_users=settings.eval_max_users, seed=settings.seed)
    if evaluator.evaluated_users == 0:
        log("the ranking holdout has no user with relevant items: no early stopping, training every epoch")
        return None
    return evaluator


def train_model(
    kind: str,
    spec: Mapping,
    examples: Location,
    out_dir: Location,
    *,
    settings: TrainSettings = TrainSettings(),
    model_params: Mapping | None = None,
    item_features: Location | None = None,
    holdout: Location | None = None,
    ranking_holdout: Location | None = None,
    holdout_catalogue: Location | None = None,
    feature_state_json: str | None = None,
    user_history: Location | None = None,
    strategy: tf.distribute.Strategy | None = None,
    checkpoint_dir: Location | None = None,
    checkpoint_every_steps: int = 0,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train one model of ``kind`` on Parquet training examples.

    Args:
        kind: a name in ``models.kinds.KINDS``.
        spec: model input spec from the feature stage.
        examples: Parquet training examples: one (user, item) row each with
            every input column of ``spec`` (and ``rating`` for the rating objective).
        out_dir: folder on any file system; receives ``model.keras``, ``train.json`` and
            ``feature_state.json`` (when given), from the chief worker only.
        settings: objective, loss and optimisation settings.
        model_params: the kind's hyper-parameters (``models.registry.build_model``).
        item_features: the item catalogue (Parquet; needed by sampled
            negatives, the full softmax and the ranking holdout).
        holdout: Parquet holdout examples: the per-epoch metric and early stopping of the rating
            objective (RMSE); for implicit feedback, without ``ranking_holdout``, the ranking metric
            over the users and items of these feature-joined rows (``RankingHoldout.from_examples``;
            cold users are missing from them, so the figure is not the night's published one).
            None (and no ``ranking_holdout``): train all epochs.
        ranking_holdout: implicit feedback: the holdout table of ``jobs.evaluate.ranking_holdout``
            (``RankingHoldout.from_table``): the nDCG@K training logs and early-stops on is then the
            figure the night publishes for the same holdout.
        holdout_catalogue: the items the ranking holdout ranks (default:
            ``item_features``), e.g. only new items for a cold-start check.
        feature_state_json: the fitted feature state, saved beside the model.
        user_history: Parquet users' histories (``jobs.history.user_history`` of the
            examples' window); required by models with ``history_max_len > 0``.
        strategy: tf.distribute strategy (default: the current one); under a
            ``MultiWorkerMirroredStrategy`` of N workers every worker calls this with the same
            arguments, reads its shard and takes ``batch_size / N`` rows of every global batch.
        checkpoint_dir: folder of this training's checkpoints (None: no checkpoints). A checkpoint
            there resumes the training; one of another training is refused.
        checkpoint_every_steps: save every N steps besides every epoch's end (0: epoch ends only).
        log: receives one progress line per epoch.

    Returns:
        TrainResult.
    """
    settings.check(kind)
    loss_name = settings.resolved_loss(kind)
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    check_location(out_dir, "the training output folder")
    files = parquet_files(examples)
    n_rows = count_rows(files)
    if n_rows == 0:
        raise ValueError(f"{examples.display()}: no training examples")
    workers = _workers(strategy)
    units = len(row_group_units(files))
    if units < workers:
        raise ValueError(f"{examples.display()}: {units} (file, row group) unit(s) of training examples for {workers} "
                         "workers; each worker reads whole units and needs at least one: write the examples in "
                         f"at least {workers} files or row groups, or train on fewer workers")
    batch_size = max(replicas, min(settings.batch_size, n_rows) // replicas * replicas)
    steps_per_epoch = max(1, n_rows // batch_size)
    columns = input_columns(spec)
    if settings.objective == "rating":
        columns["rating"] = 0
    item_col = spec["item"]["id"]["name"]
    vocab = int(spec["item"]["id"]["vocab_size"])
    counts = index_counts(files, item_col, vocab)
    sampler = everything = None
    extra = settings.extra_negatives if loss_name == "in_batch_softmax" else 0
    if loss_name == "full_softmax":
        if item_features is None:
            raise ValueError(f"{kind}: loss full_softmax needs item_features (the catalogue it ranks)")
        everything = CatalogueItems(read_side_table(item_features, spec["item"], "item_id"), item_col, vocab)
        absent = everything.missing(np.nonzero(counts)[0])
        if absent.size:
            raise ValueError(f"{kind}: {absent.size} item indices of the training examples (e.g. "
                             f"{', '.join(map(str, absent[:5]))}) are not trained items of the catalogue "
                             f"{item_features.display()}; were both built with the same feature state?")
    if loss_name == "sampled_bce" or extra:
        if item_features is None:
            raise ValueError(f"{kind}: sampled negatives need item_features (the catalogue to sample from)")
        catalogue = read_side_table(item_features, spec["item"], "item_id")
        mode = settings.negatives if loss_name == "sampled_bce" else "uniform"
        sampler = NegativeSampler(catalogue, item_col, counts, mode=mode, seed=settings.seed)
    user_weight = None
    # reconstruction: a user's rows each reconstruct the user's whole history, so each weighs 1/n_u
    weight_power = 1.0 if loss_name == "reconstruction" else settings.user_weight_power
    if weight_power and loss_name in SOFTMAX_LOSSES + ("reconstruction",):
        rows = index_counts(files, spec["user"]["id"]["name"], int(spec["user"]["id"]["vocab_size"]))
        user_weight = tf.constant(np.maximum(rows, 1.0) ** -weight_power, tf.float32)
    if loss_name == "reconstruction" and vocab > FULL_SOFTMAX_MAX_ITEMS:
        raise ValueError(f"{kind}: loss reconstruction scores every item of the vocabulary at every step; "
                         f"{vocab:,} items is more than {FULL_SOFTMAX_MAX_ITEMS:,}")
    # In-batch softmax correction: log of each item's expected count among a row's candidates (the global
    # batch's items, gathered from every replica).
    expected = batch_size * np.exp(log_share(counts).astype(np.float64))
    if extra:
        expected = expected + extra * sampler.index_probability
    log_q = tf.constant(np.log(expected).astype(np.float32))
    output_bias = _mean_rating(files) if settings.objective == "rating" else 0.0
    evaluator = _evaluator(settings, spec, holdout, ranking_holdout, examples, holdout_catalogue or item_features, log)

    with strategy.scope():
        model = build_model(kind, spec, output_bias=output_bias, **dict(model_params or {}))
        optimizer = keras.optimizers.Adam(learning_rate=settings.learning_rate)
        first = to_feed(next(iter_batches(files[:1], columns, 4, shuffle=False)))
        model(first)
        if getattr(model, "history_max_len", 0):
            if user_history is None:
                raise ValueError(f"{kind}: history_max_len {model.history_max_len} needs user_history "
                                 "(the users' histories of the training window, jobs.history.user_history)")
            model.set_history(read_user_history(user_history, int(spec["user"]["id"]["vocab_size"]),
                                                model.history_max_len))
        if settings.mask_history and not getattr(model, "history_max_len", 0):
            raise ValueError(f"{kind}: mask_history needs a model with a history input (history_max_len >= 1)")
        optimizer.build(model.trainable_variables)

    # the replica's device: a collective inside tf.function needs its input placed on one
    device = strategy.extended.worker_devices[0] if replicas > 1 else None

    def weights_total(weights):
        """Over several replicas, the global batch's weight sum / replicas: the weighted mean's denominator."""
        if weights is None or replicas == 1:
            return None
        with tf.device(device):
            summed = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.identity(tf.reduce_sum(tf.stop_gradient(weights))))
        return summed / replicas

    def objective_loss(batch, step):
        if settings.objective == "rating":
            return rating_loss(model(batch, training=True), batch["rating"])
        weights = None
        if user_weight is not None:
            weights = tf.gather(user_weight, tf.cast(batch[spec["user"]["id"]["name"]], tf.int32))
        total = weights_total(weights)
        if loss_name == "reconstruction":
            # Every row of a user reconstructs the same history row: reconstruct each distinct user of the
            # batch once, weighted by the sum of its rows' weights (the same loss, a fraction of the work).
            users, row_user = tf.unique(tf.cast(batch[spec["user"]["id"]["name"]], tf.int32))
            user_weights = tf.math.unsorted_segment_sum(weights, row_user, tf.size(users))
            history_rows, reconstructed = model.history_reconstruction({spec["user"]["id"]["name"]: users})
            return reconstruction_loss(reconstructed, history_rows, weights=user_weights,
                                       weight_total=weights_total(user_weights)) + model.penalty()
        user = model.user_parts(batch, training=True)
        item = model.item_parts(batch, training=True) if loss_name != "full_softmax" else None
        item_idx = batch[item_col]
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        if loss_name == "in_batch_softmax":
            candidates, ids, offset = item, item_idx, 0
            if replicas > 1:   # every replica's items are negatives of every row: the global batch's
                candidates = tf.nest.map_structure(lambda part: gather_replicas(part, device), item)
                ids = gather_replicas(item_idx, device, differentiable=False)
                offset = tf.cast(replica, tf.int32) * tf.shape(item_idx)[0]
            scores = model.pair_scores(user, candidates, cross=True, training=True)
            if extra:
                extra_rows, extra_idx = sampler.sample(extra, step, replica)
                extra_scores = model.pair_scores(user, model.item_parts(extra_rows, training=True), cross=True,
                                                 training=True)
                scores = tf.concat([scores, extra_scores], axis=1)
                ids = tf.concat([ids, tf.cast(extra_idx, item_idx.dtype)], axis=0)
            known = model.history_contains(batch, ids) if settings.mask_history else None
            return in_batch_softmax_from_scores(
                scores, ids, tf.gather(log_q, ids) if settings.log_q else None, settings.temperature,
                weights=weights, known=known, positive_offset=offset, weight_total=total,
            )
        if loss_name == "full_softmax":
            scores = model.pair_scores(user, model.item_parts(everything.columns, training=True), cross=True,
                                       training=True)
            known = model.history_contains(batch, everything.item_index) if settings.mask_history else None
            return full_softmax_loss(scores, everything.labels(item_idx), settings.temperature, known=known,
                                     weights=weights, weight_total=total)
        positive = model.pair_scores(user, item, training=True)
        n = tf.shape(item_idx)[0]
        negatives, negative_idx = sampler.sample(n * settings.negative_ratio, step, replica)
        neg_item = group_rows(model.item_parts(negatives, training=True), n)
        negative = model.pair_scores(expand_rows(user), neg_item, training=True)
        valid = tf.not_equal(tf.reshape(negative_idx, (n, settings.negative_ratio)), item_idx[:, None])
        return sampled_bce_loss(positive, negative, valid)

    def replica_step(batch, step):
        with tf.GradientTape() as tape:
            loss = objective_loss(batch, step)
            total = loss + tf.add_n(model.losses) if model.losses else loss
            scaled = total / replicas
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(batch, step):
        per_replica = strategy.run(replica_step, args=(batch, step))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    chief = _is_chief(strategy)
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = TrainingCheckpoint(
            check_location(checkpoint_dir, "the checkpoint folder"), model, optimizer, chief=chief,
            every_steps=checkpoint_every_steps, keep_best=evaluator is not None,
            job_key=job_key(kind=kind, spec=spec, settings=dataclasses.asdict(settings),
                            model_params=dict(model_params or {}), examples=[f.uri for f in files], rows=n_rows,
                            holdout=holdout.uri if holdout is not None else None),
        )
    state = {"epoch": 1, "done": 0, "losses": [], "history": [], "best_epoch": 0, "best_value": None,
             "stopped": False}
    best_weights = None
    resumed = checkpoint.restore() if checkpoint is not None else None
    resumed_from = 0
    if resumed is not None:
        resumed_from, state, best_weights = resumed
        log(f"resuming from the checkpoint of step {resumed_from} in {checkpoint_dir.display()} "
            f"(epoch {state['epoch']}, {state['done']} of its {steps_per_epoch} steps done)")
    history: list[dict] = state["history"]
    best_epoch, best_value = state["best_epoch"], state["best_value"]
    step, steps_run = resumed_from, 0

    def snapshot(**changes) -> dict:
        return {**state, "history": history, "best_epoch": best_epoch, "best_value": best_value, **changes}

    for epoch in range(state["epoch"], settings.epochs + 1):
        if state["stopped"]:
            break
        done = state["done"] if epoch == state["epoch"] else 0
        losses = list(state["losses"]) if epoch == state["epoch"] else []

        def dataset_fn(ctx, epoch=epoch, done=done):
            return make_dataset(
                files, columns, ctx.get_per_replica_batch_size(batch_size), shuffle=True,
                seed=settings.seed * 1000 + epoch * 7, num_shards=ctx.num_input_pipelines,
                shard_index=ctx.input_pipeline_id, drop_remainder=True, repeat=True,
            ).skip(done)

        batches = iter(strategy.distribute_datasets_from_function(dataset_fn))
        start = time.perf_counter()
        for in_epoch in range(done + 1, steps_per_epoch + 1):
            losses.append(float(train_step(next(batches), tf.constant(step, tf.int64))))
            step += 1
            steps_run += 1
            if checkpoint is not None and in_epoch < steps_per_epoch and checkpoint.due(step):
                checkpoint.save(step, snapshot(epoch=epoch, done=in_epoch, losses=losses), best_weights)
        seconds = time.perf_counter() - start
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "examples_per_s": (steps_per_epoch - done) * batch_size / max(seconds, 1e-9),
            "seconds": seconds,
        }
        line = f"epoch {epoch}/{settings.epochs}: loss {record['loss']:.4f}"
        improved = evaluator is None
        if evaluator is not None:
            metrics = evaluator.evaluate(model)
            record["holdout"] = metrics
            value = metrics[evaluator.name]
            improved = best_value is None or (value > best_value if evaluator.higher_is_better else value < best_value)
            label = f"{evaluator.name}@{settings.eval_k}" if evaluator.name == "ndcg" else evaluator.name
            line += f", holdout {label} {value:.4f}"
            if improved:
                best_value = value
        if improved:
            best_epoch = epoch
            best_weights = [w.copy() for w in model.get_weights()] if evaluator is not None else None
        history.append(record)
        log(f"{line}, {record['examples_per_s']:,.0f} examples/s, {seconds:.1f}s")
        stop = evaluator is not None and settings.patience and epoch - best_epoch >= settings.patience
        if checkpoint is not None:
            checkpoint.save(step, snapshot(epoch=epoch + 1, done=0, losses=[], stopped=bool(stop)), best_weights)
        if stop:
            log(f"early stop: no better holdout {evaluator.name} for {settings.patience} epochs; "
                f"keeping epoch {best_epoch}")
            break
    if checkpoint is not None:
        checkpoint.close()
    if best_weights is not None and history and best_epoch != history[-1]["epoch"]:
        model.set_weights(best_weights)

    if chief:
        with out_dir.writing_folder() as local:   # Keras saves to a path on this machine's disk
            model.save(os.path.join(local, MODEL_FILE))
        if feature_state_json is not None:
            (out_dir / FEATURE_STATE_FILE).write_text(feature_state_json)
        (out_dir / TRAIN_FILE).write_text(json.dumps({
            "kind": kind, "family": KINDS[kind].family, "objective": settings.objective, "loss": loss_name,
            "factorised": bool(model.factorised), "settings": dataclasses.asdict(settings),
            "model_params": dict(model_params or {}), "best_epoch": best_epoch,
            "metric": evaluator.name if evaluator else None, "best_metric": best_value,
            "examples_per_epoch": steps_per_epoch * batch_size, "workers": workers,
            "resumed_from_step": resumed_from, "steps_run": steps_run, "history": history,
        }, indent=2, default=str))
    return TrainResult(
        model_file=out_dir / MODEL_FILE, history=history, examples=steps_per_epoch * batch_size, best_epoch=best_epoch,
        metric=evaluator.name if evaluator else None, best_metric=best_value, factorised=bool(model.factorised),
        resumed_from_step=resumed_from, steps_run=steps_run, workers=workers,
        weight_fingerprints=(weights_fingerprint(model.get_weights()),),
    )
