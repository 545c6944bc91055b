"""mmel image tables: run configs, the training step, smoke runs through the runner, resume, params errors."""
import copy
import json
import math
from functools import partial

import numpy as np
import pytest
import torch
import yaml

from common.config import load_params
from common.errors import ConfigError
from common.train.batches import Batch
from papers.mmel import tables
from papers.mmel.image_step import ImageMethodStep, PixelNormalized, StepSchedule, channel_moments
from papers.mmel.report_sections import report_sections
from pipelines import cli
from pipelines.grid import run_tables, table_configs
from tests.conftest import DROP, REPO, check_params_error, killed_and_resumed, params_edit


@pytest.fixture
def params(smoke_params):
    return smoke_params


def smoke_config(method="mmel_h", table="table1", **overrides):
    p = load_params(REPO / "params.yaml")
    config = next(c for c in table_configs(p, "mmel", "smoke", table) if c["method"] == method and c["seed"] == 0)
    return {**config, **overrides}


# ------------------------------------------------------------------------------------------ configs
def test_paper_profile_is_sec_4_1():
    p = load_params(REPO / "params.yaml")
    configs = {(c["setting"], c["method"]): c for c in table_configs(p, "mmel", "paper", "table1") if c["seed"] == 0}
    assert len(configs) == 8 * 5
    mmel_s = configs[("cifar100_resnet56", "mmel_s")]
    assert (mmel_s["epochs"], mmel_s["milestones"], mmel_s["lr_decay"], mmel_s["batch_size"]) == \
        (200, [60, 120, 160], 0.2, 128)
    assert mmel_s["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005}
    assert (mmel_s["num_views"], mmel_s["lambda_p"], mmel_s["lambda_t"], mmel_s["dataset"], mmel_s["arch"]) == \
        (10, 1.0, 1.0, "cifar100", "resnet56")
    assert mmel_s["train_counts"] is None and mmel_s["selection"] == "last"
    long = configs[("cifar10_resnet20", "da_long")]
    assert (long["epochs"], long["milestones"], long["num_views"]) == (2000, [600, 1200, 1600], 1)
    assert "lambda_p" not in configs[("cifar10_resnet20", "da_uni")]
    assert "lambda_t" not in configs[("cifar10_resnet20", "mmel_h")]
    ablation = {c["method"]: c for c in table_configs(p, "mmel", "paper", "table2") if c["seed"] == 0}
    assert ablation["mmel_s_b20"]["num_views"] == 20 and ablation["mmel_h_b2"]["loss"] == "mmel_h"
    imagenet = {c["setting"] for c in table_configs(p, "mmel", "paper", "table5")}
    assert imagenet == {"imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50"}


def test_cpu_profile_plan():
    p = load_params(REPO / "params.yaml")
    t1, t2 = (table_configs(p, "mmel", "cpu", t) for t in ("table1", "table2"))
    assert len(t1) == 5 * 5 and len(t2) == 5 * 3          # |B| = 10: Table 1's mmel_h / mmel_s runs (methods_from)
    assert {c["setting"] for c in t1 + t2} == {"cifar10_resnet20"}
    assert {c["method"] for c in t2} == {"da", "mmel_h_b2", "mmel_s_b2", "mmel_h_b5", "mmel_s_b5"}
    assert {c["num_views"] for c in t1 if c["method"] in ("mmel_h", "mmel_s")} == {10}
    # one schedule of the paper's shape for every method: decays at 30/60/80% of the epochs
    for c in t1 + t2:
        factor = 10 if c["method"] == "da_long" else 1
        assert c["epochs"] == 20 * factor and c["milestones"] == [6 * factor, 12 * factor, 16 * factor]
        assert c["train_counts"] == [128] * 10 and c["batch_size"] == 64 and c["compile"] == "inductor"
    # the same data subset for every run (protocol fixed)
    assert len({(c["data_seed"], tuple(c["train_counts"])) for c in t1 + t2}) == 1


def test_lr_schedule_decays_after_each_milestone():
    schedule = StepSchedule(0.1, 0.2, [2, 4], steps_per_epoch=3)
    lrs = [schedule.lr_at(t) for t in range(18)]
    assert lrs[:6] == [0.1] * 6 and lrs[6:12] == pytest.approx([0.02] * 6) and lrs[12:] == pytest.approx([0.004] * 6)


def test_channel_moments_are_exact():
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_moments(x)
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, x.reshape(-1, 3).std(0), rtol=1e-12)


# ------------------------------------------------------------------------------------------ the step
def _toy_step(method, views=4, **kw):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3))
    model = PixelNormalized(net, [120.0] * 3, [60.0] * 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return ImageMethodStep(method, model, opt, StepSchedule(0.1, 0.2, [1], 2), num_views=views, lambda_p=1.0,
                           lambda_t=1.0, view_seed=7, **kw)


def test_views_redrawn_every_call_original_first():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    step = _toy_step("mmel_h")
    first, second = step.views(images), step.views(images)
    assert first.shape == (5, 4, 3, 8, 8) and first.dtype == torch.float32
    torch.testing.assert_close(first[:, 0], images.float())          # view 0 = x_i itself
    torch.testing.assert_close(second[:, 0], images.float())
    assert not torch.equal(first[:, 1:], second[:, 1:]), "fresh views at every step (every epoch)"
    da = _toy_step("da").views(images)
    assert da.shape == (5, 1, 3, 8, 8)
    again = _toy_step("mmel_h").views(images)
    torch.testing.assert_close(again, first)                          # the run seed fixes every view


@pytest.mark.parametrize("method", ["da", "da_long", "da_uni", "mmel_h", "mmel_s"])
def test_step_updates_the_model_and_checkpoints_its_state(method):
    batch = Batch(torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (6,)), torch.arange(6))
    step = _toy_step(method)
    before = [p.detach().clone() for p in step.model.parameters()]
    loss = step(batch)
    assert math.isfinite(loss) and step.steps == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
    state = copy.deepcopy(step.state_dict())
    next_views = step.views(batch.x)            # what the run draws next, from the saved generator state
    step(batch)
    step(batch)
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)   # epoch 1 (2 steps per epoch), milestone 1
    restored = _toy_step(method)
    restored.load_state_dict(state)
    assert restored.steps == 1 and torch.equal(restored.views(batch.x), next_views)
    metrics = step.extra_metrics()
    assert metrics["optimizer_steps"] == 3
    assert ("pstar_kl_last_epoch" in metrics) == (method in ("da_uni", "mmel_h", "mmel_s"))


def test_mmel_s_gets_the_soft_loss_and_da_uni_uniform_weights():
    batch = Batch(torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (6,)), torch.arange(6))
    uni = _toy_step("da_uni")
    uni(batch)
    assert uni.extra_metrics()["pstar_kl_last_epoch"] == 0.0
    assert uni.extra_metrics()["pstar_max_weight_last_epoch"] == pytest.approx(0.25)
    hard = _toy_step("mmel_h")
    hard(batch)
    assert hard.extra_metrics()["pstar_max_weight_last_epoch"] > 0.25


def test_step_rejects_single_view_groups():
    with pytest.raises(ValueError, match="num_views >= 2"):
        _toy_step("mmel_h", views=1)


# ---------------------------------------------------------------------------------------- smoke runs
def test_every_method_runs_through_the_runner(params, tmp_path):
    report = run_tables(params, "mmel", "smoke", ["table1", "table2"], seed=0)
    assert not report.failed and len(report.done) == 5 + 5
    for table, methods in (("table1", ["da", "da_long", "da_uni", "mmel_h", "mmel_s"]),
                           ("table2", ["da", "mmel_h_b2", "mmel_s_b2", "mmel_h_b5", "mmel_s_b5"])):
        for method in methods:
            result = json.loads((tmp_path / "results/smoke/mmel" / table / "cifar10_resnet20" / method / "seed0.json")
                                .read_text())
            m = result["metrics"]
            assert 0 <= m["test_acc"] <= 100 and m["n_train"] == 20 and m["n_test"] == 50
            assert m["best_epoch"] == result["config"]["epochs"], "selection: last"
            assert len(result["history"]) == result["config"]["epochs"]
    long = json.loads((tmp_path / "results/smoke/mmel/table1/cifar10_resnet20/da_long/seed0.json").read_text())
    assert long["config"]["epochs"] == 4 and long["metrics"]["optimizer_steps"] == 4 * 2
    again = run_tables(params, "mmel", "smoke", ["table1"], seed=0)
    assert len(again.skipped) == 5 and not again.done


def test_same_seed_same_numbers(mirror):
    config = smoke_config("mmel_s")
    assert tables.execute(config, mirror)["metrics"] == tables.execute(config, mirror)["metrics"]


@pytest.mark.parametrize("method", ["mmel_s", "da_long"])
def test_resume_after_a_kill_between_epochs(tmp_path, mirror, method):
    config = smoke_config(method)
    reference = tables.execute(config, mirror)
    before, after, resumed = killed_and_resumed(tables.execute, tmp_path / "run.pt", config=config, mirror=mirror)
    assert before == [1] and after == list(range(2, config["epochs"] + 1)), "resumed after epoch 1, not from scratch"
    assert resumed["metrics"] == reference["metrics"] and resumed["history"] == reference["history"]


def test_compiled_step_matches_eager(mirror):
    eager = tables.execute(smoke_config("mmel_h", epochs=1, milestones=[]), mirror)
    compiled = tables.execute(smoke_config("mmel_h", epochs=1, milestones=[], compile="aot_eager"), mirror)
    assert compiled["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-4)


def test_paper_profile_rows_without_data_are_a_clear_error(mirror, tmp_path):
    p = load_params(REPO / "params.yaml")
    config = next(c for c in table_configs(p, "mmel", "paper", "table1") if c["setting"] == "cifar100_resnet20")
    with pytest.raises(ConfigError, match=r"dataset 'cifar100' \(cifar100_resnet20\): no loader in common/data"):
        tables.prepare_split(config, mirror, tmp_path / "split.json")


def test_cli_dry_run_lists_every_smoke_run(params, tmp_path, capsys, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert cli.main(["--params", str(path), "run", "--paper", "mmel", "--profile", "smoke", "--dry-run"]) == 0
    assert "mmel (smoke): 34 run(s) would run" in capsys.readouterr().out   # 20 image + 14 GLUE runs


# --------------------------------------------------------------------------------------- report hook
def test_report_section_times_per_method():
    published = yaml.safe_load((REPO / "papers/mmel/paper_tables.yaml").read_text())
    runs = [{"setting": "cifar10_resnet20", "method": m, "wall_s": s}
            for m, s in (("da", 360.0), ("da", 360.0), ("mmel_h", 3600.0), ("da_long", 3960.0))]
    lines = report_sections("table1", runs, published)
    text = "\n".join(lines)
    assert "| CIFAR-10 ResNet-20 | Baseline(DA) | 0.7 | 1.0x | 0.10 (2) | 1.0x |" in text
    assert "| CIFAR-10 ResNet-20 | MMEL-H | 2.9 | 4.1x | 1.00 (1) | 10.0x |" in text
    assert "| CIFAR-10 ResNet-20 | MMEL-S | 2.9 | 4.1x | — | — |" in text
    assert "CIFAR-100" not in text and report_sections("table2", runs, published) == []


# -------------------------------------------------------------------------------- params errors (bad inputs)
_set = partial(params_edit, "mmel")   # _set(table, key, value): one params.yaml edit
PARAMS_ERRORS = [
    pytest.param(_set("table1", "num_views", 1), "table1.num_views: expected >= 2, got 1", id="views-below-2"),
    pytest.param(_set("table1", "lambda_p", 0), "table1.lambda_p: expected a number > 0, got 0", id="lambda_p-zero"),
    pytest.param(_set("table2", "lambda_p", -1.0), "table2.lambda_p: expected a number > 0, got -1.0",
                 id="lambda_p-negative"),
    pytest.param(_set("table1", "lambda_t", 0.0), "table1.lambda_t: expected a number > 0, got 0.0",
                 id="lambda_t-zero"),
    pytest.param(_set("table1", "lambda_p", DROP),
                 "table1.lambda_p: missing (expected float; needed by mmel_h, mmel_s)", id="lambda_p-missing"),
    pytest.param(_set("table1", "long_factor", DROP), "table1.long_factor: missing (expected int; needed by da_long)",
                 id="long_factor-missing"),
    pytest.param(_set("table1", "milestones", [2]), "table1.milestones: expected every milestone < epochs (2), got [2]",
                 id="milestone-not-below-epochs"),
    pytest.param(_set("table1", "milestones", [1, 0]), "table1.milestones[1]: expected >= 1, got 0",
                 id="milestone-zero"),
    pytest.param(_set("table1", "compile", "max"), "table1.compile: 'max'; expected one of ['eager', 'inductor', "
                 "'aot_eager']", id="compile-unknown"),
    pytest.param(_set("table2", "methods", ["da", "mmel_h_b3"]), "table2.methods: unknown method(s) ['mmel_h_b3'] "
                 "for table2", id="views-not-in-table2"),
    pytest.param(_set("table2", "num_views", 5), "table2: unknown key(s) ['num_views']", id="num_views-in-table2"),
    pytest.param(_set("table1", "settings", {"cifar10_resnet18": {}}), "table1.settings: unknown setting "
                 "'cifar10_resnet18' for table1", id="setting-unknown"),
    pytest.param(_set("table1", "selection", "best_dev"), None, id="best_dev-ok"),
]


@pytest.mark.parametrize("mutate, message", PARAMS_ERRORS)
def test_bad_params_are_errors_naming_the_key(tmp_path, capsys, mutate, message):
    check_params_error(tmp_path, capsys, "mmel", mutate, message)


@pytest.mark.parametrize("change, message", [
    pytest.param({"selection": "best_dev", "dev_per_class": 0}, "dev_per_class: expected >= 1 with selection best_dev",
                 id="best_dev-without-dev"),
    pytest.param({"dev_pool_size": 0}, "dev_pool_size: expected >= 1 with dev_per_class 1", id="dev-without-pool"),
])
def test_dev_split_consistency(change, message):
    p = load_params(REPO / "params.yaml")
    cfg = {**p["mmel"]["profiles"]["smoke"]["table1"], **change}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tables.validate_table_config("table1", cfg, "params.yaml: mmel.profiles.smoke.table1")
