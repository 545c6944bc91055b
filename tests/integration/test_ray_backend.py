"""The Ray backend: config keys, and the hu19 smoke grid on a real two-node local Ray cluster.

This module doubles as a tiny "paper module" (`execute` below) so failure handling can be checked
on the cluster without training anything.
"""
import copy
import json
from pathlib import Path

import pytest
import yaml

from common.config import load_params, runner_options
from common.errors import ConfigError, ReproError
from common.run.grid import make_backend
from common.run.job import Job
from common.run.local_backend import LocalBackend
from common.run.results import read_result
from pipelines.grid import run_tables
from tests.conftest import REPO

MB = 1024 ** 2
VOLATILE = {"wall_s", "finished_at", "code_diff_sha256"}  # the rest of a result file must match across backends
# (code_diff_sha256: the working tree may change between the two grids of a test on a dirty checkout)


def params_with_runner(tmp_path, runner):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"]["runner"] = runner
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


RUNNER = {"backend": "ray", "workers": 2, "threads_per_worker": 1}


@pytest.mark.parametrize("extra,message", [
    ({"num_cpus": "one"}, "base.runner.num_cpus: expected int or float, got str"),
    ({"num_gpus": True}, "base.runner.num_gpus: expected int or float, got bool"),
    ({"num_gpus": -1}, "base.runner.num_gpus: expected a number >= 0"),
    ({"ray_address": 6379}, "base.runner.ray_address: expected str, got int"),
    ({"ray_address": ""}, "base.runner.ray_address: expected 'auto'"),
    ({"num_cpu": 1}, r"base.runner: unknown key\(s\) \['num_cpu'\]"),
])
def test_bad_ray_runner_keys(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_params(params_with_runner(tmp_path, {**RUNNER, **extra}))


def test_ray_runner_keys_are_optional_and_local_needs_no_ray(tmp_path):
    params = load_params(params_with_runner(tmp_path, dict(RUNNER)))
    assert runner_options(params["base"]["runner"]) == {**RUNNER, "ray_address": "auto", "num_cpus": 1,
                                                       "num_gpus": 0}
    params = load_params(params_with_runner(tmp_path, {**RUNNER, "num_cpus": 0.5, "num_gpus": 1,
                                                       "ray_address": "ray://head:10001"}))
    assert params["base"]["runner"]["num_cpus"] == 0.5
    with pytest.raises(ConfigError, match="base.runner.workers: missing"):
        load_params(params_with_runner(tmp_path, {"backend": "ray", "threads_per_worker": 1}))
    assert isinstance(make_backend({**RUNNER, "backend": "local"}), LocalBackend)


def test_driver_copy_of_a_remote_result(tmp_path):
    from common.run.ray_backend import keep_driver_copy

    result = {"paper": "x", "table": "t", "setting": "s", "method": "m", "seed": 0, "profile": "smoke",
              "config_hash": "abc", "git_sha": "g", "metrics": {"test_acc": 1.0}, "wall_s": 1.0,
              "finished_at": "now"}
    path = tmp_path / "r" / "seed0.json"
    keep_driver_copy(path, result)                     # no shared storage: the driver writes it
    first = path.read_text()
    keep_driver_copy(path, result)                     # shared storage: already there, untouched
    assert path.read_text() == first and read_result(path) == result
    with pytest.raises(ReproError, match="different config hash"):
        keep_driver_copy(path, {**result, "config_hash": "def"})


# -- the same module as a fake paper for failure handling on the cluster ---------------------------

def execute(config, mirror, on_epoch=None, split_path=None, **_):
    if config["method"] == "crash":
        raise RuntimeError("boom in a run")
    if config["method"] == "bad_config":
        raise ConfigError("bad.key: expected int")
    return {"metrics": {"test_acc": 50.0}, "history": []}


def fake_job(tmp_path, method, seed=0):
    config = {"paper": "fake", "table": "t", "setting": "s", "method": method, "seed": seed, "profile": "smoke"}
    path = tmp_path / "fake" / method / f"seed{seed}.json"
    return Job(__name__, config, str(path), None, 1, "sha")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """Head + one worker node, 1 CPU each, on loopback; torn down by a finalizer."""
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    patch = pytest.MonkeyPatch()
    # Same decoded-array cache as tests/conftest.py's autouse fixture (it is function-scoped, this
    # module-scoped fixture starts first); the cluster's worker processes inherit the environment.
    patch.setenv("REPRO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "repro_cache"))
    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        # Bind every Ray process to 127.0.0.1 instead of the machine's external address (the env var
        # reaches the subprocesses, the attribute this process).
        patch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "object_store_memory": 100 * MB, "include_dashboard": False})

    def shutdown():
        ray.shutdown()
        cluster.shutdown()
        patch.undo()

    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * MB)
        cluster.wait_for_nodes()
    except BaseException:
        shutdown()
        raise
    yield cluster
    shutdown()


def test_failures_are_collected_and_repro_errors_stop_the_grid(ray_cluster, tmp_path):
    from common.run.ray_backend import RayBackend

    backend = RayBackend(ray_cluster.address, num_cpus=1, workers=2)
    out = {job.config["method"]: (result, error)
           for job, result, error in backend.map([fake_job(tmp_path, "ok"), fake_job(tmp_path, "crash")])}
    assert out["ok"][1] is None, out["ok"][1]
    assert out["ok"][0]["metrics"] == {"test_acc": 50.0}
    assert read_result(tmp_path / "fake/ok/seed0.json")["config_hash"] == out["ok"][0]["config_hash"]
    assert out["crash"][0] is None and "boom in a run" in out["crash"][1]
    with pytest.raises(ConfigError, match="bad.key: expected int"):
        list(backend.map([fake_job(tmp_path, "bad_config")]))


def run_smoke_grid(params, results_dir, runner):
    from pipelines import grid

    params = copy.deepcopy(params)
    params["base"].update(results_dir=str(results_dir))
    params["base"]["runner"] = runner
    backends = []

    def recording_make_backend(cfg):
        backends.append(make_backend(cfg))
        return backends[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grid, "make_backend", recording_make_backend)
        report = grid.run_tables(params, "hu19", "smoke", ["table2"])
    assert not report.failed, report.failed
    assert len(report.done) == 8
    return backends[0]


def result_files(results_dir: Path) -> dict[str, dict]:
    return {str(p.relative_to(results_dir)): json.loads(p.read_text()) for p in sorted(results_dir.rglob("seed*.json"))}


def test_smoke_grid_on_two_ray_nodes_matches_local(ray_cluster, tmp_path, mirror):
    import ray

    params = load_params(REPO / "params.yaml")
    params["base"].update(splits_dir=str(tmp_path / "splits"), tracking_uri="none", data_mirror=mirror,
                          profile="smoke")
    ray_runner = {"backend": "ray", "ray_address": ray_cluster.address, "workers": 2, "threads_per_worker": 1,
                  "num_cpus": 1, "num_gpus": 0}
    backend = run_smoke_grid(params, tmp_path / "ray_results", ray_runner)
    run_smoke_grid(params, tmp_path / "local_results", {"backend": "local", "workers": 2, "threads_per_worker": 1})

    # both nodes of the cluster are alive and ran some of the grid's runs
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(alive) == 2 and len(backend.node_of) == 8
    assert set(backend.node_of.values()) == alive

    on_ray, local = result_files(tmp_path / "ray_results"), result_files(tmp_path / "local_results")
    assert len(on_ray) == 8 and on_ray.keys() == local.keys()
    for name, result in on_ray.items():
        assert {k: v for k, v in result.items() if k not in VOLATILE} == \
            {k: v for k, v in local[name].items() if k not in VOLATILE}, name
        assert result["config_hash"] and result["metrics"]["test_acc"] == local[name]["metrics"]["test_acc"]

    # finished runs are skipped with the ray backend too (same config hashes)
    params["base"].update(results_dir=str(tmp_path / "ray_results"))
    params["base"]["runner"] = ray_runner
    report = run_tables(params, "hu19", "smoke", ["table2"])
    assert len(report.skipped) == 8 and not report.done
