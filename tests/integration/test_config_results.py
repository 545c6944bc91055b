"""params.yaml validation, config hashing, atomic result files and conflict handling."""
import json
import threading

import pytest
import yaml

from common.config import config_hash, load_params, paper_profile, table_config
from common.errors import ConfigError, ResultConflictError
from common.io import write_json_atomic
from common.run.results import RunKey, archive_result, read_result, result_status
from tests.conftest import REPO


def params_copy(tmp_path, mutate):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_repo_params_load_and_every_table_validates():
    from pipelines.grid import table_configs

    params = load_params(REPO / "params.yaml")
    for profile in ("smoke", "cpu", "paper"):
        for table in paper_profile(params, "hu19", profile):
            configs = table_configs(params, "hu19", profile, table)
            assert configs and all(c["profile"] == profile for c in configs)


@pytest.mark.parametrize("mutate,message", [
    (lambda p: p["base"].update(profile="gpu"), "base.profile: unknown profile 'gpu'"),
    (lambda p: p["base"]["runner"].update(workers="two"), "base.runner.workers: expected int, got str"),
    (lambda p: p["base"]["runner"].update(backend="slurm"), "base.runner.backend: unknown backend 'slurm'"),
    (lambda p: p["base"].update(colour="red"), r"base: unknown key\(s\) \['colour'\]"),
    (lambda p: p["base"].pop("results_dir"), "base.results_dir: missing"),
])
def test_bad_base_params(tmp_path, mutate, message):
    with pytest.raises(ConfigError, match=message):
        load_params(params_copy(tmp_path, mutate))


def test_bad_table_params(tmp_path):
    from pipelines.grid import table_configs

    path = params_copy(tmp_path, lambda p: p["hu19"]["profiles"]["smoke"]["table2"].update(methods=["base", "magic"]))
    with pytest.raises(ConfigError, match=r"methods: unknown method\(s\) \['magic'\]"):
        table_configs(load_params(path), "hu19", "smoke", "table2")
    path = params_copy(tmp_path, lambda p: p["hu19"]["profiles"]["smoke"]["table2"].update(epochs="2"))
    with pytest.raises(ConfigError, match="table2.epochs: expected int"):
        table_configs(load_params(path), "hu19", "smoke", "table2")
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ConfigError, match="unknown table 'table9'"):
        table_config(params, "hu19", "smoke", "table9")
    with pytest.raises(ConfigError, match="unknown paper 'hu20'"):
        paper_profile(params, "hu20", "smoke")


def test_missing_and_invalid_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def result(h="abc"):
    return {"paper": "hu19", "table": "t", "setting": "s", "method": "m", "seed": 0, "profile": "smoke",
            "config_hash": h, "git_sha": "x", "metrics": {"test_acc": 1.0}, "wall_s": 1, "finished_at": "now"}


def test_result_status_and_conflict(tmp_path):
    path = RunKey("hu19", "t", "s", "m", 0).path(tmp_path, "smoke")
    assert path == tmp_path / "smoke/hu19/t/s/m/seed0.json"
    assert result_status(path, "abc") == "missing"
    assert write_json_atomic(path, result(), exclusive=True)
    assert result_status(path, "abc") == "done"
    with pytest.raises(ResultConflictError, match="exists with config_hash abc but the current config hashes to def"):
        result_status(path, "def")
    assert not write_json_atomic(path, result("def"), exclusive=True)  # never overwritten
    assert read_result(path)["config_hash"] == "abc"
    archived = archive_result(path)
    assert archived.name == "seed0.superseded-abc.json" and not path.exists()


def test_corrupt_result_is_reported(tmp_path):
    path = tmp_path / "seed0.json"
    path.write_text('{"paper": "hu19"')
    with pytest.raises(ResultConflictError, match="corrupt result file"):
        read_result(path)
    path.write_text(json.dumps({"paper": "hu19"}))
    with pytest.raises(ResultConflictError, match="lacks keys"):
        read_result(path)


def test_concurrent_exclusive_writers_leave_one_valid_file(tmp_path):
    path = tmp_path / "seed0.json"
    wins = []

    def writer(i):
        wins.append(write_json_atomic(path, result(f"h{i}"), exclusive=True))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(wins) == 1
    assert read_result(path)["config_hash"].startswith("h")
    assert [p.name for p in tmp_path.iterdir()] == ["seed0.json"]  # no temp files left behind


def test_result_files_are_strict_json(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"metrics": {"best_dev_acc": float("nan"), "x": [float("inf"), 1.0]}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"metrics": {"best_dev_acc": None, "x": [None, 1.0]}}


def test_git_sha_is_dirty_for_code_edits_only(tmp_path):
    """Committing result files while runs go on must not mark the runs' code as dirty."""
    import subprocess

    from common.run.job import git_sha

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_sha(tmp_path)
    assert len(clean) == 40
    (tmp_path / "results" / "r.json").write_text('{"a": 1}')
    assert git_sha(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_sha(tmp_path) == clean + "-dirty"
