"""The named models, their families, formulas and hyper-parameters (no TensorFlow import).

The config (``flows.config``) validates model entries against this table and
``models.registry`` builds the Keras model of a kind from it.

Notation: p_u, q_i id embeddings; x_u, z_i side features (continuous x and
categorical fields f with embeddings E_f); psi, phi towers; v_f factorisation-
machine field vectors; MLP(.) dense ReLU layers with a linear output.
"""

from __future__ import annotations

import dataclasses

OBJECTIVES = ("implicit", "rating")
#: The families built as Keras models (``models.registry``); ``spark_als`` is trained in Spark (``jobs.als``).
KERAS_FAMILIES = ("two_tower", "deepfm", "ncf")
SPARK_ALS = "spark_als"
LOSSES = ("in_batch_softmax", "sampled_bce", "full_softmax", "reconstruction")
NEGATIVE_SAMPLERS = ("uniform", "popularity")

#: Training hyper-parameters every kind accepts.
TRAINING_PARAMS = frozenset(
    {"objective", "epochs", "batch_size", "learning_rate", "patience", "l2", "embedding_dim", "loss"}
)
#: Hyper-parameters that apply only with a given implicit loss.
LOSS_PARAMS = {
    "in_batch_softmax": frozenset({"temperature", "log_q", "extra_negatives", "mask_history", "user_weight_power"}),
    "sampled_bce": frozenset({"negatives", "negative_ratio"}),
    "full_softmax": frozenset({"temperature", "mask_history", "user_weight_power"}),
    "reconstruction": frozenset(),
}
#: Kinds that train only with some of the implicit losses (and no rating objective), and the losses that
#: only some kinds can train with: the reconstruction loss needs the item-item model's own terms e_k . q_k.
KIND_LOSSES = {"item_item": ("reconstruction",)}
LOSS_KINDS = {"reconstruction": ("item_item",)}


@dataclasses.dataclass(frozen=True)
class Kind:
    """One named model.

    Attributes:
        family: "two_tower", "deepfm" or "ncf" (which Keras class builds it), or "spark_als"
            (not a Keras model: trained by Spark MLlib, ``jobs.als``).
        formula: the score, as documented.
        preset: fixed constructor arguments that make the family this kind.
        params: model hyper-parameters a config may set for this kind
            (beyond ``TRAINING_PARAMS``).
        default_loss: the implicit-feedback loss used unless the config says otherwise (None: the
            kind has no loss to choose).
        defaults: config values of this kind that differ from the config's defaults.
        training_params: the training keys it accepts (``TRAINING_PARAMS`` for a Keras model).
        implicit_params: hyper-parameters that apply only with objective implicit.
    """

    family: str
    formula: str
    preset: dict
    params: frozenset
    default_loss: str | None
    defaults: dict = dataclasses.field(default_factory=dict)
    training_params: frozenset = TRAINING_PARAMS
    implicit_params: frozenset = frozenset()

    @property
    def keras(self) -> bool:
        """Whether ``models.registry`` builds it (and ``models.train`` trains it)."""
        return self.family in KERAS_FAMILIES


_FEATURES = frozenset({"use_id", "use_features", "id_dropout"})
#: The user's history as a user-tower input (``models.two_tower``): list length (0: off), embedding table,
#: whether the user tower keeps the user-id embedding beside it, input dropout of the history in training.
HISTORY_PARAMS = frozenset({"history_max_len", "history_embedding", "history_user_id", "history_dropout"})
_TOWER = _FEATURES | {"tower_layers", "normalize", "biases", "dropout"} | HISTORY_PARAMS

KINDS: dict[str, Kind] = {
    "mf": Kind(
        "two_tower", "s = p_u . q_i",
        {"tower": "id", "biases": False, "head": "dot", "use_features": False}, frozenset(), "in_batch_softmax"),
    "mf_mean": Kind(
        "two_tower", "s = p_u . q_i + a_u + b_i + mu",
        {"tower": "id", "biases": True, "head": "dot", "use_features": False}, frozenset(), "in_batch_softmax"),
    "linear_rs": Kind(
        "two_tower", "s = psi(u) . phi(i),  psi(u) = A x_u + sum_f E_f[x_uf]  (phi alike)",
        {"tower": "linear", "head": "dot"}, _FEATURES | {"biases"}, "in_batch_softmax"),
    "two_tower": Kind(
        "two_tower", "s = psi(u) . phi(i),  psi, phi = MLP(embeddings, continuous features[, mean_{j in h(u)} e_j])"
        " [L2-normalised]",
        {"tower": "mlp", "head": "dot"}, _TOWER, "in_batch_softmax"),
    "two_tower_dense": Kind(
        "two_tower", "s = rho([psi(u), phi(i)]),  rho = MLP",
        {"tower": "mlp", "head": "dense"}, _TOWER | {"head_layers"}, "in_batch_softmax"),
    "item_item": Kind(
        "two_tower", "s = psi(u) . q_i,  psi(u) = sum_{j in h(u)} e_j  (x_u E Q^T: EASE with B = E Q^T of rank d)",
        {}, frozenset({"history_max_len"}), "reconstruction", {"history_max_len": 200}),
    "deepfm": Kind(
        "deepfm",
        "s = w0 + sum_f w_f x_f + sum_{f<g} <v_f, v_g> x_f x_g + MLP([v_1, ..., v_F])",
        {"fm": True, "deep": True, "wide_crosses": False}, _FEATURES | {"deep_layers", "dropout"}, "sampled_bce"),
    "fm": Kind(
        "deepfm", "s = w0 + sum_f w_f x_f + sum_{f<g} <v_f, v_g> x_f x_g",
        {"fm": True, "deep": False, "wide_crosses": False}, _FEATURES, "sampled_bce"),
    "wide_deep": Kind(
        "deepfm", "s = w0 + sum_f w_f x_f + sum_{(a,b) crossed} w_ab[x_ua, z_ib] + MLP([v_1, ..., v_F])",
        {"fm": False, "deep": True, "wide_crosses": True},
        _FEATURES | {"deep_layers", "dropout", "crosses", "cross_buckets"}, "sampled_bce"),
    "gmf": Kind(
        "ncf", "s = h . (p_u * q_i) + b",
        {"gmf": True, "mlp": False, "additive": False, "use_features": False}, frozenset(), "sampled_bce"),
    "mlp_ncf": Kind(
        "ncf", "s = MLP([s_u, t_i])  (s_u, t_i: id and feature embeddings)",
        {"gmf": False, "mlp": True, "additive": False}, _FEATURES | {"mlp_layers", "dropout"}, "sampled_bce"),
    "ancf": Kind(
        "ncf", "s = p_u . q_i + f([s_u, t_i]),  f = MLP",
        {"gmf": False, "mlp": True, "additive": True}, _FEATURES | {"mlp_layers", "dropout"}, "sampled_bce"),
    "neumf": Kind(
        "ncf", "s = phi([p_u * q_i, psi([s_u, t_i])]),  phi linear, psi = MLP",
        {"gmf": True, "mlp": True, "additive": False}, _FEATURES | {"mlp_layers", "dropout"}, "sampled_bce"),
    "als": Kind(
        SPARK_ALS, "s = x_u . y_i,  min sum_(u,i) c_ui (p_ui - x_u . y_i)^2 + reg_param (sum_u n_u |x_u|^2 + "
        "sum_i n_i |y_i|^2)  (implicit: p = 1, c = 1 + alpha r; rating: p = r, c = 1; Spark MLlib ALS, "
        "rank = embedding_dim)",
        {}, frozenset({"max_iter", "reg_param"}), None, training_params=frozenset({"objective", "embedding_dim"}),
        implicit_params=frozenset({"alpha"})),
}

#: The kinds ``models.registry`` builds as Keras models (every kind but ``als``).
KERAS_KINDS = frozenset(k for k, info in KINDS.items() if info.keras)


#: Kinds whose score is a dot product of a user and an item embedding (``model.factorised``): scored in
#: Spark from embedding tables, and usable as the retriever of a two-stage ranking.
FACTORISED_KINDS = frozenset({"mf", "mf_mean", "linear_rs", "two_tower", "item_item", "fm", "gmf", "als"})

#: Config keys of the two-stage ranking, for the kinds that are not factorised.
TWO_STAGE_PARAMS = frozenset({"retrieve_with", "candidates"})


def applicable(kind: str, loss: str | None, objective: str = "implicit") -> frozenset:
    """Every config key a model of ``kind`` may set (with ``loss`` for implicit feedback)."""
    info = KINDS[kind]
    keys = info.training_params | info.params
    if objective == "implicit":
        keys = keys | info.implicit_params
    if kind not in FACTORISED_KINDS:
        keys = keys | TWO_STAGE_PARAMS
    if loss is not None:
        keys = keys | LOSS_PARAMS[loss]
    return keys


def kinds_with(param: str) -> list[str]:
    """The kinds a model hyper-parameter applies to (for error messages)."""
    return sorted(k for k, info in KINDS.items() if param in info.params | info.implicit_params)


def keras_problem(kind: str) -> str | None:
    """Why ``kind`` cannot be built or trained as a Keras model (None: it can)."""
    info = KINDS[kind]
    if info.keras:
        return None
    return (f"kind {kind} (family {info.family}) is not a Keras model: it is trained in Spark by jobs.als.train_als "
            "and scored from its embedding tables")


def loss_problem(kind: str, objective: str, loss: str | None) -> str | None:
    """Why ``kind`` cannot train with this objective and implicit loss (None: it can).

    ``loss`` None means the kind's default loss.
    """
    if KINDS[kind].default_loss is None and loss is not None:
        return f"kind {kind} has no loss to choose (it is not trained by gradient descent); remove loss"
    if kind in KIND_LOSSES:
        if objective != "implicit":
            return (f"kind {kind} learns from the users' histories only: objective implicit with loss "
                    f"{' or '.join(KIND_LOSSES[kind])}, not objective {objective}")
        if loss is not None and loss not in KIND_LOSSES[kind]:
            return f"kind {kind} trains with loss {' or '.join(KIND_LOSSES[kind])}, not {loss}"
    if objective == "implicit" and loss in LOSS_KINDS and kind not in LOSS_KINDS[loss]:
        return f"loss {loss} is for kind {', '.join(LOSS_KINDS[loss])}, not {kind}"
    return None
