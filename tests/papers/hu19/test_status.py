"""`repro status`: finished / missing / stale runs per cell and the time estimate."""
import yaml

from common.config import config_hash, load_params
from common.io import write_json_atomic
from common.run.results import RunKey, archive_result
from pipelines import cli
from pipelines.grid import grid_status, table_configs
from tests.conftest import REPO


def test_status_counts_runs_and_estimates_from_finished_ones(tmp_path, capsys):
    params = load_params(REPO / "params.yaml")
    params["base"].update(results_dir=str(tmp_path / "results"), profile="smoke")
    configs = {(c["method"], c["seed"]): c for c in table_configs(params, "hu19", "smoke", "table2")}

    def write(method, seed, h, wall):
        write_json_atomic(RunKey("hu19", "table2", "not_pretrained", method, seed).path(tmp_path / "results", "smoke"),
                          {"paper": "hu19", "table": "table2", "setting": "not_pretrained", "method": method,
                           "seed": seed, "profile": "smoke", "config_hash": h, "git_sha": "a", "wall_s": wall,
                           "finished_at": "2026-01-01T00:00:00+00:00",
                           "metrics": {"test_acc": 20.0, "steps_at_best": 2}})

    write("base", 0, config_hash(configs[("base", 0)]), 100.0)
    write("ren", 0, config_hash(configs[("ren", 0)]), 400.0)
    write("ren", 1, "0123456789abcdef", 50.0)                   # another config: stale, not a timing sample
    write("base_val", 0, "fedcba9876543210", 30.0)              # only stale runs: they are the guide
    write("base_val", 1, "fedcba9876543211", 90.0)
    cells = {c.method: c for c in grid_status(params, "hu19", "smoke", ["table2"])}
    assert (cells["base"].done, cells["base"].missing, cells["base"].stale, cells["base"].est_s) == (1, 1, 0, 100.0)
    assert (cells["ren"].done, cells["ren"].missing, cells["ren"].stale, cells["ren"].est_s) == (1, 0, 1, 400.0)
    assert not cells["ren"].est_from_stale
    assert (cells["base_val"].stale, cells["base_val"].est_s, cells["base_val"].est_from_stale) == (2, 180.0, True)
    assert cells["ours_weight"].est_s is None and cells["ours_weight"].missing == 2

    write("ours_weight", 0, "00000000000000aa", 60.0)           # archived by --replace-changed: the last guide
    archive_result(RunKey("hu19", "table2", "not_pretrained", "ours_weight", 0).path(tmp_path / "results", "smoke"))
    cells = {c.method: c for c in grid_status(params, "hu19", "smoke", ["table2"])}
    ow = cells["ours_weight"]
    assert (ow.missing, ow.est_s, ow.est_from_stale) == (2, 120.0, True)
    assert (cells["base"].done, cells["base"].est_s, cells["base"].est_from_stale) == (1, 100.0, False)

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    assert cli.main(["--params", str(params_file), "status", "--table", "table2"]) == 0
    out = capsys.readouterr().out
    assert "table2: 2 done, 6 to run; about 0.2 core-hours" in out and "plus" not in out
    assert "0.1 of them from stale or archived runs' times" in out and "   0.1*" in out


def test_status_lists_the_settings_a_profile_cannot_run(tmp_path, capsys):
    """Table 2's `pretrained` setting is NOT RUN on cpu (no ImageNet weights here): status says so, as the report."""
    params = load_params(REPO / "params.yaml")
    params["base"].update(results_dir=str(tmp_path / "results"))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    assert cli.main(["--params", str(params_file), "status", "--profile", "cpu", "--table", "table2"]) == 0
    out = capsys.readouterr().out
    assert "table2   pretrained" in out and "NOT RUN: ImageNet-pretrained ResNet-34 weights cannot be downloaded" in out
