"""One model entry of the config (``models:``): its kind, objective, loss and the keys that apply.

A key that does not apply to the kind, the objective or the loss is refused,
so a config never sets something that is silently ignored. Training keys take
their defaults from ``models.settings.TrainSettings`` (one set of defaults)
and ``train_settings()`` builds it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from jobs.als import ALSSettings
from models.kinds import (
    FACTORISED_KINDS,
    KINDS,
    LOSS_PARAMS,
    LOSSES,
    NEGATIVE_SAMPLERS,
    OBJECTIVES,
    SPARK_ALS,
    TWO_STAGE_PARAMS,
    applicable,
    kinds_with,
    loss_problem,
)
from models.settings import TrainSettings

_TRAIN = TrainSettings()
_ALS = ALSSettings()
#: TrainSettings fields the config does not set: they come from the run (``train_settings``).
_FROM_RUN = {"seed", "eval_k", "eval_max_users", "loss"}


class Section(BaseModel):
    """A config section: unknown keys refused, values of the wrong type refused (not coerced), immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_LAYER_KEYS = ("tower_layers", "head_layers", "deep_layers", "mlp_layers")


class ModelConfig(Section):
    """One model to train, evaluate and publish under ``model=NAME``.

    ``kind`` picks one of the named models (``models.kinds.KINDS``);
    ``objective`` is ``implicit`` (top-K from interactions) or ``rating``
    (regression on the rating). A key that does not apply to the kind, the
    objective or the loss is refused, so a config never sets something that
    is silently ignored.
    """

    name: str = "two_tower"
    kind: Literal[tuple(KINDS)] = "two_tower"  # type: ignore[valid-type]
    objective: Literal[OBJECTIVES] = _TRAIN.objective  # type: ignore[valid-type]
    loss: Literal[LOSSES] | None = None  # type: ignore[valid-type]
    embedding_dim: int = Field(32, ge=2)
    tower_layers: list[int] = Field(default_factory=lambda: [64])
    head_layers: list[int] = Field(default_factory=lambda: [64])
    deep_layers: list[int] = Field(default_factory=lambda: [64, 32])
    mlp_layers: list[int] = Field(default_factory=lambda: [64, 32, 16])
    normalize: bool = False
    biases: bool = False
    use_id: bool = True
    use_features: bool = True
    id_dropout: float = Field(0.0, ge=0, lt=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    crosses: list[list[str]] | None = None
    cross_buckets: int = Field(1 << 17, ge=1)
    temperature: float = Field(_TRAIN.temperature, gt=0)
    log_q: bool = _TRAIN.log_q
    extra_negatives: int = Field(_TRAIN.extra_negatives, ge=0)
    negatives: Literal[NEGATIVE_SAMPLERS] = _TRAIN.negatives  # type: ignore[valid-type]
    negative_ratio: int = Field(_TRAIN.negative_ratio, ge=1)
    epochs: int = Field(_TRAIN.epochs, ge=1)
    batch_size: int = Field(_TRAIN.batch_size, ge=8)
    learning_rate: float = Field(_TRAIN.learning_rate, gt=0)
    l2: float = Field(0.0, ge=0)
    patience: int = Field(_TRAIN.patience, ge=0)
    retrieve_with: str | None = None
    candidates: int = Field(200, ge=1)
    history_max_len: int = Field(0, ge=0)
    history_embedding: Literal["shared", "own"] = "shared"
    history_user_id: bool = True
    history_dropout: float = Field(0.0, ge=0, lt=1)
    mask_history: bool = _TRAIN.mask_history
    user_weight_power: float = Field(_TRAIN.user_weight_power, ge=0, le=1)
    max_iter: int = Field(_ALS.max_iter, ge=1)
    reg_param: float = Field(_ALS.reg_param, ge=0)
    alpha: float = Field(_ALS.alpha, ge=0)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "_-" for c in value):
            raise ValueError("must be letters, digits, '_' or '-' (it becomes a folder name model=NAME)")
        return value

    @field_validator(*_LAYER_KEYS)
    @classmethod
    def _positive_layers(cls, value: list[int]) -> list[int]:
        if any(width < 1 for width in value):
            raise ValueError("every layer width must be >= 1")
        return value

    @field_validator("crosses")
    @classmethod
    def _pairs(cls, value: list[list[str]] | None) -> list[list[str]] | None:
        if value is not None and any(len(pair) != 2 for pair in value):
            raise ValueError("each cross is a pair [user_feature_column, item_feature_column]")
        return value

    @property
    def resolved_loss(self) -> str | None:
        """The implicit loss in use (None for the rating objective)."""
        if self.objective == "rating":
            return None
        return self.loss or KINDS[self.kind].default_loss

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        """The kind's own defaults (``Kind.defaults``, e.g. item_item's history_max_len) under the given keys."""
        if isinstance(data, dict) and data.get("kind") in KINDS:
            return {**KINDS[data["kind"]].defaults, **data}
        return data

    @model_serializer(mode="wrap")
    def _applicable_keys_only(self, handler) -> dict[str, Any]:
        """Dump only the keys that apply to this kind, objective and loss, so a dump parses again."""
        data = handler(self)
        allowed = applicable(self.kind, self.resolved_loss, self.objective) | {"name", "kind"}
        if self.objective == "rating":
            allowed = allowed - {"loss"}
        if self.retrieve_with is None:
            allowed = allowed - TWO_STAGE_PARAMS
        return {key: value for key, value in data.items() if key in allowed}

    @model_validator(mode="after")
    def _keys_apply(self) -> "ModelConfig":
        if self.objective == "rating" and "loss" in self.model_fields_set:
            raise ValueError(f"model '{self.name}': 'loss' is for objective implicit; objective rating trains on MSE")
        problem = loss_problem(self.kind, self.objective, self.loss)
        if problem:
            raise ValueError(f"model '{self.name}': {problem}")
        if self.kind == "item_item" and self.history_max_len < 1:
            raise ValueError(f"model '{self.name}': kind item_item represents each user by their history; "
                             "history_max_len must be >= 1 (default 200)")
        allowed = applicable(self.kind, self.resolved_loss, self.objective) | {"name", "kind"}
        for key in sorted(self.model_fields_set - allowed):
            if not KINDS[self.kind].keras:
                raise ValueError(
                    f"model '{self.name}': key '{key}' does not apply to kind {self.kind} with objective "
                    f"{self.objective} (it takes {', '.join(sorted(allowed - {'name', 'kind'}))}); remove it")
            kinds = kinds_with(key)
            if key in TWO_STAGE_PARAMS:
                raise ValueError(
                    f"model '{self.name}': key '{key}' does not apply to kind {self.kind}: a factorised model is "
                    f"scored exhaustively from its embeddings; two-stage ranking is for kinds "
                    f"{', '.join(sorted(set(KINDS) - FACTORISED_KINDS))}; remove it"
                )
            if kinds:
                hint = f"it applies to kind {', '.join(kinds)}"
            else:
                losses = [loss for loss, keys in LOSS_PARAMS.items() if key in keys]
                hint = f"it applies to objective implicit with loss {', '.join(losses)}"
            raise ValueError(
                f"model '{self.name}': key '{key}' does not apply to kind {self.kind} with objective "
                f"{self.objective} ({hint}); remove it"
            )
        if self.history_embedding != "shared" and not self.history_max_len:
            raise ValueError(f"model '{self.name}': history_embedding '{self.history_embedding}' needs "
                             "history_max_len >= 1 (0 turns the user history input off); set history_max_len "
                             "or remove history_embedding")
        if self.mask_history and not self.history_max_len:
            raise ValueError(f"model '{self.name}': mask_history masks softmax negatives found in the user's "
                             "history; it needs history_max_len >= 1")
        if self.history_dropout and not self.history_max_len:
            raise ValueError(f"model '{self.name}': history_dropout needs history_max_len >= 1 (the history input "
                             "is off at 0)")
        if not self.history_user_id and not self.history_max_len:
            raise ValueError(f"model '{self.name}': history_user_id false represents users by their history "
                             "instead of their id; it needs history_max_len >= 1")
        if self.history_max_len and self.history_embedding == "shared" and not self.use_id:
            raise ValueError(f"model '{self.name}': history_embedding 'shared' reuses the item id embedding, which "
                             "use_id false removes; set history_embedding: own or use_id: true")
        if "candidates" in self.model_fields_set and self.retrieve_with is None:
            raise ValueError(f"model '{self.name}': 'candidates' needs 'retrieve_with' (the model that retrieves them)")
        for key in _LAYER_KEYS:
            if key in allowed and not getattr(self, key) and key != "tower_layers":
                raise ValueError(f"model '{self.name}': '{key}' needs at least one layer for kind {self.kind}")
        return self

    def _keras_only(self, what: str) -> None:
        if not KINDS[self.kind].keras:
            raise ValueError(f"model '{self.name}': kind {self.kind} is trained in Spark, not by models.train: "
                             f"it has no {what}; use als_settings()")

    def model_params(self) -> dict[str, Any]:
        """The kind's own hyper-parameters (for ``models.registry.build_model``)."""
        self._keras_only("Keras model parameters")
        keys = KINDS[self.kind].params | {"embedding_dim", "l2"}
        params = {key: getattr(self, key) for key in sorted(keys)}
        if params.get("crosses") is None:
            params.pop("crosses", None)  # the model's default: every user x item field pair
        return params

    def train_settings(self, *, seed: int, eval_k: int, epochs: int | None = None) -> TrainSettings:
        """How to train this model (``models.train.train_model``); ``epochs`` overrides the configured maximum."""
        self._keras_only("Keras training settings")
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainSettings) if f.name not in _FROM_RUN}
        if epochs is not None:
            given["epochs"] = epochs
        return TrainSettings(**given, loss=self.resolved_loss, seed=seed, eval_k=eval_k)

    def als_settings(self, *, seed: int) -> ALSSettings:
        """How to train a model of kind ``als`` (``jobs.als.train_als``): rank = ``embedding_dim``."""
        if KINDS[self.kind].family != SPARK_ALS:
            raise ValueError(f"model '{self.name}': als_settings is for kind als, not {self.kind}; "
                             "use train_settings() and model_params()")
        return ALSSettings(objective=self.objective, rank=self.embedding_dim, max_iter=self.max_iter,
                           reg_param=self.reg_param, alpha=self.alpha, seed=seed)

    def scoring_mode(self) -> str:
        """How this model's recommendations are selected (for the manifest)."""
        if self.retrieve_with is not None:
            return f"two-stage: top {self.candidates} unseen items by {self.retrieve_with}, ranked by {self.name}"
        return "exhaustive"
