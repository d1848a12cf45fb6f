"""The one typed config of a nightrec run, loaded from YAML and validated.

Every key has a default, so an empty file (or no file) is a valid config.
An unknown key or a bad value raises ``ConfigError`` naming the key, what was
given and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from jobs import synthetic
from models.kinds import (
    FACTORISED_KINDS,
    KINDS,
    LOSS_PARAMS,
    LOSSES,
    NEGATIVE_SAMPLERS,
    OBJECTIVES,
    TWO_STAGE_PARAMS,
    applicable,
    kinds_with,
    loss_problem,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Section):
    """Where Spark runs. ``master`` is ``local[N]``/``local[*]`` or a cluster URL."""

    master: str = "local[*]"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(8, ge=1)
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("driver_memory")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if not value[:-1].isdigit() or value[-1].lower() not in "kmgt":
            raise ValueError("must look like 512m or 4g (a number and one of k, m, g, t)")
        return value


class SyntheticConfig(_Section):
    """Size of the built-in synthetic MovieLens-like dataset."""

    n_users: int = Field(3000, ge=10)
    n_items: int = Field(1500, ge=10)
    ratings_per_user: float = Field(40.0, ge=5)
    days: int = Field(120, ge=14)
    end_date: dt.date = dt.date(2024, 6, 30)
    seed: int = 7

    def spec(self) -> synthetic.SyntheticSpec:
        """The generator's spec of this config."""
        return synthetic.SyntheticSpec(**self.model_dump())


class FeatureDeclConfig(_Section):
    """One declared side column of a ``files`` source and how to encode it."""

    column: str
    kind: Literal["continuous", "categorical", "multi_categorical"]
    separator: str = "|"
    prefix: int | None = Field(None, ge=1)

    @field_validator("column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c == "_" for c in value):
            raise ValueError("must be letters, digits or '_' (it becomes the feature column user_<column>/item_<column>)")
        return value


class _FileTable(_Section):
    path: str
    format: Literal["parquet", "csv"] = "parquet"
    sep: str = ","
    encoding: str = "utf-8"


class InteractionColumns(_Section):
    """Which source column holds each canonical interactions column (rating: null for implicit feedback)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    rating: str | None = "rating"
    ts: str = "ts"


class InteractionsTableConfig(_FileTable):
    """The interactions table of a ``files`` source."""

    columns: InteractionColumns = Field(default_factory=InteractionColumns)
    ts_format: Literal["unix_seconds", "unix_millis", "iso8601"] = "unix_seconds"


class SideTableConfig(_FileTable):
    """A users or items table of a ``files`` source: its id column and declared features."""

    id_column: str
    features: list[FeatureDeclConfig] = Field(default_factory=list)


class FilesSourceConfig(_Section):
    """Bring your own data: interactions plus optional users and items tables."""

    interactions: InteractionsTableConfig
    users: SideTableConfig | None = None
    items: SideTableConfig | None = None


class SourceConfig(_Section):
    """Where the events come from. ``kind: synthetic`` needs no files.

    movielens_100k / movielens_1m / movielens_latest read the dataset's
    folder ``path``; ``files`` reads the tables described under ``files``.
    """

    kind: Literal["synthetic", "movielens_100k", "movielens_1m", "movielens_latest", "files"] = "synthetic"
    path: str | None = None
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    files: FilesSourceConfig | None = None

    @model_validator(mode="after")
    def _needs_its_files(self) -> "SourceConfig":
        if self.kind.startswith("movielens") and not self.path:
            raise ValueError(f"source.path: kind {self.kind} needs the folder of the dataset's files")
        if self.kind == "files" and self.files is None:
            raise ValueError("source.files: kind files needs source.files.interactions (path and columns)")
        return self


class IngestConfig(_Section):
    """Validation of the source rows.

    ``rating_min``/``rating_max`` default to the source's declared range
    (1-5; 0.5-5 for MovieLens latest; unchecked for ``files``).
    ``now`` fixes the wall clock of the future-timestamp check (default: the
    clock at run start).
    """

    rating_min: float | None = None
    rating_max: float | None = None
    max_quarantine_share: float = Field(0.05, ge=0, le=1)
    now: dt.datetime | None = None

    @model_validator(mode="after")
    def _ordered_range(self) -> "IngestConfig":
        if self.rating_min is not None and self.rating_max is not None and self.rating_min > self.rating_max:
            raise ValueError(f"ingest: rating_min {self.rating_min} is above rating_max {self.rating_max}")
        return self

    @field_validator("now")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value


class SplitConfig(_Section):
    """Temporal split: the holdout is the last ``holdout_days`` days up to ds."""

    holdout_days: int = Field(7, ge=1)


class FeatureConfig(_Section):
    """Feature stage settings (fitted on the training window only)."""

    min_category_count: int = Field(1, ge=1)
    quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 0.9])
    rating_grid_size: int = Field(64, ge=2)
    impute: Literal["mean", "median"] = "mean"
    imputer: Literal["univariate", "iterative"] = "univariate"
    iterative_sample_rows: int = Field(5000, ge=10)
    iterative_max_iter: int = Field(10, ge=1)
    affinity_column: str | None = "genres"
    max_tags_per_item: int = Field(10, ge=1)
    rows_per_partition: int = Field(500_000, ge=1000)
    example_statistics: Literal["leave_one_out", "point_in_time"] = "leave_one_out"

    @field_validator("quantiles")
    @classmethod
    def _probabilities(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 < q < 1.0 for q in value) or len(set(value)) != len(value):
            raise ValueError("must be distinct probabilities strictly between 0 and 1")
        return sorted(value)


_LAYER_KEYS = ("tower_layers", "head_layers", "deep_layers", "mlp_layers")


class ModelConfig(_Section):
    """One model to train, evaluate and publish under ``model=NAME``.

    ``kind`` picks one of the named models (``models.kinds.KINDS``);
    ``objective`` is ``implicit`` (top-K from interactions) or ``rating``
    (regression on the rating). A key that does not apply to the kind, the
    objective or the loss is refused, so a config never sets something that
    is silently ignored.
    """

    name: str = "two_tower"
    kind: Literal[tuple(KINDS)] = "two_tower"  # type: ignore[valid-type]
    objective: Literal[OBJECTIVES] = "implicit"  # type: ignore[valid-type]
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
    temperature: float = Field(0.1, gt=0)
    log_q: bool = True
    extra_negatives: int = Field(0, ge=0)
    negatives: Literal[NEGATIVE_SAMPLERS] = "uniform"  # type: ignore[valid-type]
    negative_ratio: int = Field(4, ge=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(1024, ge=8)
    learning_rate: float = Field(0.005, gt=0)
    l2: float = Field(0.0, ge=0)
    patience: int = Field(2, ge=0)
    retrieve_with: str | None = None
    candidates: int = Field(200, ge=1)
    history_max_len: int = Field(0, ge=0)
    history_embedding: Literal["shared", "own"] = "shared"
    history_user_id: bool = True
    history_dropout: float = Field(0.0, ge=0, lt=1)
    mask_history: bool = False
    user_weight_power: float = Field(0.0, ge=0, le=1)

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
        allowed = applicable(self.kind, self.resolved_loss) | {"name", "kind"}
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
        allowed = applicable(self.kind, self.resolved_loss) | {"name", "kind"}
        for key in sorted(self.model_fields_set - allowed):
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

    def model_params(self) -> dict[str, Any]:
        """The kind's own hyper-parameters (for ``models.registry.build_model``)."""
        keys = KINDS[self.kind].params | {"embedding_dim", "l2"}
        params = {key: getattr(self, key) for key in sorted(keys)}
        if params.get("crosses") is None:
            params.pop("crosses", None)  # the model's default: every user x item field pair
        return params

    def train_settings(self) -> dict[str, Any]:
        """Keyword arguments of ``models.train.TrainSettings`` (the seed comes from the run)."""
        return {
            "objective": self.objective, "loss": self.resolved_loss, "epochs": self.epochs,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate, "patience": self.patience,
            "temperature": self.temperature, "log_q": self.log_q, "extra_negatives": self.extra_negatives,
            "negatives": self.negatives,
            "negative_ratio": self.negative_ratio, "mask_history": self.mask_history,
            "user_weight_power": self.user_weight_power,
        }


class EvaluationConfig(_Section):
    """Holdout evaluation: Recall@k and nDCG@k beside popularity."""

    k: int = Field(10, ge=1)


class PublishConfig(_Section):
    """What the published recommendations look like."""

    k: int = Field(10, ge=1)
    refit_on_full: bool = True


class ScoringConfig(_Section):
    """Exhaustive top-K scoring: block sizes bound the memory of each Spark task."""

    block_rows: int = Field(128, ge=1)
    item_block_mb: int = Field(256, ge=1)
    group_width: int = Field(32, ge=1)


class NightrecConfig(_Section):
    """The whole run configuration."""

    warehouse: str = "./warehouse"
    seed: int = 42
    spark: SparkConfig = Field(default_factory=SparkConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    keep_work_dir: bool = False

    @model_validator(mode="after")
    def _unique_model_names(self) -> "NightrecConfig":
        names = [m.name for m in self.models]
        if not names:
            raise ValueError("models: list at least one model")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: names must be unique, repeated: {', '.join(dupes)}")
        earlier: dict[str, ModelConfig] = {}
        for m in self.models:
            if m.retrieve_with is not None:
                retriever = earlier.get(m.retrieve_with)
                if retriever is None:
                    listed = "is listed after it" if m.retrieve_with in names else "is not in models"
                    raise ValueError(
                        f"model '{m.name}': retrieve_with '{m.retrieve_with}' {listed}; name a factorised model "
                        f"listed before '{m.name}'"
                    )
                if retriever.kind not in FACTORISED_KINDS:
                    raise ValueError(
                        f"model '{m.name}': retrieve_with '{retriever.name}' is kind {retriever.kind}, not factorised; "
                        f"the retriever must be one of {', '.join(sorted(FACTORISED_KINDS))}"
                    )
            earlier[m.name] = m
        return self

    def config_hash(self) -> str:
        """Short stable hash of the effective config (recorded in manifests)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _allowed(model: type[BaseModel], loc: tuple) -> str:
    """The keys allowed at ``loc`` (for unknown-key messages)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return ""
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        nested = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return ""
        current = nested[0]
    return ", ".join(sorted(current.model_fields))


def _format_error(err: dict, source: str) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    given = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = _allowed(NightrecConfig, err["loc"])
        return f"{source}: unknown key '{key}'. Allowed here: {allowed}."
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if isinstance(given, dict):  # a whole section failed a cross-key rule: the message names the key
        return f"{source}: bad value in '{key}': {message}."
    return f"{source}: bad value for '{key}': {given!r} ({message})."


def parse_config(data: dict | None, source: str = "config") -> NightrecConfig:
    """Validate a dict (as loaded from YAML) into a NightrecConfig."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        return NightrecConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_format_error(e, source) for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> NightrecConfig:
    """Load a YAML config file (or the defaults when ``path`` is None).

    Args:
        path: YAML file; missing keys take their defaults.
        overrides: top-level keys that replace the file's (e.g. from the CLI).
    """
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    if overrides:
        data = {**data, **overrides}
    return parse_config(data, source)
