"""The tracker against a real `mlflow server` (HTTP tracking URI), checked through its REST API:
the paper's experiment opens on its runs, each run keeps its result's start and end time and sits
under its table's summary run, the summary is updated in place by a second report, and a second
sync adds nothing."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from common.run.tracking import Tracker, result_id, run_times

pytestmark = pytest.mark.skipif(shutil.which("mlflow") is None, reason="the `mlflow` CLI is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on sqlite and a local artifact root; its base URL once /health answers."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(tmp / "server.log", "wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}   # no job runner process: faster start
    proc = subprocess.Popen(["mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/m.db",
                             "--default-artifact-root", str(tmp / "art"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({proc.returncode}):\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 120 s:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)        # the CLI and its uvicorn worker (own session)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def rest(url: str, path: str, body: dict | None = None, **query) -> dict:
    """GET (query) or POST (body) /api/2.0/mlflow/<path>."""
    full = f"{url}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def all_runs(url: str, experiment_id: str) -> list[dict]:
    runs, token = [], None
    while True:
        page = rest(url, "runs/search", {"experiment_ids": [experiment_id], "max_results": 1000,
                                         **({"page_token": token} if token else {})})
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics_of(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def hu19_result(table: str, setting: str, method: str, seed: int, finished_at: str, wall_s: float,
                test_acc: float) -> dict:
    """A result as `repro run` writes it (schema of results/cpu/hu19/table2/not_pretrained/ours_weight/seed0.json)."""
    config = {"arch": "resnet34", "batch_size": 10, "classes": list(range(10)), "data_seed": 159,
              "dataset": "cifar10", "dev_per_class": 2, "dev_pool_size": 500, "epochs": 3,
              "meta_step": {"dev": "train", "dev_batch_size": 10, "per_example": "eval"}, "method": method,
              "min_epochs": 0, "optimizer": {"lr": 0.001, "momentum": 0.9, "name": "sgd", "weight_decay": 0.01},
              "paper": "hu19", "pretrain_epochs": 2, "pretrained": False, "profile": "cpu", "protocol": "fixed",
              "seed": seed, "setting": setting, "table": table, "test_limit": None,
              "train_counts": [40] * 10, "weighting": {"norm": "softmax", "softmax_temp": 10.0, "w_decay": 2.0,
                                                       "w_init": 1.0}}
    history = [{"dev_acc": 15.0, "epoch": e, "phase": "pretrain", "train_loss": 2.6 - 0.1 * e} for e in (1, 2)]
    history += [{"dev_acc": 20.0 + 5 * e, "epoch": e, "phase": "train", "train_loss": 2.2 - 0.2 * e,
                 "phi_max": 1.0 + 0.1 * e} for e in (1, 2, 3)]
    return {"config": config, "config_hash": f"e56462212ae664{seed:02d}", "device": "cpu", "finished_at": finished_at,
            "git_sha": "7f01204a69f58b61ac4e384b1e4e5e0b18550861", "history": history, "method": method,
            "metrics": {"best_dev_acc": 35.0, "best_epoch": 3, "n_dev": 20, "n_test": 10000, "n_train": 400,
                        "steps_at_best": 120, "test_acc": test_acc},
            "paper": "hu19", "profile": "cpu", "seed": seed, "setting": setting, "table": table, "threads": 1,
            "wall_s": wall_s}


def cells(table2_mean: float) -> dict[str, list[dict]]:
    return {"table2": [{"setting": "not_pretrained", "method": "ours_weight", "mean": table2_mean, "std": 0.4,
                        "n": 2, "verdict": "PASS"},
                       {"setting": "not_pretrained", "method": "base", "mean": 22.0, "std": 0.0, "n": 1,
                        "verdict": "FAIL"}],
            "table4": [{"setting": "ratio_20", "method": "base", "mean": None, "std": None, "n": 0,
                        "verdict": "NOT RUN: needs a GPU"}]}


def test_tracker_against_a_real_mlflow_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")      # a broken server fails fast, not in minutes
    at_run_time = [hu19_result("table2", "not_pretrained", "ours_weight", 0, "2026-12-01T10:05:33+00:00", 738.43,
                               24.17),
                   hu19_result("table2", "not_pretrained", "ours_weight", 1, "2026-12-01T10:19:02+00:00", 801.5, 25.0),
                   hu19_result("table2", "not_pretrained", "base", 0, "2026-12-01T09:40:10+00:00", 455.02, 22.0)]
    only_committed = [hu19_result("table4", "ratio_20", "base", 0, "2026-11-30T23:59:59-05:00", 61.25, 30.5)]
    results = at_run_time + only_committed

    grid_tracker = Tracker(server)                      # pipelines/grid.py: one tracker per grid, log_result per run
    for r in at_run_time:
        assert grid_tracker.log_result(r)
    report = tmp_path / "hu19.md"
    report.write_text("# hu19\n")
    for mean in (24.0, 24.585):                         # `repro report` twice (the second after more seeds)
        tracker = Tracker(server)
        for table, table_cells in cells(mean).items():
            tracker.log_table("hu19", table, "cpu", table_cells, [report])
    assert Tracker(server).sync_results(results) == 1    # `repro sync-mlflow`: only what the store lacks
    assert Tracker(server).sync_results(results) == 0

    exp = rest(server, "experiments/get-by-name", experiment_name="hu19")["experiment"]
    assert {t["key"]: t["value"] for t in exp.get("tags", [])}["mlflow.experimentKind"] == "custom_model_development"
    runs = all_runs(server, exp["experiment_id"])

    summaries = [r for r in runs if tags_of(r).get("stage") == "aggregate"]
    assert sorted(tags_of(r)["summary_key"] for r in summaries) == ["hu19/table2@cpu", "hu19/table4@cpu"]
    summary = {tags_of(r)["table"]: r for r in summaries}
    t2 = tags_of(summary["table2"])
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", t2["git_sha"]), t2["git_sha"]
    assert subprocess.run(["git", "cat-file", "-e", t2["git_sha"].removesuffix("-dirty")]).returncode == 0
    assert t2["verdict.not_pretrained.ours_weight"] == "PASS" and t2["mlflow.runName"] == "table2 summary (cpu)"
    assert metrics_of(summary["table2"])["not_pretrained.ours_weight.mean"] == 24.585     # the latest report's
    assert metrics_of(summary["table4"])["ratio_20.base.n"] == 0
    assert tags_of(summary["table4"])["verdict.ratio_20.base"] == "NOT RUN: needs a GPU"
    listed = rest(server, "artifacts/list", run_id=summary["table2"]["info"]["run_id"])
    assert [f["path"] for f in listed.get("files", [])] == ["hu19.md"]

    children = [r for r in runs if tags_of(r).get("stage") == "run"]
    by_id = {tags_of(r)["result_id"]: r for r in children}
    assert len(children) == len(by_id) == len(results)
    for r in results:
        run = by_id[result_id(r)]
        start, end = run_times(r)
        assert (int(run["info"]["start_time"]), int(run["info"]["end_time"])) == (start, end)
        assert end - start == round(r["wall_s"] * 1000) and run["info"]["status"] == "FINISHED"
        assert tags_of(run)["mlflow.parentRunId"] == summary[r["table"]]["info"]["run_id"]
        assert metrics_of(run)["test_acc"] == r["metrics"]["test_acc"]
    # the table's row ends with its last run (it starts with the first one logged under it)
    t2_runs = [run_times(r) for r in results if r["table"] == "table2"]
    assert int(summary["table2"]["info"]["end_time"]) == max(e for _, e in t2_runs)
    assert len(all_runs(server, exp["experiment_id"])) == len(results) + 2
