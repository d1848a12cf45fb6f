"""Features: statistics, encodings, imputation and scaling fitted on the training window.

``FeatureFitter(user_decls=..., item_decls=..., settings=...)`` is the
estimator: ``fit`` returns the immutable ``FeatureState`` (plain JSON, saved
beside the feature tables and reused at scoring time) and ``fit_transform``
also the window's feature tables. The state is then applied with
``build_side_features`` (scoring-time feature tables), ``training_examples`` /
``write_training_examples`` (leakage-safe examples) and ``join_features``
(holdout rows).

Modules, one responsibility each:

* ``state``: ``FeatureSettings`` (the config's keys) and ``FeatureState``;
* ``encoding``: vocabularies, categorical encodings, the side tables' static
  columns, item tags;
* ``passes``: the Arrow worker passes over events (``SidePass``);
* ``stats``: the NumPy statistics kernels the passes run;
* ``fitting``: ``FeatureFitter`` and its ``FeatureTables``;
* ``side_features``: the state applied to every user or item, and writing the tables;
* ``examples``: training examples and holdout rows.

Declarations (``FeatureDecl``, re-exported here, and the MovieLens ones) and
the reserved indices (``NULL_INDEX``, ``UNSEEN_INDEX``, ``FIRST_INDEX``) live in
``jobs.schema``.
"""

from jobs.features.encoding import attach_tags, encode_categorical, fit_vocabulary, id_frame, side_static
from jobs.features.examples import join_features, training_examples, write_training_examples
from jobs.features.fitting import FeatureFitter, FeatureTables
from jobs.features.side_features import build_side_features, write_feature_table
from jobs.features.state import FeatureSettings, FeatureState
from jobs.schema import FeatureDecl

__all__ = [
    "FeatureDecl",
    "FeatureFitter",
    "FeatureSettings",
    "FeatureState",
    "FeatureTables",
    "attach_tags",
    "build_side_features",
    "encode_categorical",
    "fit_vocabulary",
    "id_frame",
    "join_features",
    "side_static",
    "training_examples",
    "write_feature_table",
    "write_training_examples",
]
