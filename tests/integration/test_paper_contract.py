"""Every registered paper honours the paper contract (pipelines/papers.py): its module has the
contract's names, each profile's tables validate and expand to JSON-able run configs, and one smoke
run of every method (its first table and setting, seed 0) goes through the real grid runner."""
import json
import math

import pytest

from common.config import config_hash, load_params
from pipelines.grid import run_tables, table_configs
from pipelines.papers import PAPER_MODULES, PaperTables, paper_module
from tests.conftest import REPO

PROFILES = ("smoke", "cpu", "paper")
RUN_KEYS = ("paper", "table", "setting", "method", "seed", "profile")


@pytest.mark.parametrize("paper", sorted(PAPER_MODULES))
def test_module_implements_the_contract(paper):
    module = paper_module(paper)
    assert isinstance(module, PaperTables) and module.PAPER == paper
    for table, definition in module.TABLES.items():
        assert definition.settings and definition.methods and definition.title, table


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("paper", sorted(PAPER_MODULES))
def test_every_profile_validates_and_expands(paper, profile):
    params = load_params(REPO / "params.yaml")
    tables = params[paper]["profiles"][profile]
    assert tables, f"{paper}: no tables in the {profile} profile"
    for table in tables:
        configs = table_configs(params, paper, profile, table)
        assert configs, (paper, profile, table)
        for c in configs:
            assert all(c[k] is not None for k in RUN_KEYS) and c["profile"] == profile and c["table"] == table
            json.dumps(c)                                # JSON-able, so results and hashes are stable
            assert config_hash(c) == config_hash(json.loads(json.dumps(c)))


@pytest.mark.parametrize("paper", sorted(PAPER_MODULES))
def test_one_smoke_run_per_method_through_the_runner(paper, tmp_path, mirror):
    params = load_params(REPO / "params.yaml")
    params["base"].update(results_dir=str(tmp_path / "results"), splits_dir=str(tmp_path / "splits"),
                          tracking_uri="none", data_mirror=mirror, profile="smoke")
    params["base"]["runner"].update(workers=1)
    chosen: dict[str, tuple[str, str]] = {}
    for table in params[paper]["profiles"]["smoke"]:
        for c in table_configs(params, paper, "smoke", table):
            chosen.setdefault(c["method"], (table, c["setting"]))
    for method, (table, setting) in sorted(chosen.items()):
        report = run_tables(params, paper, "smoke", [table], setting=setting, method=method, seed=0)
        if not report.done:    # a `requires` run (e.g. base_val) needs its dependency's seeds first
            dep = next(c["requires"]["method"] for c in table_configs(params, paper, "smoke", table)
                       if c["method"] == method)
            run_tables(params, paper, "smoke", [table], setting=setting, method=dep)
            report = run_tables(params, paper, "smoke", [table], setting=setting, method=method, seed=0)
        assert not report.failed and report.done, (method, report.failed)
        result = json.loads(next((tmp_path / "results" / "smoke" / paper / table / setting / method)
                                 .glob("seed0.json")).read_text())
        assert not math.isnan(result["metrics"]["test_acc"]) and result["history"], method


def test_unknown_bench_suite_is_a_clear_error(capsys):
    from pipelines.cli import main
    assert main(["bench", "--paper", "hu19", "--suite", "speed", "--profile", "smoke"]) == 2
    assert "--suite: hu19 has no benchmark suite 'speed'; expected one of ['text', 'weighting']" in \
        capsys.readouterr().err
