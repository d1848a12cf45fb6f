"""TrainSettings: importable without TensorFlow (the config builds it), checked against the kind."""

import dataclasses
import os
import subprocess
import sys

import pytest

from models.settings import TrainSettings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_settings_import_no_tensorflow_or_keras():
    script = ("import sys; from models.settings import TrainSettings; TrainSettings().check('mf'); "
              "print(sorted(m for m in ('tensorflow', 'keras', 'pyspark') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_resolved_loss_is_mse_for_ratings_else_the_given_or_the_kinds_default():
    assert TrainSettings(objective="rating").resolved_loss("deepfm") == "mse"
    assert TrainSettings().resolved_loss("deepfm") == "sampled_bce"          # deepfm's default
    assert TrainSettings().resolved_loss("two_tower") == "in_batch_softmax"  # two_tower's default
    assert TrainSettings(loss="full_softmax").resolved_loss("two_tower") == "full_softmax"


@pytest.mark.parametrize("settings, kind, message", [
    (TrainSettings(), "svd", "unknown model kind 'svd'"),
    (TrainSettings(objective="clicks"), "mf", "objective must be one of implicit, rating, got 'clicks'"),
    (TrainSettings(loss="hinge"), "mf", "loss must be one of .*, got 'hinge'"),
    (TrainSettings(user_weight_power=1.5), "mf", r"user_weight_power must be in \[0, 1\], got 1.5"),
    (TrainSettings(negatives="hard"), "deepfm", "negatives must be one of uniform, popularity, got 'hard'"),
    (TrainSettings(loss="reconstruction"), "mf", "loss reconstruction is for kind item_item, not mf"),
    (TrainSettings(), "als", "kind als .* is not a Keras model: it is trained in Spark by jobs.als.train_als"),
])
def test_check_says_what_came_and_what_is_expected(settings, kind, message):
    with pytest.raises(ValueError, match=message):
        settings.check(kind)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainSettings().epochs = 3
