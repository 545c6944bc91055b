"""Smoke runs of every hu19 text method (Tables 1 and 3) on real SST-5 / SST-2 slices, tiny BERT."""
import math

import pytest

from common.config import load_params
from common.errors import ConfigError
from papers.hu19.tables import execute, resolve_requirements, validate_table_config
from pipelines.grid import table_configs
from tests.conftest import REPO


@pytest.fixture
def params(tmp_path, mirror):
    p = load_params(REPO / "params.yaml")
    p["base"].update(results_dir=str(tmp_path / "results"), splits_dir=str(tmp_path / "splits"),
                     tracking_uri="none", data_mirror=mirror, profile="smoke")
    return p


def first_seed_per_method(configs):
    seen = {}
    for c in configs:
        if c["seed"] == 0 and c["method"] not in seen:
            seen[c["method"]] = c
    return seen


@pytest.mark.parametrize("table", ["table1", "table3"])
def test_every_text_method_runs(params, mirror, table):
    configs = first_seed_per_method(table_configs(params, "hu19", "smoke", table))
    assert set(configs) == set(params["hu19"]["profiles"]["smoke"][table]["methods"])
    for method, c in configs.items():
        if "requires" in c:
            c = resolve_requirements(c, [{"metrics": {"steps_at_best": 3}, "config_hash": "x"}])
        out = execute(c, mirror)
        m = out["metrics"]
        assert 0.0 <= m["test_acc"] <= 100.0 and not math.isnan(m["test_acc"]), method
        assert m["n_test"] == c["test_limit"], method
        assert out["history"], method
        if method in ("fixed_aug", "ours_aug"):
            assert out["cbert"]["epochs"], "the augmenter's MLM fitting is recorded"
        if method == "ours_aug" and c["dataset"] == "sst5":
            fills = out["figure2"]
            assert {"epoch_1", f"epoch_{c['epochs']}"} <= set(fills)
            assert all(len(v) == 5 for v in fills["epoch_1"].values())


def test_text_runs_are_deterministic(params, mirror):
    configs = first_seed_per_method(table_configs(params, "hu19", "smoke", "table1"))
    for method in ("ours_weight", "ours_aug"):
        assert execute(configs[method], mirror)["metrics"] == execute(configs[method], mirror)["metrics"]


def test_bad_text_table_config_is_a_clear_error(params):
    cfg = dict(params["hu19"]["profiles"]["smoke"]["table1"])
    with pytest.raises(ConfigError, match="dev_source"):
        bad = {**cfg, "settings": {"sst5": {**cfg["settings"]["sst5"], "dev_source": "nowhere"}}}
        validate_table_config("table1", bad, "p")
    with pytest.raises(ConfigError, match="mlm_dir"):
        validate_table_config("table1", {**cfg, "backbone": "all-MiniLM-L6-v2", "mlm_dir": None}, "p")
    with pytest.raises(ConfigError, match="augmentation.n_aug_meta"):
        validate_table_config("table1", {**cfg, "augmentation": {k: v for k, v in cfg["augmentation"].items()
                                                                 if k != "n_aug_meta"}}, "p")


def test_result_file_keeps_the_augmenter_history_and_figure2(params, tmp_path):
    import json

    from pipelines.grid import run_tables

    params["base"]["runner"].update(workers=1)
    report = run_tables(params, "hu19", "smoke", ["table1"], method="ours_aug", seed=0, workers=1)
    assert len(report.done) == 1 and not report.failed
    saved = json.loads(next((tmp_path / "results").rglob("ours_aug/seed0.json")).read_text())
    assert saved["cbert"]["epochs"] and {"epoch_0", "epoch_1"} <= set(saved["figure2"])


def test_augmenter_fit_is_cached_between_fixed_aug_and_ours_aug(params, mirror, tmp_path, monkeypatch):
    """fixed_aug fits CBERT and caches it beside the setting's checkpoints; ours_aug of the same
    (setting, seed) loads it instead of refitting, and ends with exactly the metrics of a run that
    fitted the augmenter itself (weights, fit history and the global RNG state are restored)."""
    import common.augment.cbert

    configs = first_seed_per_method(table_configs(params, "hu19", "smoke", "table1"))
    uncached = execute(configs["ours_aug"], mirror)
    ckpt = tmp_path / "ckpt" / "table1" / "sst5"
    execute(configs["fixed_aug"], mirror, checkpoint_path=ckpt / "fixed_aug" / "seed0.pt")
    assert (ckpt / "augmenter_fits" / "seed0.pt").is_file()

    def no_refit(*args, **kwargs):
        raise AssertionError("the cached augmenter fit should have been used")

    monkeypatch.setattr(common.augment.cbert, "fit_cbert", no_refit)
    cached = execute(configs["ours_aug"], mirror, checkpoint_path=ckpt / "ours_aug" / "seed0.pt")
    assert cached["metrics"] == uncached["metrics"] and cached["cbert"] == uncached["cbert"]
    assert cached["figure2"] == uncached["figure2"]
    # a cached fit made under another key (here: another seed) is never taken
    import shutil
    shutil.copy(ckpt / "augmenter_fits" / "seed0.pt", ckpt / "augmenter_fits" / "seed1.pt")
    other = dict(configs["ours_aug"], seed=1)
    with pytest.raises(AssertionError, match="cached augmenter"):
        execute(other, mirror, checkpoint_path=ckpt / "ours_aug" / "seed1.pt")


def test_pooling_option_keeps_default_config_hashes(params, mirror):
    """`pooling: cls` (the default) adds nothing to a run's config, so committed results keep their
    hashes; `pooling: mean` is recorded in the config and runs; a bad value is a clear error."""
    cfg = params["hu19"]["profiles"]["smoke"]["table1"]
    default = first_seed_per_method(table_configs(params, "hu19", "smoke", "table1"))["base"]
    assert "pooling" not in default
    cfg["pooling"] = "cls"
    assert first_seed_per_method(table_configs(params, "hu19", "smoke", "table1"))["base"] == default
    cfg["pooling"] = "mean"
    mean = first_seed_per_method(table_configs(params, "hu19", "smoke", "table1"))["base"]
    assert mean == {**default, "pooling": "mean"}
    assert 0.0 <= execute(mean, mirror)["metrics"]["test_acc"] <= 100.0
    with pytest.raises(ConfigError, match="pooling: 'max'"):
        validate_table_config("table1", {**cfg, "pooling": "max"}, "p")
