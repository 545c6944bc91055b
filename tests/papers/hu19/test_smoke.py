"""Smoke runs of every hu19 image method on real CIFAR-10 slices, the runner, and the CLI."""
import json
import math

import pytest
import torch

from common.errors import ResultConflictError
from common.meta.lookahead import reference_meta_gradient
from common.train.batches import ArrayData, Batch
from papers.hu19.tables import execute, resolve_requirements
from papers.hu19.weighting import WeightingConfig, WeightingMethod
from pipelines import cli
from pipelines.grid import run_tables, table_configs
from tests.conftest import REPO


@pytest.fixture
def params(smoke_params):
    return smoke_params


@pytest.mark.parametrize("table", ["table2", "table4"])
def test_every_method_runs_and_is_deterministic(params, mirror, table):
    configs = table_configs(params, "hu19", "smoke", table)
    seen = set()
    for c in configs:
        if c["seed"] != 0 or c["method"] in seen:
            continue
        seen.add(c["method"])
        if "requires" in c:
            c = resolve_requirements(c, [{"metrics": {"steps_at_best": 3}, "config_hash": "x"}])
            assert c["fixed_steps"] == 3
        out = execute(c, mirror)
        m = out["metrics"]
        assert 0.0 <= m["test_acc"] <= 100.0 and not math.isnan(m["test_acc"])
        assert m["n_test"] == c["test_limit"] and m["n_train"] == sum(c["train_counts"])
        assert out["history"], "per-epoch history is recorded"
        if c["method"] in ("base", "ours_weight"):
            assert execute(c, mirror)["metrics"] == m, "same seed, same numbers"
    assert seen == set(params["hu19"]["profiles"]["smoke"][table]["methods"])


def test_ours_weight_batch_weights_are_a_distribution_and_persist():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    train = ArrayData(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,)))
    dev = ArrayData(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,)))
    step = WeightingMethod("ours_weight", model, opt, train, dev, 3, WeightingConfig("softmax", 10.0, 1.0, 2.0))
    batch = Batch(train.x[:4], train.y[:4], torch.arange(4))
    step(batch)
    assert step.last_weights.sum().item() == pytest.approx(1.0) and (step.last_weights > 0).all()
    assert not torch.allclose(step.phi.values[:4], torch.ones(4))      # updated ...
    torch.testing.assert_close(step.phi.values[4:], torch.ones(4))    # ... only for the batch
    # ren (L2RW) from the state ours_weight left (momentum buffers set): w = normalise(max(-dL_dev/dw, 0))
    # at w = 0, dL_dev/dw by brute force (one copied model+optimizer step per example, autograd through
    # theta + sum_i w_i Delta_i). Its dev set is the last 4 train examples, so several examples help and
    # some hurt: the clamp and the ratios between kept weights are both exercised.
    ren_batch, ren_dev = Batch(train.x, train.y, torch.arange(8)), ArrayData(train.x[4:], train.y[4:])
    ref_grad = reference_meta_gradient(model, opt, ren_batch.x, ren_batch.y, ren_dev.x, ren_dev.y, torch.zeros(8))
    assert (ref_grad < 0).sum() >= 3 and (ref_grad > 0).any(), ref_grad
    kept = (-ref_grad).clamp(min=0)
    expected = kept / kept.sum()
    ren = WeightingMethod("ren", model, opt, train, ren_dev, 3, WeightingConfig())
    ren(ren_batch)
    torch.testing.assert_close(ren.last_weights, expected, rtol=1e-4, atol=1e-6)
    assert (ren.last_weights[ref_grad > 0] == 0).all()         # examples that would raise the dev loss get 0


def test_grid_runs_skips_and_refuses_to_overwrite(params, tmp_path):
    report = run_tables(params, "hu19", "smoke", ["table2"])
    assert not report.failed and len(report.done) == 8
    files = sorted((tmp_path / "results/smoke/hu19/table2/not_pretrained").glob("*/seed*.json"))
    assert len(files) == 8
    result = json.loads(files[0].read_text())
    for key in ("paper", "table", "setting", "method", "seed", "profile", "config_hash", "git_sha", "metrics",
                "wall_s", "finished_at"):
        assert key in result
    base_val = json.loads((tmp_path / "results/smoke/hu19/table2/not_pretrained/base_val/seed0.json").read_text())
    assert base_val["config"]["fixed_steps_from"]["n"] == 2
    again = run_tables(params, "hu19", "smoke", ["table2"])
    assert len(again.skipped) == 8 and not again.done          # idempotent
    params["hu19"]["profiles"]["smoke"]["table2"]["epochs"] = 3  # config change -> conflict, result kept
    before = files[0].read_text()
    with pytest.raises(ResultConflictError, match="exists with config_hash"):
        run_tables(params, "hu19", "smoke", ["table2"], method="base", seed=0)
    assert files[0].read_text() == before


def test_cli_errors_name_the_problem(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["run", "--profile", "gpu", "--dry-run"]) == 2
    assert "unknown profile 'gpu'" in capsys.readouterr().err
    assert cli.main(["run", "--profile", "smoke", "--table", "table9", "--dry-run"]) == 2
    assert "unknown table 'table9'" in capsys.readouterr().err
    assert cli.main(["run", "--profile", "smoke", "--table", "table2", "--method", "magic", "--dry-run"]) == 2
    assert "no run matches" in capsys.readouterr().err
    assert cli.main(["run", "--paper", "hu20", "--profile", "smoke", "--dry-run"]) == 2
    assert "unknown paper 'hu20'" in capsys.readouterr().err
