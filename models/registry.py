"""Build the Keras model of a named kind (see ``models.kinds``), and load saved ones."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

from jobs.storage import Location
from models.deepfm import DeepFMModel
from models.item_item import ItemItemModel
from models.kinds import KINDS, keras_problem
from models.ncf import NCFModel
from models.tf_runtime import keras
from models.two_tower import TwoTowerModel

FAMILY_CLASSES = {"two_tower": TwoTowerModel, "deepfm": DeepFMModel, "ncf": NCFModel}
#: Kinds built by a class of their own rather than as a preset of their family's class.
KIND_CLASSES = {"item_item": ItemItemModel}

#: config key -> constructor argument, where they differ.
_ARGUMENT_NAMES = {"tower_layers": "hidden"}


def build_model(kind: str, spec: Mapping, *, output_bias: float = 0.0, **params):
    """A fresh model of ``kind`` for the input ``spec``.

    Args:
        kind: a name in ``models.kinds.KINDS``.
        spec: the feature stage's model input spec.
        output_bias: initial global bias (mean training rating for the rating objective).
        **params: the kind's hyper-parameters (config names, e.g. ``tower_layers``).

    Returns:
        A ``models.base.RecommenderModel``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(sorted(KINDS))}")
    problem = keras_problem(kind)
    if problem:
        raise ValueError(problem)
    info = KINDS[kind]
    unknown = sorted(set(params) - set(info.params) - {"embedding_dim", "l2"})
    if unknown:
        raise ValueError(f"{kind}: hyper-parameters {', '.join(unknown)} do not apply to this kind")
    args = {_ARGUMENT_NAMES.get(k, k): v for k, v in params.items()}
    args.update(info.preset)
    cls = KIND_CLASSES.get(kind, FAMILY_CLASSES[info.family])
    return cls(dict(spec), kind=kind, output_bias=output_bias, **args)


def load_model(model_file: "Location | str") -> keras.Model:
    """Load a saved nightrec model (importing this module registers every custom class).

    Args:
        model_file: the ``.keras`` file: a Location or a path or URI, on any file system (a copy
            is read when it is not local: Keras needs a path on this machine's disk).
    """
    model_file = Location(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file.display()}: no saved model there (expected the .keras file that "
                                "models.train.train_model writes)")
    if model_file.local_path is not None:
        return keras.models.load_model(model_file.local_path)
    with tempfile.TemporaryDirectory(prefix="nightrec-model-") as tmp:
        model_file.copy_to(Location(tmp) / model_file.name)
        return keras.models.load_model(os.path.join(tmp, model_file.name))


def version_key(*locations: Location) -> str:
    """A key naming these files' or folders' current versions (URI and modification time of each).

    For caches of what is built from them once per process (a loaded model, a catalogue's item
    parts: ``jobs.scoring.worker_cached``), so a retrained model is not served from the cache.
    """
    return "|".join(f"{loc.uri}@{loc.mtime_ns()}" for loc in locations)
