import pytest

from flows.config import ConfigError, NightrecConfig, load_config, parse_config


def test_defaults_just_run():
    cfg = load_config(None)
    assert cfg.warehouse == "./warehouse"
    assert cfg.source.kind == "synthetic"
    assert [m.name for m in cfg.models] == ["two_tower"]
    assert cfg.publish.k == 10


def test_yaml_file_overrides_some_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("warehouse: /data/wh\npublish:\n  k: 5\nmodels:\n  - name: tt_small\n    embedding_dim: 8\n")
    cfg = load_config(path)
    assert cfg.warehouse == "/data/wh" and cfg.publish.k == 5
    assert cfg.models[0].name == "tt_small" and cfg.models[0].embedding_dim == 8
    assert cfg.models[0].epochs == NightrecConfig().models[0].epochs


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        parse_config({"publish": {"k": 5, "topk": 3}}, "nightly.yaml")
    message = str(err.value)
    assert "nightly.yaml: unknown key 'publish.topk'" in message
    assert "Allowed here: k, refit_on_full" in message


def test_unknown_key_inside_a_model_list():
    with pytest.raises(ConfigError, match=r"unknown key 'models.0.layers'.*tower_layers"):
        parse_config({"models": [{"name": "a", "layers": [3]}]})


def test_bad_value_names_key_value_and_rule():
    with pytest.raises(ConfigError, match=r"bad value for 'publish.k': 0 \(Input should be greater than or equal to 1\)"):
        parse_config({"publish": {"k": 0}})
    with pytest.raises(ConfigError, match=r"'spark.driver_memory': '4 gigs' \(must look like 512m or 4g"):
        parse_config({"spark": {"driver_memory": "4 gigs"}})
    with pytest.raises(ConfigError, match=r"'source.kind': 'csv'"):
        parse_config({"source": {"kind": "csv"}})


def test_duplicate_model_names_are_refused():
    with pytest.raises(ConfigError, match="repeated: a"):
        parse_config({"models": [{"name": "a"}, {"name": "a"}]})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("publish: [k: 5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_hash_changes_with_content():
    assert parse_config({}).config_hash() == parse_config({}).config_hash()
    assert parse_config({"seed": 1}).config_hash() != parse_config({"seed": 2}).config_hash()


def test_models_section_kinds_objectives_and_their_keys():
    cfg = parse_config({"models": [
        {"name": "mf", "kind": "mf_mean", "objective": "rating", "embedding_dim": 8},
        {"name": "dfm", "kind": "deepfm", "deep_layers": [16], "negatives": "popularity", "negative_ratio": 2},
        {"name": "tt", "kind": "two_tower", "normalize": True, "temperature": 0.05},
    ]})
    mf, dfm, tt = cfg.models
    assert mf.resolved_loss is None and mf.model_params() == {"embedding_dim": 8, "l2": 0.0}
    assert mf.train_settings(seed=1, eval_k=10).objective == "rating"
    assert dfm.resolved_loss == "sampled_bce" and dfm.model_params()["deep_layers"] == [16]
    dfm_settings = dfm.train_settings(seed=1, eval_k=10)
    assert dfm_settings.negatives == "popularity" and dfm_settings.negative_ratio == 2
    assert tt.resolved_loss == "in_batch_softmax" and tt.model_params()["normalize"] is True


def test_a_key_of_another_kind_or_loss_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"'models.0': model 'a': key 'tower_layers' does not apply to kind mf "
                                          r".*it applies to kind two_tower, two_tower_dense"):
        parse_config({"models": [{"name": "a", "kind": "mf", "tower_layers": [4]}]})
    with pytest.raises(ConfigError, match=r"key 'negatives' does not apply .* loss sampled_bce"):
        parse_config({"models": [{"name": "a", "kind": "two_tower", "negatives": "uniform"}]})
    with pytest.raises(ConfigError, match=r"'loss' is for objective implicit"):
        parse_config({"models": [{"name": "a", "kind": "fm", "objective": "rating", "loss": "sampled_bce"}]})
    with pytest.raises(ConfigError, match=r"'models.0.kind': 'svd' \(Input should be 'mf', 'mf_mean'"):
        parse_config({"models": [{"name": "a", "kind": "svd"}]})
    with pytest.raises(ConfigError, match=r"'models.0.negative_ratio': 0"):
        parse_config({"models": [{"name": "a", "kind": "gmf", "negative_ratio": 0}]})
    with pytest.raises(ConfigError, match=r"'deep_layers' needs at least one layer"):
        parse_config({"models": [{"name": "a", "kind": "wide_deep", "deep_layers": []}]})


def _models_error(models):
    with pytest.raises(ConfigError) as err:
        parse_config({"models": models}, "nightly.yaml")
    return str(err.value)


def test_two_stage_keys_are_checked():
    cfg = parse_config({"models": [{"name": "tt", "kind": "two_tower"},
                                   {"name": "dfm", "kind": "deepfm", "retrieve_with": "tt", "candidates": 50}]}, "x")
    assert cfg.models[1].retrieve_with == "tt" and cfg.models[1].candidates == 50
    assert cfg.models[0].retrieve_with is None and cfg.models[0].candidates == 200
    message = _models_error([{"name": "dfm", "kind": "deepfm", "retrieve_with": "tt"}, {"name": "tt"}])
    assert "model 'dfm': retrieve_with 'tt' is listed after it" in message
    assert "retrieve_with 'nope' is not in models" in _models_error(
        [{"name": "tt"}, {"name": "dfm", "kind": "deepfm", "retrieve_with": "nope"}])
    message = _models_error([{"name": "n", "kind": "neumf"}, {"name": "dfm", "kind": "deepfm", "retrieve_with": "n"}])
    assert "retrieve_with 'n' is kind neumf, not factorised" in message
    message = _models_error([{"name": "tt", "kind": "two_tower", "retrieve_with": "x"}])
    assert "models.0" in message and "key 'retrieve_with' does not apply to kind two_tower" in message
    assert "'candidates' needs 'retrieve_with'" in _models_error([{"name": "d", "kind": "deepfm", "candidates": 9}])


def test_a_dumped_config_parses_again_to_the_same_config():
    # `nightrec config` prints cfg.model_dump() for a user to keep as a file: every kind, objective and loss
    # must survive the round trip.
    from models.kinds import KIND_LOSSES, KINDS

    models = [{"name": f"{kind}_{objective}", "kind": kind, "objective": objective}
              for kind in sorted(KINDS) for objective in ("implicit", "rating")
              if not (kind in KIND_LOSSES and objective == "rating")]
    models.append({"name": "tt_bce", "kind": "two_tower", "loss": "sampled_bce", "negative_ratio": 3})
    models.append({"name": "ranker", "kind": "deepfm", "retrieve_with": "mf_implicit", "candidates": 30})
    cfg = parse_config({"models": models}, "nightly.yaml")
    dumped = cfg.model_dump(mode="json")
    again = parse_config(dumped, "dumped")
    assert again == cfg and again.config_hash() == cfg.config_hash()
    by_name = {m["name"]: m for m in dumped["models"]}
    assert "tower_layers" in by_name["two_tower_implicit"] and "tower_layers" not in by_name["mf_implicit"]
    item_item = by_name["item_item_implicit"]
    assert item_item["history_max_len"] == 200 and "temperature" not in item_item
    assert "loss" not in by_name["mf_rating"] and "temperature" not in by_name["mf_rating"]
    assert by_name["tt_bce"]["negative_ratio"] == 3 and "temperature" not in by_name["tt_bce"]
    assert by_name["ranker"]["candidates"] == 30 and "candidates" not in by_name["deepfm_implicit"]


def test_history_keys_are_checked():
    cfg = parse_config({"models": [{"name": "h", "kind": "two_tower", "history_max_len": 50,
                                    "history_embedding": "own"}]})
    assert cfg.models[0].model_params()["history_max_len"] == 50
    assert cfg.models[0].model_params()["history_embedding"] == "own"
    assert parse_config({}).models[0].model_params()["history_max_len"] == 0
    assert "key 'history_max_len' does not apply to kind mf" in _models_error(
        [{"name": "m", "kind": "mf", "history_max_len": 5}])
    assert "history_embedding 'own' needs history_max_len >= 1" in _models_error(
        [{"name": "h", "kind": "two_tower", "history_embedding": "own"}])
    assert "history_embedding 'shared' reuses the item id embedding" in _models_error(
        [{"name": "h", "kind": "two_tower", "history_max_len": 5, "use_id": False}])
    assert "'models.0.history_max_len': -1" in _models_error([{"name": "h", "history_max_len": -1}])
    assert "mask_history masks softmax negatives found in the user's history; it needs history_max_len" in \
        _models_error([{"name": "h", "kind": "two_tower", "mask_history": True}])
    assert parse_config({"models": [{"name": "h", "history_max_len": 5, "mask_history": True}]}).models[0] \
        .train_settings(seed=1, eval_k=10).mask_history is True
    assert "key 'mask_history' does not apply" in _models_error(
        [{"name": "h", "kind": "two_tower", "objective": "rating", "history_max_len": 5, "mask_history": True}])
    assert "history_dropout needs history_max_len >= 1" in _models_error(
        [{"name": "h", "kind": "two_tower", "history_dropout": 0.5}])
    assert "history_user_id false represents users by their history" in _models_error(
        [{"name": "h", "kind": "two_tower", "history_user_id": False}])


def test_full_softmax_loss_and_its_keys():
    cfg = parse_config({"models": [{"name": "f", "kind": "two_tower", "loss": "full_softmax", "temperature": 0.05,
                                    "history_max_len": 5, "mask_history": True}]})
    settings = cfg.models[0].train_settings(seed=1, eval_k=10)
    assert settings.loss == "full_softmax" and settings.temperature == 0.05 and settings.mask_history
    assert "key 'extra_negatives' does not apply to kind two_tower with objective implicit (it applies to " \
           "objective implicit with loss in_batch_softmax); remove it" in _models_error(
               [{"name": "f", "loss": "full_softmax", "extra_negatives": 8}])
    assert "key 'log_q' does not apply" in _models_error([{"name": "f", "loss": "full_softmax", "log_q": False}])
    assert parse_config({"models": [{"name": "w", "loss": "full_softmax", "user_weight_power": 0.5}]}).models[0] \
        .train_settings(seed=1, eval_k=10).user_weight_power == 0.5
    assert "'models.0.user_weight_power': 2" in _models_error([{"name": "w", "user_weight_power": 2}])
    assert "key 'user_weight_power' does not apply to kind deepfm" in _models_error(
        [{"name": "w", "kind": "deepfm", "user_weight_power": 0.5}])
    dumped = cfg.model_dump(mode="json")["models"][0]
    assert dumped["loss"] == "full_softmax" and "log_q" not in dumped and "extra_negatives" not in dumped


def test_item_item_keys_are_checked():
    cfg = parse_config({"models": [{"name": "ii", "kind": "item_item"}]})
    model = cfg.models[0]
    assert model.resolved_loss == "reconstruction" and model.model_params()["history_max_len"] == 200
    assert model.train_settings(seed=1, eval_k=10).loss == "reconstruction"
    assert parse_config({"models": [{"name": "ii", "kind": "item_item", "history_max_len": 50, "l2": 0.3}]}) \
        .models[0].model_params() == {"embedding_dim": 32, "history_max_len": 50, "l2": 0.3}
    assert "model 'ii': kind item_item learns from the users' histories only" in _models_error(
        [{"name": "ii", "kind": "item_item", "objective": "rating"}])
    assert "model 'ii': kind item_item trains with loss reconstruction, not full_softmax" in _models_error(
        [{"name": "ii", "kind": "item_item", "loss": "full_softmax"}])
    assert "model 'tt': loss reconstruction is for kind item_item, not two_tower" in _models_error(
        [{"name": "tt", "kind": "two_tower", "loss": "reconstruction"}])
    assert "history_max_len must be >= 1 (default 200)" in _models_error(
        [{"name": "ii", "kind": "item_item", "history_max_len": 0}])
    assert "key 'temperature' does not apply to kind item_item" in _models_error(
        [{"name": "ii", "kind": "item_item", "temperature": 0.5}])


def test_als_keys_are_checked():
    from jobs.als import ALSSettings

    cfg = parse_config({"models": [
        {"name": "als", "kind": "als", "embedding_dim": 16, "max_iter": 5, "reg_param": 0.5, "alpha": 10.0},
        {"name": "als_rating", "kind": "als", "objective": "rating"},
        {"name": "dfm", "kind": "deepfm", "retrieve_with": "als"},
    ]})
    implicit, explicit = cfg.models[0], cfg.models[1]
    assert implicit.als_settings(seed=7) == ALSSettings(objective="implicit", rank=16, max_iter=5, reg_param=0.5,
                                                        alpha=10.0, seed=7)
    assert explicit.als_settings(seed=7) == ALSSettings(objective="rating", rank=32, seed=7)
    assert implicit.resolved_loss is None and "alpha" not in explicit.model_dump()
    assert "model 'a': key 'alpha' does not apply to kind als with objective rating (it takes embedding_dim, " \
           "max_iter, objective, reg_param)" in _models_error([{"name": "a", "kind": "als", "objective": "rating",
                                                               "alpha": 2.0}])
    assert "key 'epochs' does not apply to kind als" in _models_error([{"name": "a", "kind": "als", "epochs": 3}])
    assert "kind als has no loss to choose" in _models_error([{"name": "a", "kind": "als", "loss": "sampled_bce"}])
    assert "key 'max_iter' does not apply to kind two_tower with objective implicit (it applies to kind als)" in \
        _models_error([{"name": "a", "kind": "two_tower", "max_iter": 3}])
    for method in (implicit.model_params, lambda: implicit.train_settings(seed=1, eval_k=10)):
        with pytest.raises(ValueError, match="kind als is trained in Spark, not by models.train"):
            method()
    with pytest.raises(ValueError, match="als_settings is for kind als, not deepfm"):
        cfg.models[2].als_settings(seed=1)


def test_values_of_the_wrong_type_are_refused_not_coerced():
    for section, key, value, rule in [
        ("models", "epochs", True, "valid integer"),
        ("models", "epochs", "8", "valid integer"),
        ("models", "epochs", 8.0, "valid integer"),
        ("models", "normalize", 1, "valid boolean"),
        ("models", "learning_rate", "0.01", "valid number"),
    ]:
        with pytest.raises(ConfigError, match=rf"'{section}.0.{key}': {value!r} \(Input should be a {rule}"):
            parse_config({section: [{"name": "m", key: value}]})
    with pytest.raises(ConfigError, match=r"bad value for 'publish.k': '5' \(Input should be a valid integer\)"):
        parse_config({"publish": {"k": "5"}})
    with pytest.raises(ConfigError, match=r"'keep_work_dir': 'yes' \(Input should be a valid boolean\)"):
        parse_config({"keep_work_dir": "yes"})
    # An int where a float is asked for is a number, not a coercion; dates may be written as text.
    cfg = parse_config({"models": [{"name": "m", "learning_rate": 1}],
                        "source": {"synthetic": {"end_date": "2024-05-31"}}})
    assert cfg.models[0].learning_rate == 1.0 and cfg.source.synthetic.end_date.isoformat() == "2024-05-31"


def test_sections_build_their_jobs_settings_with_one_set_of_defaults():
    import dataclasses

    from jobs.features import FeatureSettings
    from jobs.recommend import ScoringSettings
    from models.settings import TrainSettings

    cfg = parse_config({"models": [{"name": "m", "epochs": 3, "temperature": 0.2}], "features": {"quantiles": [0.5]},
                        "scoring": {"block_rows": 64}})
    train = cfg.models[0].train_settings(seed=9, eval_k=4)
    assert isinstance(train, TrainSettings)
    assert (train.epochs, train.temperature, train.seed, train.eval_k, train.loss) == (3, 0.2, 9, 4, "in_batch_softmax")
    assert cfg.models[0].train_settings(seed=9, eval_k=4, epochs=1).epochs == 1
    # Unset keys take the job's own defaults (the config declares none of its own).
    defaults = TrainSettings()
    assert (train.batch_size, train.learning_rate, train.patience) == \
        (defaults.batch_size, defaults.learning_rate, defaults.patience)
    feats = cfg.features.settings(seed=5)
    assert feats == dataclasses.replace(FeatureSettings(), quantiles=(0.5,), seed=5)
    assert cfg.scoring.settings() == ScoringSettings(block_rows=64)
    assert parse_config({}).features.settings(seed=FeatureSettings().seed) == FeatureSettings()


def test_training_section_builds_the_launch_settings_and_defaults_to_one_worker_in_process():
    from models.settings import LaunchSettings

    default = parse_config({}).training.settings()
    assert default == LaunchSettings() and default.in_process
    assert (default.workers, default.launcher) == (1, "local")
    got = parse_config({"training": {"workers": 4, "launcher": "spark", "checkpoint_every_steps": 0,
                                     "worker_timeout_s": 60}}).training.settings()
    assert got == LaunchSettings(workers=4, launcher="spark", checkpoint_every_steps=0, worker_timeout_s=60.0)
    assert not got.in_process
    with pytest.raises(ConfigError, match=r"'training.launcher': 'yarn' \(Input should be 'local' or 'spark'\)"):
        parse_config({"training": {"launcher": "yarn"}})
    with pytest.raises(ConfigError, match="'training.workers': 0"):
        parse_config({"training": {"workers": 0}})
    with pytest.raises(ConfigError, match="unknown key 'training.gpus'"):
        parse_config({"training": {"gpus": 1}})
