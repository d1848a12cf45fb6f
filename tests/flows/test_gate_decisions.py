"""The nightly's gate step (``flows.nightly._gate``): the config's gate section applied to each model's figures."""

import datetime as dt

from flows.config import parse_config
from flows.nightly import _gate
from flows.summary import Evaluation
from jobs.run_catalogue import RunCatalogue
from jobs.storage import Location


def _figures(ndcg: float, users: int) -> dict:
    return {"precision": 0.0, "recall": 0.0, "ndcg": ndcg, "map": 0.0, "mrr": 0.0, "hit_rate": 0.0, "users": users}


def _decide(tmp_path, gate=None, min_users=10, **models):
    cfg = parse_config({"warehouse": str(tmp_path), "gate": gate or {},
                        "evaluation": {"k": 10, "min_holdout_users": min_users}})
    cat = RunCatalogue(Location(str(tmp_path)), dt.date(2024, 3, 31), "run-1")
    metrics = {name: Evaluation(k=10, model=_figures(value, users), popularity=_figures(0.2, users))
               for name, (value, users) in models.items()}
    return _gate(cfg, cat, metrics)


def test_each_model_is_decided_on_its_own_figures(tmp_path):
    out = _decide(tmp_path, good=(0.3, 50), bad=(0.1, 50), tiny=(0.9, 4), empty=(0.0, 0))
    assert out["good"]["status"] == "publish" and out["good"]["published"]
    assert out["bad"]["status"] == "held_back" and not out["bad"]["published"]
    assert out["bad"]["message"] == "bad nDCG@10 0.1 is 50.0% below popularity's 0.2"
    # 4 users < 10: the night cannot rank this model, whatever its figure
    assert out["tiny"]["status"] == "not_evaluable" and not out["tiny"]["published"]
    assert out["empty"]["status"] == "not_evaluable" and out["empty"]["value"] is None
    assert all(d["previous"] is None and d["previous_ds"] is None for d in out.values())  # no earlier night


def test_publish_anyway_overrides_and_says_so_and_off_publishes_everything(tmp_path):
    out = _decide(tmp_path, {"publish_anyway": True}, bad=(0.1, 50), good=(0.3, 50))
    assert out["bad"]["status"] == "held_back" and out["bad"]["override"] and out["bad"]["published"]
    assert out["good"]["status"] == "publish" and not out["good"]["override"]
    off = _decide(tmp_path, {"enabled": False}, bad=(0.1, 50))
    assert off["bad"]["status"] == "not_gated" and off["bad"]["published"]


def test_the_gate_metric_is_configurable(tmp_path):
    # recall is 0.0 for both: not below popularity's 0.0, so the model publishes on recall
    out = _decide(tmp_path, {"metric": "recall"}, bad=(0.1, 50))
    assert out["bad"]["status"] == "publish" and out["bad"]["figure"] == "Recall@10"


def test_held_back_names_the_models_and_pickles_with_its_summary(tmp_path):
    import pickle

    from flows.nightly import HeldBack
    from flows.summary import Ingested, NightSummary, Split

    decisions = _decide(tmp_path, good=(0.3, 50), bad=(0.1, 50))
    summary = NightSummary(ds=dt.date(2024, 3, 31), warehouse=Location(str(tmp_path)), users=1, items=1,
                           ingested=Ingested(events=1, quarantined={}, quarantined_by_table={}, quarantine_share=0.0,
                                             source="synthetic", user_features=(), item_features=(),
                                             rating_range=(1.0, 5.0), now=dt.datetime(2024, 4, 1)),
                           split=Split(train=1, holdout=0), metrics={}, published={}, seconds=1.0, gate=decisions)
    assert summary.held_back == ["bad"]
    exc = pickle.loads(pickle.dumps(HeldBack(summary)))
    assert exc.summary.held_back == ["bad"]
    assert str(exc).startswith("the quality gate held back bad nDCG@10 0.1 is 50.0% below popularity's 0.2")
