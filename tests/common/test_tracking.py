"""MLflow: committed results are logged once per result (idempotent sync), tagged for browsing."""
from common.run.tracking import Tracker, result_id


def fake_result(seed, method="base"):
    return {"paper": "hu19", "table": "table2", "setting": "not_pretrained", "method": method, "seed": seed,
            "profile": "smoke", "config_hash": f"h{seed}", "git_sha": "abc", "config": {"lr": 0.001, "opt": {"m": 0.9}},
            "metrics": {"test_acc": 20.0 + seed, "best_epoch": 3}, "wall_s": 1.5, "finished_at": "now",
            "history": [{"phase": "train", "epoch": 1, "train_loss": 2.0, "dev_acc": 10.0}]}


def test_sync_is_idempotent_and_tags_runs(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    results = [fake_result(0), fake_result(1, "ours_weight")]
    assert tracker.sync_results(results) == 2
    assert tracker.sync_results(results) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["hu19"], output_format="list")
    assert {r.data.tags["result_id"] for r in runs} == {result_id(r) for r in results}
    ours = [r for r in runs if r.data.tags["method"] == "ours_weight"][0]
    assert ours.data.metrics["test_acc"] == 21.0 and ours.data.params["opt.m"] == "0.9"
    assert ours.data.tags["seed"] == "1" and ours.data.tags["profile"] == "smoke"


def test_disabled_tracker_logs_nothing(tmp_path):
    tracker = Tracker("none")
    assert tracker.sync_results([fake_result(0)]) == 0
    tracker.log_result(fake_result(0))
    assert not list(tmp_path.iterdir())
