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


MLFLOW_CALLS = ("set_tracking_uri", "set_experiment", "get_experiment_by_name", "search_runs", "start_run",
                "log_params", "log_metrics", "log_metric", "set_tag", "log_artifact")


def spy_on_mlflow(monkeypatch) -> list[str]:
    """Every mlflow entry point the tracker uses replaced by one that records its name and fails."""
    import mlflow

    calls = []

    def fail(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"mlflow.{name} called")
        return call

    for name in MLFLOW_CALLS:
        monkeypatch.setattr(mlflow, name, fail(name))
    return calls


def test_disabled_tracker_logs_nothing(tmp_path, monkeypatch, caplog):
    """Tracking URI "none": no mlflow call and no store, neither the one MLFLOW_TRACKING_URI names nor
    the default ./mlflow.db or ./mlruns of the working directory."""
    monkeypatch.chdir(tmp_path)
    env_store = tmp_path / "env" / "mlflow.db"
    env_store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env_store}")
    calls = spy_on_mlflow(monkeypatch)
    report = tmp_path / "env" / "report.md"
    report.write_text("# report\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    for uri in ("none", "None", "NONE"):
        tracker = Tracker(uri)
        assert not tracker.enabled
        assert tracker.sync_results([fake_result(0), fake_result(1, "ours_weight")]) == 0
        tracker.log_result(fake_result(0))
        tracker.log_table("hu19", "table2", "smoke", [{"setting": "s", "method": "base", "n": 2, "mean": 1.0,
                                                        "std": 0.1, "verdict": "ok"}], [report])
        assert tracker._mlflow is None                 # mlflow was never even configured
    assert calls == []
    assert not [r for r in caplog.records if "MLflow" in r.getMessage()]   # nothing failed quietly either
    assert not env_store.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

    # the spy does catch a tracker that logs (the same calls on an enabled tracker)
    enabled = Tracker(f"sqlite:///{tmp_path}/other.db")
    enabled.log_result(fake_result(0))
    enabled.log_table("hu19", "table2", "smoke", [], [report])
    assert calls == ["set_tracking_uri", "set_tracking_uri"]    # each attempt stops at its first mlflow call
