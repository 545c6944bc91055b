"""MLflow: one experiment per paper (opening on its runs), per table one summary run updated in place
with the table's runs nested under it, each run with its result's own start and end time; sync is
idempotent by result_id and rebuilds runs logged by older code."""
import datetime as dt
import logging
import shutil

import pytest

from common.run.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARENT_TAG,
    SUMMARY_KEY_TAG,
    Tracker,
    result_id,
    run_times,
)


def fake_result(seed, method="base", table="table2"):
    return {"paper": "hu19", "table": table, "setting": "not_pretrained", "method": method, "seed": seed,
            "profile": "smoke", "config_hash": f"h{seed}", "git_sha": "abc", "config": {"lr": 0.001, "opt": {"m": 0.9}},
            "metrics": {"test_acc": 20.0 + seed, "best_epoch": 3}, "wall_s": 90.25 + seed,
            "finished_at": f"2026-12-01T10:0{seed}:33+00:00",
            "history": [{"phase": "train", "epoch": 1, "train_loss": 2.0, "dev_acc": 10.0}]}


def test_run_times_are_the_results():
    start, end = run_times(fake_result(1))
    assert end == int(dt.datetime(2026, 12, 1, 10, 1, 33, tzinfo=dt.timezone.utc).timestamp() * 1000)
    assert end - start == 91250
    with pytest.raises(ValueError):
        run_times({**fake_result(0), "finished_at": "2026-12-01T10:00:33"})     # no timezone: no guessing


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An empty, migrated sqlite store (creating one takes seconds; copying it, nothing)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, empty_store):
    from mlflow.tracking import MlflowClient

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, MlflowClient(tracking_uri=uri)


def runs_of(client, stage=None):
    exp = client.get_experiment_by_name("hu19")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if stage is None or r.data.tags.get("stage") == stage]


def test_nested_numeric_metrics_are_logged_with_dotted_keys(store):
    uri, client = store
    result = fake_result(0)
    result["metrics"].update(dev={"mcc": 41.5}, cells={"table3": {"dev_cola": 41.5}}, note="text is not a metric")
    result["history"][0]["dev"] = {"mcc": 40.0}
    assert Tracker(uri).sync_results([result]) == 1
    metrics = runs_of(client, "run")[0].data.metrics
    assert metrics["dev.mcc"] == 41.5 and metrics["cells.table3.dev_cola"] == 41.5
    assert metrics["train_dev.mcc"] == 40.0 and "note" not in metrics


def test_sync_is_idempotent_nests_runs_and_keeps_their_times(store):
    uri, client = store
    results = [fake_result(0), fake_result(1, "ours_weight"), fake_result(2, table="table4")]
    assert Tracker(uri).sync_results(results) == 3
    assert Tracker(uri).sync_results(results) == 0
    exp = client.get_experiment_by_name("hu19")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"

    runs = runs_of(client, "run")
    assert {r.data.tags["result_id"] for r in runs} == {result_id(r) for r in results}
    ours = [r for r in runs if r.data.tags["method"] == "ours_weight"][0]
    assert ours.data.metrics["test_acc"] == 21.0 and ours.data.params["opt.m"] == "0.9"
    assert ours.data.tags["seed"] == "1" and ours.data.tags["profile"] == "smoke"
    assert ours.data.tags["mlflow.runName"] == "table2/not_pretrained/ours_weight/seed1"
    for run, result in zip(sorted(runs, key=lambda r: r.data.tags["seed"]), results):
        assert (run.info.start_time, run.info.end_time) == run_times(result) and run.info.status == "FINISHED"

    summaries = {r.data.tags[SUMMARY_KEY_TAG]: r for r in runs_of(client, "aggregate")}
    assert sorted(summaries) == ["hu19/table2@smoke", "hu19/table4@smoke"]
    t2 = summaries["hu19/table2@smoke"]
    assert {r.data.tags["seed"] for r in runs if r.data.tags[PARENT_TAG] == t2.info.run_id} == {"0", "1"}
    assert t2.info.start_time == run_times(results[0])[0] and t2.info.end_time == run_times(results[1])[1]
    assert t2.data.tags["mlflow.runName"] == "table2 summary (smoke)"


def test_run_time_logging_then_report_then_sync_share_one_summary(store, monkeypatch):
    uri, client = store
    monkeypatch.setattr("common.run.job.git_sha", lambda: "f00d")          # what the checkout's HEAD would give
    tracker = Tracker(uri)
    assert tracker.log_result(fake_result(0))                  # at run time: no summary exists yet
    assert not tracker.log_result(fake_result(0))              # already there
    cell = {"setting": "not_pretrained", "method": "base", "n": 1, "mean": 20.0, "std": 0.0, "verdict": "FAIL"}
    Tracker(uri).log_table("hu19", "table2", "smoke", [cell], [], git_sha="c0ffee")
    Tracker(uri).log_table("hu19", "table2", "smoke", [{**cell, "n": 2, "mean": 20.5, "verdict": "ok"}], [])
    assert Tracker(uri).sync_results([fake_result(0), fake_result(1)]) == 1

    (summary,) = runs_of(client, "aggregate")
    assert summary.data.metrics["not_pretrained.base.mean"] == 20.5 and summary.data.metrics[
        "not_pretrained.base.n"] == 2
    assert summary.data.tags["verdict.not_pretrained.base"] == "ok"
    assert summary.data.tags["git_sha"] == "f00d"          # the sha of the code behind the latest report
    runs = runs_of(client, "run")
    assert len(runs) == 2 and {r.data.tags[PARENT_TAG] for r in runs} == {summary.info.run_id}


def old_style_store(uri):
    """What the previous tracker wrote: flat runs started at the sync time, one summary per report."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("hu19")
    for r in (fake_result(0), fake_result(1, "ours_weight")):
        with mlflow.start_run(run_name="x", tags={"paper": "hu19", "table": "table2", "profile": "smoke",
                                                  "stage": "run", "result_id": result_id(r), "method": r["method"]}):
            mlflow.log_metric("test_acc", 1.0)
    for _ in range(2):
        with mlflow.start_run(run_name="table2 summary (smoke)",
                              tags={"paper": "hu19", "table": "table2", "profile": "smoke", "stage": "aggregate"}):
            mlflow.log_metric("not_pretrained.base.mean", 1.0)
    # a run the tracker started and never finished (killed mid-logging)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("hu19")
    client.create_run(exp.experiment_id, start_time=run_times(fake_result(2))[0],
                      tags={"stage": "run", "result_id": result_id(fake_result(2)), "table": "table2",
                            "profile": "smoke"})


def test_sync_rebuilds_old_style_runs(store):
    uri, client = store
    old_style_store(uri)
    results = [fake_result(0), fake_result(1, "ours_weight"), fake_result(2)]
    assert Tracker(uri).sync_results(results) == 3                       # re-logged with their real times
    assert Tracker(uri).sync_results(results) == 0
    (summary,) = runs_of(client, "aggregate")                           # the per-report copies are gone
    assert summary.data.tags[SUMMARY_KEY_TAG] == "hu19/table2@smoke"
    runs = runs_of(client, "run")
    assert sorted(r.data.tags["result_id"] for r in runs) == sorted(result_id(r) for r in results)
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[PARENT_TAG] == summary.info.run_id
        assert run.data.metrics["test_acc"] >= 20.0
    assert Tracker(uri).sync_results(results[:1]) == 0


def test_tracking_failures_are_warnings(store, monkeypatch, caplog):
    uri, client = store
    tracker = Tracker(uri)
    monkeypatch.setattr(type(tracker.client), "log_batch", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    with caplog.at_level(logging.WARNING, "repro.tracking"):
        assert not tracker.log_result(fake_result(0))
        assert tracker.sync_results([fake_result(1)]) == 0
        tracker.log_table("hu19", "table2", "smoke", [{"setting": "s", "method": "m", "n": 0}], [])
    assert [r.getMessage().rsplit(": ", 1)[0] for r in caplog.records] == [
        f"MLflow logging failed for {result_id(fake_result(0))}",
        f"MLflow logging failed for {result_id(fake_result(1))}", "MLflow table logging failed for hu19/table2"]
    assert runs_of(client, "run") == []                    # no half-logged run a later sync would trust
    monkeypatch.undo()
    assert Tracker(uri).sync_results([fake_result(0), fake_result(1)]) == 2


MLFLOW_CALLS = ("set_tracking_uri", "set_experiment", "get_experiment_by_name", "search_runs", "start_run",
                "log_params", "log_metrics", "log_metric", "set_tag", "log_artifact")


def spy_on_mlflow(monkeypatch) -> list[str]:
    """Every mlflow entry point (the fluent API and the client the tracker uses) replaced by one that
    records its name and fails."""
    import mlflow
    from mlflow.tracking import MlflowClient

    calls = []

    def fail(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"mlflow.{name} called")
        return call

    for name in MLFLOW_CALLS:
        monkeypatch.setattr(mlflow, name, fail(name))
    monkeypatch.setattr(MlflowClient, "__init__", fail("MlflowClient"))
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
        assert not tracker.log_result(fake_result(0))
        tracker.log_table("hu19", "table2", "smoke", [{"setting": "s", "method": "base", "n": 2, "mean": 1.0,
                                                        "std": 0.1, "verdict": "ok"}], [report])
        assert tracker._client is None                 # mlflow was never even configured
    assert calls == []
    assert not [r for r in caplog.records if "MLflow" in r.getMessage()]   # nothing failed quietly either
    assert not env_store.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

    # the spy does catch a tracker that logs (the same calls on an enabled tracker)
    enabled = Tracker(f"sqlite:///{tmp_path}/other.db")
    enabled.log_result(fake_result(0))
    enabled.log_table("hu19", "table2", "smoke", [], [report])
    assert calls == ["MlflowClient", "MlflowClient"]    # each attempt stops at its first mlflow call


def test_a_down_tracking_server_costs_seconds_not_minutes(monkeypatch, caplog):
    """MLflow retries an HTTP call 7 times with exponential backoff by default (minutes per call); the
    tracker sets short defaults for http URIs (a user's own settings win), so a run finishing while the
    server is down logs a warning quickly."""
    import os
    import socket
    import time

    from common.run.tracking import HTTP_DEFAULTS
    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")                # a user's own value is kept
    with socket.socket() as probe:                                         # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tracker = Tracker(f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "repro.tracking"):
        assert not tracker.log_result(fake_result(0))
    assert time.monotonic() - started < 30
    assert "MLflow logging failed" in caplog.text
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "20"
