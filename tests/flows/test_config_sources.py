"""The source, ingest and features sections of the config."""

import datetime as dt

import pytest

from flows.config import ConfigError, parse_config


def test_defaults():
    cfg = parse_config({})
    assert cfg.source.kind == "synthetic" and cfg.source.files is None
    assert cfg.ingest.max_quarantine_share == 0.05 and cfg.ingest.now is None
    assert cfg.ingest.rating_min is None and cfg.ingest.rating_max is None
    assert cfg.features.quantiles == [0.1, 0.25, 0.5, 0.75, 0.9]
    assert cfg.features.imputer == "univariate" and cfg.features.impute == "mean"


def test_files_source_with_mapping_and_declarations():
    cfg = parse_config({
        "source": {"kind": "files", "files": {
            "interactions": {"path": "/data/events.csv", "format": "csv", "sep": ";",
                             "columns": {"user_id": "who", "item_id": "what", "rating": None, "ts": "when"},
                             "ts_format": "iso8601"},
            "items": {"path": "/data/items.parquet", "id_column": "sku",
                      "features": [{"column": "tags", "kind": "multi_categorical", "separator": ","},
                                   {"column": "price", "kind": "continuous"}]},
        }},
        "ingest": {"now": "2024-07-01T00:00:00", "rating_min": 0, "rating_max": 10},
    })
    files = cfg.source.files
    assert files.interactions.columns.rating is None and files.interactions.columns.user_id == "who"
    assert [f.kind for f in files.items.features] == ["multi_categorical", "continuous"]
    assert cfg.ingest.now == dt.datetime(2024, 7, 1, tzinfo=dt.timezone.utc)  # naive means UTC


def test_movielens_needs_a_path_and_files_needs_tables():
    with pytest.raises(ConfigError, match=r"source.path: kind movielens_1m needs the folder"):
        parse_config({"source": {"kind": "movielens_1m"}})
    with pytest.raises(ConfigError, match=r"source.files: kind files needs source.files.interactions"):
        parse_config({"source": {"kind": "files"}})
    with pytest.raises(ConfigError, match=r"unknown key 'source.files.interactions.columns.user'"):
        parse_config({"source": {"kind": "files", "files": {"interactions": {"path": "x", "columns": {"user": "u"}}}}})


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"'ingest.max_quarantine_share': 1.5"):
        parse_config({"ingest": {"max_quarantine_share": 1.5}})
    with pytest.raises(ConfigError, match=r"rating_min 5.0 is above rating_max 1.0"):
        parse_config({"ingest": {"rating_min": 5, "rating_max": 1}})
    with pytest.raises(ConfigError, match=r"'features.quantiles': \[0.5, 1.0\] \(must be distinct probabilities"):
        parse_config({"features": {"quantiles": [0.5, 1.0]}})
    with pytest.raises(ConfigError, match=r"'features.imputer': 'knn'"):
        parse_config({"features": {"imputer": "knn"}})
    with pytest.raises(ConfigError, match=r"features.0.column': 'list price' \(must be letters, digits or '_'"):
        parse_config({"source": {"kind": "files", "files": {"interactions": {"path": "x"}, "users": {
            "path": "u", "id_column": "id", "features": [{"column": "list price", "kind": "continuous"}]}}}})
