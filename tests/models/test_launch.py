"""Launching training: 2 real local worker processes against 1, a killed worker, resuming from checkpoints.

Every test here starts real TensorFlow worker processes (``python -m models.worker``) on free localhost
ports; ``LocalLauncher`` stops them when the launch ends, also on failure.

Why a 2-worker run can match a 1-worker run: with the global batch the whole table (one step per
epoch) and the table in 2 row groups of half the rows, each worker's shard is exactly its half of
every global batch, so both runs see the same rows at every step, in another order. The loss is a
mean over the rows (MSE), or, for the in-batch softmax, a mean over rows whose candidates are the
gathered global batch, so both runs compute the same loss and gradient up to float32 rounding of
sums taken in another order (the all-reduce across workers, another row order): about 1e-7
relative. The per-step losses are each computed on the same rows, so they must agree to rtol 1e-4.
The weights cannot agree that closely: Adam divides each coordinate's gradient by its own running
magnitude, so a coordinate whose gradient is a near-cancelling sum moves by a fraction of the
learning rate whose size and sign the rounding decides (observed: 8e-4 on scores near 0.45 after
3 steps at lr 0.02). The scores of the two models are therefore compared to atol = lr / 10, a
tenth of the largest step Adam takes per coordinate. Both tolerances are far below what a real
difference makes: candidates limited to each worker's half of the batch change the loss by more
than 10% (``test_in_batch_candidates_are_the_global_batch_not_the_workers_half``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from models.checkpoints import LATEST_FILE
from models.data import iter_batches, parquet_files, row_group_units
from models.launch import LocalLauncher, TrainJob, WorkerFailed, WorkerProcess, free_ports, train
from models.registry import load_model
from models.settings import LaunchSettings, TrainSettings
from tests.fixtures.models import (TRAIN_SPEC, small_params, train_feed, write_catalogue, write_examples, write_holdout,
                                   write_table)

TWO = LaunchSettings(workers=2, launcher="local", worker_timeout_s=60)


def _scores(result) -> np.ndarray:
    model = load_model(result.model_file)
    users, items = np.repeat(np.arange(2, 12), 6), np.tile(np.arange(2, 8), 10)
    return np.asarray(model(train_feed(users, items)))


@pytest.mark.parametrize("kind, objective, extra", [("two_tower", "implicit", {}), ("deepfm", "rating", {}),
                                                    ("two_tower", "implicit", {"user_weight_power": 1.0})])
def test_two_workers_end_equal_and_train_like_one_worker_on_the_same_global_batches(kind, objective, extra, root):
    """(user_weight_power: each replica's weighted mean divides by the global batch's weight sum.)"""
    examples, _ = write_examples(root, n=256, row_groups=2)
    settings = TrainSettings(objective=objective, epochs=3, batch_size=256, learning_rate=0.02, seed=4, **extra)
    results = {}
    for workers in (1, 2):
        job = TrainJob(kind, TRAIN_SPEC, examples, root / f"model{workers}", settings=settings,
                       model_params={"embedding_dim": 4, "deep_layers" if kind == "deepfm" else "tower_layers": [8]},
                       item_features=write_catalogue(root))
        results[workers] = train(job, LaunchSettings(workers=workers, worker_timeout_s=60), log=lambda _: None)
    one, two = results[1], results[2]
    assert two.workers == 2 and len(two.weight_fingerprints) == 2
    assert two.weight_fingerprints[0] == two.weight_fingerprints[1]        # synchronous: identical weights
    assert [h["epoch"] for h in two.history] == [1, 2, 3] and two.steps_run == 3
    np.testing.assert_allclose([h["loss"] for h in two.history], [h["loss"] for h in one.history], rtol=1e-4)
    np.testing.assert_allclose(_scores(two), _scores(one), rtol=0, atol=settings.learning_rate / 10)


@pytest.mark.parametrize("kind, extra", [("item_item", {}), ("neumf", {"loss": "sampled_bce"}),
                                         ("two_tower", {"extra_negatives": 4}), ("mf", {"loss": "full_softmax"})])
def test_every_loss_trains_on_two_workers_that_end_equal(kind, extra, root):
    examples, _ = write_examples(root, n=256, row_groups=4)
    history = None
    if kind == "item_item":
        history = write_table(root / "history", pa.table({
            "user_idx": pa.array(range(2, 12), pa.int32()),
            "history": pa.array([[2, 3, 4] if u % 2 == 0 else [5, 6, 7] for u in range(2, 12)], pa.list_(pa.int32()))}))
    job = TrainJob(kind, TRAIN_SPEC, examples, root / "m", settings=TrainSettings(epochs=2, batch_size=64, **extra),
                   model_params=small_params(kind), item_features=write_catalogue(root), user_history=history)
    result = train(job, TWO, log=lambda _: None)
    assert result.workers == 2 and result.weight_fingerprints[0] == result.weight_fingerprints[1]
    assert result.steps_run == 2 * 4 and all(np.isfinite(h["loss"]) for h in result.history)
    assert load_model(result.model_file).factorised == result.factorised


def test_in_batch_candidates_are_the_global_batch_not_the_workers_half(root):
    """The tolerance above is meaningful: the same 2-worker step with each worker's own half of the batch
    as candidates has another loss (each row then has 127 rather than 255 negatives)."""
    from models.tasks import in_batch_softmax_from_scores

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(256, 256)).astype(np.float32)
    ids = np.arange(256)
    whole = float(in_batch_softmax_from_scores(scores, ids))
    halves = np.mean([float(in_batch_softmax_from_scores(scores[h * 128:(h + 1) * 128, h * 128:(h + 1) * 128],
                                                          ids[h * 128:(h + 1) * 128])) for h in (0, 1)])
    gathered = np.mean([float(in_batch_softmax_from_scores(scores[h * 128:(h + 1) * 128], ids, positive_offset=h * 128))
                        for h in (0, 1)])
    assert gathered == pytest.approx(whole, rel=1e-6)
    assert abs(halves - whole) / whole > 0.1


def test_worker_shards_are_disjoint_and_cover_every_row(root):
    # 3 files of 2, 3 and 1 row groups (7 rows each): 6 units, dealt round-robin over the workers.
    groups = [2, 3, 1]
    for f, n_groups in enumerate(groups):
        rows = np.arange(100 * f, 100 * f + 7 * n_groups)
        write_table(root / "t" / f"f{f}", pa.table({"row": rows.astype(np.int64)}), row_group_size=7)
    files = parquet_files(root / "t")
    assert len(row_group_units(files)) == 6
    unit_rows = [set(range(100 * f + 7 * g, 100 * f + 7 * g + 7)) for f, n in enumerate(groups) for g in range(n)]
    for workers in (1, 2, 3, 4):
        shards = []
        for index in range(workers):
            seen = np.concatenate([b["row"] for b in iter_batches(files, {"row": 0}, 5, seed=index, num_shards=workers,
                                                                  shard_index=index)])
            assert len(seen) == len(set(seen.tolist()))
            shards.append(set(seen.tolist()))
            assert shards[-1] == set().union(*unit_rows[index::workers])     # unit k goes to worker k mod N
        assert sum(len(s) for s in shards) == 42 and set().union(*shards) == set().union(*unit_rows)


def test_too_few_units_for_the_workers_fails_naming_every_worker_and_the_fix(root):
    examples, _ = write_examples(root, n=64)             # one row group: nothing for a second worker
    job = TrainJob("mf", TRAIN_SPEC, examples, root / "m", settings=TrainSettings(epochs=1, batch_size=32))
    with pytest.raises(WorkerFailed) as failure:
        train(job, TWO, log=lambda _: None)
    message = str(failure.value)
    # both raise; the launcher reports the first it sees fail and stops the other
    assert re.search(r"[12] of 2 workers failed", message) and re.search(r"worker [01] raised ValueError", message)
    assert "1 (file, row group) unit(s) of training examples for 2 workers" in message


def test_a_killed_worker_fails_the_run_by_name_and_the_rerun_resumes_from_the_checkpoint(root):
    examples, _ = write_examples(root, n=2048, row_groups=4)
    holdout, _, _ = write_holdout(root)
    steps_per_epoch, epochs = 2048 // 32, 3
    settings = TrainSettings(epochs=epochs, batch_size=32, seed=3, patience=0)
    launch = LaunchSettings(workers=2, checkpoint_every_steps=10, worker_timeout_s=60)

    def job(name):
        return TrainJob("two_tower", TRAIN_SPEC, examples, root / name, settings=settings,
                        model_params={"embedding_dim": 4, "tower_layers": [8]}, item_features=write_catalogue(root),
                        holdout=holdout, checkpoint_dir=root / f"{name}-checkpoints")

    launcher = LocalLauncher(launch)
    outcome = {}

    def run():
        try:
            outcome["result"] = launcher.run(job("killed"), log=lambda _: None)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    pointer = root / "killed-checkpoints" / LATEST_FILE
    deadline = time.monotonic() + 300
    while not pointer.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pointer.exists(), f"no checkpoint was published: {outcome}"
    os.kill(launcher.processes[1].pid, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), WorkerFailed), f"the run was not stopped by the kill: {outcome}"
    assert "worker 1 (pid" in str(outcome["error"]) and "SIGKILL" in str(outcome["error"])
    assert all(p.poll() is not None for p in launcher.processes)           # nothing left running

    resumed = train(job("killed"), launch, log=lambda _: None)
    assert resumed.resumed_from_step >= 10
    assert resumed.steps_run == epochs * steps_per_epoch - resumed.resumed_from_step < epochs * steps_per_epoch
    fresh = train(job("fresh"), launch, log=lambda _: None)
    assert fresh.resumed_from_step == 0 and fresh.steps_run == epochs * steps_per_epoch
    # Resuming skips the batches already trained on and restores the optimizer: the same training.
    np.testing.assert_allclose([h["loss"] for h in resumed.history], [h["loss"] for h in fresh.history], rtol=1e-6)
    assert resumed.best_epoch == fresh.best_epoch and resumed.best_metric == pytest.approx(fresh.best_metric)
    np.testing.assert_allclose(_scores(resumed), _scores(fresh), rtol=1e-5, atol=1e-6)


def test_a_worker_whose_peer_died_fails_by_itself_naming_the_dead_peer(root, tmp_path):
    """What a Spark task's worker relies on (no launcher stops it there): TensorFlow's peer health checks,
    set from worker_timeout_s, abort the survivor's collectives and it exits with the dead peer's name."""
    examples, _ = write_examples(root, n=2048, row_groups=4)
    job = TrainJob("mf", TRAIN_SPEC, examples, root / "m", settings=TrainSettings(epochs=3, batch_size=32))
    launch = LaunchSettings(workers=2, worker_timeout_s=12)
    endpoints = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = [WorkerProcess(job, launch, endpoints, i, str(tmp_path / f"w{i}"), threads=1) for i in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not workers[0].new_log_lines() and workers[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)                                   # the first epoch is done: training is under way
        assert workers[0].poll() is None, workers[0].failure()
        workers[1].kill()
        while workers[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers[0].poll() not in (None, 0)
        failure = workers[0].failure()
        assert failure.startswith("worker 0 raised") and "UnavailableError" in failure
        assert "/job:worker/replica:0/task:1" in failure                   # the dead peer, by its task
    finally:
        for w in workers:
            w.kill()


def test_in_process_training_resumes_a_finished_checkpoint_and_refuses_another_trainings(root):
    examples, _ = write_examples(root, n=256)
    holdout, _, _ = write_holdout(root)
    settings = TrainSettings(objective="rating", epochs=4, batch_size=64, learning_rate=0.05, patience=1)
    job = TrainJob("mf_mean", TRAIN_SPEC, examples, root / "m", settings=settings, model_params={"embedding_dim": 4},
                   holdout=holdout, checkpoint_dir=root / "checkpoints")
    first = train(job, LaunchSettings(checkpoint_every_steps=3), log=lambda _: None)
    assert first.resumed_from_step == 0 and first.steps_run == len(first.history) * 4
    again = train(job, LaunchSettings(checkpoint_every_steps=3), log=lambda _: None)
    # Nothing left to do: the same history and best epoch, the best weights restored from the checkpoint.
    assert again.resumed_from_step == first.steps_run and again.steps_run == 0
    assert again.history == first.history and again.best_epoch == first.best_epoch
    np.testing.assert_allclose(_scores(again), _scores(first), rtol=1e-6)
    other = TrainJob("mf_mean", TRAIN_SPEC, examples, root / "m2",
                     settings=TrainSettings(objective="rating", epochs=5, batch_size=64), checkpoint_dir=root / "checkpoints")
    with pytest.raises(ValueError, match="written by another training"):
        train(other, log=lambda _: None)


def test_launch_settings_refuse_bad_values_and_spark_needs_a_barrier_runner(root):
    with pytest.raises(ValueError, match="launcher must be one of local, spark"):
        LaunchSettings(launcher="yarn")
    with pytest.raises(ValueError, match="workers must be at least 1"):
        LaunchSettings(workers=0)
    job = TrainJob("mf", TRAIN_SPEC, root / "none", root / "m")
    with pytest.raises(ValueError, match="barrier=jobs.distributed.barrier_runner"):
        train(job, LaunchSettings(launcher="spark"))


def test_the_launch_modules_import_no_tensorflow_and_models_no_pyspark():
    """Spark Python workers unpickle the barrier task (jobs.distributed) and its callable (models.launch):
    neither may start TensorFlow in them; models/ never imports pyspark."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = ("import sys, models.launch, models.settings\n"
              "print(sorted(m for m in ('tensorflow', 'keras', 'pyspark') if m in sys.modules))\n"
              "import jobs.distributed, jobs.pack\n"
              "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, check=True,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.stdout.split("\n")[:2] == ["[]", "[]"]
