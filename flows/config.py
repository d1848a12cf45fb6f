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
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from flows.model_config import ModelConfig, Section
from jobs import evaluate, features, sources, synthetic
from jobs.schema import FeatureDecl
from jobs.ann import AnnSettings
from jobs.recommend import ScoringSettings
from models.kinds import FACTORISED_KINDS
from models.settings import LAUNCHERS, LaunchSettings

#: The model name of the related items' co-occurrence baseline.
CO_OCCURRENCE = "co_occurrence"
_SYNTHETIC = synthetic.SyntheticSpec()
_FEATURES = features.FeatureSettings()
_SCORING = ScoringSettings()
_ANN = AnnSettings()
_LAUNCH = LaunchSettings()


class ConfigError(ValueError):
    """A config file that cannot be used; the message says which key and why."""


class SparkConfig(Section):
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


class SyntheticConfig(Section):
    """Size of the built-in synthetic MovieLens-like dataset."""

    n_users: int = Field(_SYNTHETIC.n_users, ge=10)
    n_items: int = Field(_SYNTHETIC.n_items, ge=10)
    ratings_per_user: float = Field(_SYNTHETIC.ratings_per_user, ge=5)
    days: int = Field(_SYNTHETIC.days, ge=14)
    end_date: dt.date = Field(_SYNTHETIC.end_date, strict=False)  # YAML and JSON give dates as text too
    seed: int = _SYNTHETIC.seed

    def spec(self) -> synthetic.SyntheticSpec:
        """The generator's spec of this config."""
        return synthetic.SyntheticSpec(**self.model_dump())


class FeatureDeclConfig(Section):
    """One declared side column of a ``files`` source and how to encode it."""

    column: str
    kind: Literal["continuous", "categorical", "multi_categorical"]
    separator: str = FeatureDecl.separator
    prefix: int | None = Field(FeatureDecl.prefix, ge=1)

    @field_validator("column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c == "_" for c in value):
            raise ValueError("must be letters, digits or '_' (it becomes the feature column user_<column>/item_<column>)")
        return value


class _FileTable(Section):
    path: str
    format: Literal["parquet", "csv"] = sources.FileTable.format
    sep: str = sources.FileTable.sep
    encoding: str = sources.FileTable.encoding


class InteractionColumns(Section):
    """Which source column holds each canonical interactions column (rating: null for implicit feedback)."""

    user_id: str = sources.InteractionColumns.user_id
    item_id: str = sources.InteractionColumns.item_id
    rating: str | None = sources.InteractionColumns.rating
    ts: str = sources.InteractionColumns.ts


class InteractionsTableConfig(_FileTable):
    """The interactions table of a ``files`` source."""

    columns: InteractionColumns = Field(default_factory=InteractionColumns)
    ts_format: Literal["unix_seconds", "unix_millis", "iso8601"] = sources.InteractionsFile.ts_format


class SideTableConfig(_FileTable):
    """A users or items table of a ``files`` source: its id column and declared features."""

    id_column: str
    features: list[FeatureDeclConfig] = Field(default_factory=list)


class FilesSourceConfig(Section):
    """Bring your own data: interactions plus optional users and items tables."""

    interactions: InteractionsTableConfig
    users: SideTableConfig | None = None
    items: SideTableConfig | None = None

    def spec(self) -> sources.FilesSource:
        """The source's tables as ``jobs.sources`` describes them (the same keys, one level for one)."""
        return sources.FilesSource(**self.model_dump())


class SourceConfig(Section):
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

    def spec(self) -> sources.SourceSpec:
        """What ``jobs.sources.load_source`` reads."""
        return sources.SourceSpec(kind=self.kind, path=self.path, synthetic=self.synthetic.spec(),
                                  files=self.files.spec() if self.files is not None else None)


class IngestConfig(Section):
    """Validation of the source rows.

    ``rating_min``/``rating_max`` default to the source's declared range
    (1-5; 0.5-5 for MovieLens latest; unchecked for ``files``).
    ``now`` fixes the wall clock of the future-timestamp check (default: the
    clock at run start).
    """

    rating_min: float | None = None
    rating_max: float | None = None
    max_quarantine_share: float = Field(0.05, ge=0, le=1)
    now: dt.datetime | None = Field(None, strict=False)

    def rating_range(self, declared: tuple[float, float] | None) -> tuple[float | None, float | None]:
        """The (min, max) ratings to accept: the configured bounds, else the source's ``declared`` ones."""
        low, high = declared or (None, None)
        return (self.rating_min if self.rating_min is not None else low,
                self.rating_max if self.rating_max is not None else high)

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


class SplitConfig(Section):
    """Temporal split: the holdout is the last ``holdout_days`` days up to ds."""

    holdout_days: int = Field(7, ge=1)


class FeatureConfig(Section):
    """Feature stage settings (fitted on the training window only); ``settings()`` builds the job's."""

    min_category_count: int = Field(_FEATURES.min_category_count, ge=1)
    quantiles: list[float] = Field(default_factory=lambda: list(_FEATURES.quantiles))
    rating_grid_size: int = Field(_FEATURES.rating_grid_size, ge=2)
    impute: Literal["mean", "median"] = _FEATURES.impute
    imputer: Literal["univariate", "iterative"] = _FEATURES.imputer
    iterative_sample_rows: int = Field(_FEATURES.iterative_sample_rows, ge=10)
    iterative_max_iter: int = Field(_FEATURES.iterative_max_iter, ge=1)
    affinity_column: str | None = _FEATURES.affinity_column
    max_tags_per_item: int = Field(_FEATURES.max_tags_per_item, ge=1)
    rows_per_partition: int = Field(_FEATURES.rows_per_partition, ge=1000)
    example_statistics: Literal["leave_one_out", "point_in_time"] = _FEATURES.example_statistics

    @field_validator("quantiles")
    @classmethod
    def _probabilities(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 < q < 1.0 for q in value) or len(set(value)) != len(value):
            raise ValueError("must be distinct probabilities strictly between 0 and 1")
        return sorted(value)

    def settings(self, seed: int) -> features.FeatureSettings:
        """The feature stage's settings (``jobs.features.FeatureSettings``) of this section and the run's seed."""
        return features.FeatureSettings(**self.model_dump(), seed=seed)


class EvaluationConfig(Section):
    """Holdout evaluation: ranking and beyond-accuracy metrics at k beside the baselines, by slice.

    ``min_holdout_users``: fewer evaluated holdout users than this and the
    night cannot rank models: the run warns and the gate holds every model
    back (``gate.publish_anyway`` overrides). ``activity_edges``: the upper
    training-event count of each user-activity slice (5, 20, 100: 1-5, 6-20,
    21-100, >100). ``slices: false`` evaluates slice "all" only. ``als_baseline``:
    Spark MLlib ALS (implicit, Spark's defaults) beside popularity as scorer "als".
    """

    k: int = Field(10, ge=1)
    min_holdout_users: int = Field(10, ge=0)
    slices: bool = True
    als_baseline: bool = True
    activity_edges: list[int] = Field(default_factory=lambda: list(evaluate.DEFAULT_ACTIVITY_EDGES))

    @field_validator("activity_edges")
    @classmethod
    def _edges(cls, value: list[int]) -> list[int]:
        evaluate.activity_buckets(value)  # raises with the rule and an example
        return value


class GateConfig(Section):
    """The quality gate: a model whose holdout figure is below popularity's, or more than ``margin``
    (relative) below the last committed night of the same model, is not published.

    ``publish_anyway`` (CLI ``--publish-anyway``) publishes regardless; the
    decision and the override are recorded in the commit record and the
    recommendations manifests.
    """

    enabled: bool = True
    metric: Literal[evaluate.RANKING_METRICS] = "ndcg"  # type: ignore[valid-type]
    margin: float = Field(0.05, ge=0.0, lt=1.0, strict=False)
    publish_anyway: bool = False


class RelatedItemsConfig(Section):
    """The ``related_items`` tables: every item's top-``k`` other items, for each factorised model (cosine of
    its item embeddings; ``item_item``: its item-item weights) and the co-occurrence baseline (Jaccard).

    ``models``: which models (null: every factorised model). Each is evaluated on the holdout by
    HitRate@``k`` of a user's last training item (metric ``related_hit_rate``).
    """

    enabled: bool = True
    k: int = Field(10, ge=1)
    models: list[str] | None = None
    co_occurrence: bool = True


class PublishConfig(Section):
    """What the published recommendations look like."""

    k: int = Field(10, ge=1)
    refit_on_full: bool = True
    report_nights: int = Field(30, ge=0)


class AnnConfig(Section):
    """The approximate index of ``scoring.method: ann`` (``jobs.ann.AnnSettings``: what each key does)."""

    index: Literal["flat", "ivf", "hnsw"] = _ANN.index
    nlist: int | None = Field(_ANN.nlist, ge=1)
    nprobe: int = Field(_ANN.nprobe, ge=1)
    hnsw_m: int = Field(_ANN.hnsw_m, ge=1)
    ef_construction: int = Field(_ANN.ef_construction, ge=1)
    ef_search: int = Field(_ANN.ef_search, ge=1)
    extra_candidates: int = Field(_ANN.extra_candidates, ge=0)
    candidate_multiple: float = Field(_ANN.candidate_multiple, ge=1, strict=False)
    recall_floor: float = Field(0.95, ge=0, le=1, strict=False)
    recall_sample_users: int = Field(1000, ge=1)


class ScoringConfig(Section):
    """Top-K scoring: exact (every item) or, for factorised models, ann; block sizes bound each task's memory."""

    method: Literal["exact", "ann"] = "exact"
    block_rows: int = Field(_SCORING.block_rows, ge=1)
    item_block_mb: int = Field(_SCORING.item_block_mb, ge=1)
    group_width: int = Field(_SCORING.group_width, ge=1)
    ann: AnnConfig = Field(default_factory=AnnConfig)

    def settings(self, seed: int = 0) -> ScoringSettings:
        index = self.ann.model_dump(exclude={"recall_floor", "recall_sample_users"})
        return ScoringSettings(method=self.method, block_rows=self.block_rows, item_block_mb=self.item_block_mb,
                               group_width=self.group_width, ann=AnnSettings(**index, seed=seed))


class ScheduleConfig(Section):
    """When the nightly runs (``nightrec serve`` and ``nightrec deploy``); a scheduled run's ds is the day
    before its start, in ``timezone``."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule  # the schedule Prefect will run

        try:
            CronSchedule(cron=value)
        except ValueError:
            raise ValueError("not a cron expression (minute hour day month weekday); e.g. '0 3 * * *' is 03:00 "
                             "every day") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone name, e.g. UTC or Europe/Berlin") from None
        return value

    def yesterday(self, now: dt.datetime | None = None) -> dt.date:
        """The ds of a run started ``now`` (default: the clock): the previous day in ``timezone``."""
        import zoneinfo

        now = now or dt.datetime.now(dt.timezone.utc)
        return now.astimezone(zoneinfo.ZoneInfo(self.timezone)).date() - dt.timedelta(days=1)


class RunConfig(Section):
    """How a run guards itself: its lock's lease and the retries of steps that touch storage."""

    lease_s: float = Field(120.0, ge=1)
    retries: int = Field(2, ge=0)
    retry_delays_s: list[float] = Field(default_factory=lambda: [10.0, 60.0])

    @field_validator("retry_delays_s")
    @classmethod
    def _delays(cls, value: list[float]) -> list[float]:
        if not value or any(d < 0 for d in value):
            raise ValueError("list at least one delay, each >= 0 seconds (the last repeats for later retries)")
        return value


class RetentionConfig(Section):
    """What is kept: replaced versions of each published partition, and unfinished runs' work folders."""

    keep_versions: int = Field(3, ge=0)
    failed_work_days: float = Field(3.0, ge=0)

class TrainingConfig(Section):
    """How every model trains: on how many workers, launched how, with what checkpoints and timeouts.

    ``workers: 1`` with ``launcher: local`` (the default) trains in the flow's
    own process. ``local`` starts N worker processes on this machine;
    ``spark`` runs one worker per task of a barrier stage on ``spark.master``'s
    cluster. The models' ``batch_size`` and ``learning_rate`` are global: the
    same whatever ``workers`` is.
    """

    workers: int = Field(_LAUNCH.workers, ge=1)
    launcher: Literal[LAUNCHERS] = _LAUNCH.launcher  # type: ignore[valid-type]
    checkpoint_every_steps: int = Field(_LAUNCH.checkpoint_every_steps, ge=0)
    worker_timeout_s: float = Field(_LAUNCH.worker_timeout_s, gt=0, strict=False)

    def settings(self) -> LaunchSettings:
        """The launch settings (``models.launch.train``) of this section."""
        return LaunchSettings(**self.model_dump())


class NightrecConfig(Section):
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
    gate: GateConfig = Field(default_factory=GateConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    related_items: RelatedItemsConfig = Field(default_factory=RelatedItemsConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
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
        related = self.related_items
        if related.enabled and related.co_occurrence and CO_OCCURRENCE in names:
            raise ValueError(f"models: the name '{CO_OCCURRENCE}' is the related items' co-occurrence baseline "
                             f"(related_items.co_occurrence); name the model differently")
        for name in related.models or []:
            if name not in names:
                raise ValueError(f"related_items.models: '{name}' is not in models ({', '.join(names)})")
            kind = self.model(name).kind
            if kind not in FACTORISED_KINDS:
                raise ValueError(f"related_items.models: '{name}' is kind {kind}, not factorised; related items "
                                 f"come from item embeddings ({', '.join(sorted(FACTORISED_KINDS))})")
        return self

    def related_models(self) -> list[str]:
        """The models whose related items the night computes (none when ``related_items.enabled`` is off)."""
        if not self.related_items.enabled:
            return []
        if self.related_items.models is not None:
            return list(self.related_items.models)
        return [m.name for m in self.models if m.kind in FACTORISED_KINDS]

    def model(self, name: str) -> ModelConfig:
        """The model entry named ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r} in models ({', '.join(m.name for m in self.models)})")

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
