"""metaaugment tables: run configs, the method steps, smoke runs through the runner, resume, bad inputs."""
import json
from functools import partial

import pytest
import torch

from common.augment.image_ops import FILL, apply_op, check_magnitudes, op_index
from common.config import load_params
from common.errors import ConfigError
from papers.metaaugment import tables
from papers.metaaugment.image_step import CosineSchedule, background_ops, channel_moments
from papers.metaaugment.policy import TransformationSampler
from pipelines.grid import run_tables, table_configs
from tests.conftest import DROP, REPO, check_params_error, killed_and_resumed, params_edit


def smoke_config(method="metaaugment", table="table3", **overrides):
    p = load_params(REPO / "params.yaml")
    config = next(c for c in table_configs(p, "metaaugment", "smoke", table)
                  if c["method"] == method and c["seed"] == 0)
    return {**config, **overrides}


# ------------------------------------------------------------------------------------------ configs
def test_paper_profile_is_the_papers_protocol():
    p = load_params(REPO / "params.yaml")
    t1 = {(c["setting"], c["method"]): c for c in table_configs(p, "metaaugment", "paper", "table1") if c["seed"] == 0}
    assert {s for s, _ in t1} == {"cifar10_wrn28_10", "cifar10_wrn40_2", "cifar100_wrn28_10", "cifar100_wrn40_2"}
    meta = t1[("cifar10_wrn28_10", "metaaugment")]
    assert meta["dev_per_class"] * meta["num_classes"] == 1000 == \
        t1[("cifar100_wrn28_10", "baseline")]["dev_per_class"] * 100
    assert meta["policy"]["eps"] == 0.1 and meta["policy"]["embedding"] and meta["policy"]["features"] == "share"
    assert "policy" not in t1[("cifar10_wrn28_10", "randaugment")]
    omni = [c for c in table_configs(p, "metaaugment", "paper", "table3") if c["seed"] == 0]
    assert {c["setting"] for c in omni} == {"omniglot_wrn28_10", "omniglot_wrn40_2"}
    assert all((c["dev_per_class"], c["test_per_class"], c["image_size"]) == (2, 3, 105) for c in omni)
    ablation = {c["method"]: c for c in table_configs(p, "metaaugment", "paper", "table5") if c["seed"] == 0}
    assert ablation["metaaugment_ote"]["policy"]["embedding"] is False
    assert ablation["metaaugment_ownfe"]["policy"]["features"] == "own"


def test_cpu_plan_has_three_seeds_and_the_reduced_cifar10():
    p = load_params(REPO / "params.yaml")
    for table, methods in (("table1", {"baseline", "randaugment", "metaaugment"}),
                           ("table3", {"baseline", "randaugment", "metaaugment"}),
                           ("table5", {"metaaugment_ote", "metaaugment_ownfe", "metaaugment"})):
        configs = table_configs(p, "metaaugment", "cpu", table)
        assert {c["method"] for c in configs} == methods and len(configs) == 3 * 3
    c = table_configs(p, "metaaugment", "cpu", "table1")[0]
    assert (c["train_per_class"], c["dev_per_class"], c["arch"]) == (400, 100, "resnet20")
    o = table_configs(p, "metaaugment", "cpu", "table3")[0]
    assert (o["image_size"], o["arch"], o["dev_per_class"], o["test_per_class"]) == (28, "resnet8", 2, 3)


# ------------------------------------------------------------------------------------ method pieces
def test_cosine_schedule_and_channel_moments():
    s = CosineSchedule(0.1, 10)
    assert s.lr_at(0) == 0.1 and s.lr_at(5) == pytest.approx(0.05) and s.lr_at(10) == 0.0 and s.lr_at(20) == 0.0
    images = torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8).numpy()
    assert channel_moments(images) == ([127.5], [127.5])


def test_omniglot_ops_fill_with_background_not_grey():
    x = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 10:18, 10:18] = 255
    j = torch.tensor([op_index("TranslateX"), op_index("Rotate"), op_index("Identity")])
    k = torch.tensor([op_index("Identity"), op_index("Identity"), op_index("Brightness")])
    m = torch.tensor([10.0, 10.0, 0.0])
    plain = apply_op(apply_op(x, j, m), k, m)
    out = background_ops(x, j, k, m, m)
    assert (plain == FILL).any() and not (out == FILL).any()
    assert torch.equal(out[2], plain[2]) and torch.equal(out[0][plain[0] != FILL], plain[0][plain[0] != FILL])


# -------------------------------------------------------------------------------------- smoke runs
def test_every_method_runs_through_the_runner(smoke_params, tmp_path):
    report = run_tables(smoke_params, "metaaugment", "smoke", ["table3", "table5"], seed=0)
    assert not report.failed and len(report.done) == 3 + 3
    for table, methods in (("table3", ["baseline", "randaugment", "metaaugment"]),
                           ("table5", ["metaaugment_ote", "metaaugment_ownfe", "metaaugment"])):
        for method in methods:
            result = json.loads((tmp_path / "results/smoke/metaaugment" / table / "omniglot_resnet8" / method /
                                 "seed0.json").read_text())
            m = result["metrics"]
            assert 0 <= m["test_acc"] <= 100 and (m["n_train"], m["n_dev"], m["n_test"]) == (150, 20, 30)
            assert m["best_epoch"] == result["config"]["epochs"] == len(result["history"]), "selection: last"
            if method.startswith("metaaugment"):
                probs = torch.tensor(m["sampler_probs"])
                assert probs.shape == (14, 14) and abs(float(probs.sum()) - 1) < 1e-4
                assert float(probs.min()) >= 0.1 / 196 - 1e-6          # eps = 0.1 of uniform mass (Eq. 5)
                assert m["alpha_final"] > 0 and len(m["alpha_trace"]) >= 1
    again = run_tables(smoke_params, "metaaugment", "smoke", ["table3"], seed=0)
    assert len(again.skipped) == 3 and not again.done


def test_same_seed_same_numbers(mirror):
    config = smoke_config("metaaugment", epochs=1)
    assert tables.execute(config, mirror)["metrics"] == tables.execute(config, mirror)["metrics"]


def test_resume_after_a_kill_between_epochs(tmp_path, mirror):
    config = smoke_config("metaaugment")
    reference = tables.execute(config, mirror)
    before, after, resumed = killed_and_resumed(tables.execute, tmp_path / "run.pt", config=config, mirror=mirror)
    assert before == [1] and after == list(range(2, config["epochs"] + 1)), "resumed after epoch 1, not from scratch"
    assert resumed["metrics"] == reference["metrics"] and resumed["history"] == reference["history"]


def test_prepare_writes_and_checks_the_split(mirror, tmp_path):
    config = smoke_config("baseline")
    path = tmp_path / "split.json"
    tables.prepare_split(config, mirror, path)
    record = json.loads(path.read_text())
    assert record["counts"] == {"train": 150, "dev": 20, "test": 30}
    assert not set(record["train"]) & set(record["dev"]) and not set(record["dev"]) & set(record["test"])
    tables.prepare_split(config, mirror, path)                        # same spec: accepted
    with pytest.raises(Exception, match="prepared split differs"):
        tables.prepare_split({**config, "data_seed": 1}, mirror, path)


def test_paper_profile_rows_without_data_are_a_clear_error(mirror, tmp_path):
    p = load_params(REPO / "params.yaml")
    for table, setting in (("table1", "cifar100_wrn28_10"), ("table4", "imagenet_resnet50")):
        config = next(c for c in table_configs(p, "metaaugment", "paper", table) if c["setting"] == setting)
        with pytest.raises(ConfigError, match=f"dataset '{setting.split('_')[0]}' \\({setting}\\): no loader in "
                                              "common/data"):
            tables.prepare_split(config, mirror, tmp_path / "s.json")


# -------------------------------------------------------------------------------------- bad inputs
def test_unknown_op_and_magnitude_out_of_range():
    with pytest.raises(ValueError, match="unknown image op 'Rotation'; expected one of AutoContrast, Equalize"):
        op_index("Rotation")
    with pytest.raises(ValueError, match=r"magnitude must lie in \[-10, 10\], got 11"):
        check_magnitudes(torch.tensor([3.0, 11.0]))
    with pytest.raises(ValueError, match=r"magnitude must lie in \[-10, 10\], got 11"):
        apply_op(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), op_index("Rotate"), 11.0)


@pytest.mark.parametrize("eps", [-0.1, 1.5])
def test_eps_outside_unit_interval_in_the_sampler(eps):
    with pytest.raises(ValueError, match=r"eps must be a number in \[0, 1\] \(Eq. 5\)"):
        TransformationSampler(eps=eps, r=1, s=1)


_set = partial(params_edit, "metaaugment")   # _set(table, key, value): one params.yaml edit
PARAMS_ERRORS = [
    pytest.param(_set("table3", "eps", 1.5), "table3.eps: expected a number >= 0 and <= 1, got 1.5", id="eps-above-1"),
    pytest.param(_set("table1", "eps", -0.1), "table1.eps: expected a number >= 0 and <= 1, got -0.1",
                 id="eps-negative"),
    pytest.param(_set("table3", "eps", DROP), "table3.eps: missing (expected a number; needed by metaaugment)",
                 id="eps-missing"),
    pytest.param(_set("table5", "alpha_init", 0.0), "table5.alpha_init: expected a number > 0, got 0.0",
                 id="alpha-zero"),
    pytest.param(_set("table3", "meta_gradient", "hessian"), "table3.meta_gradient: 'hessian'; expected one of "
                 "['jvp', 'double_backward']", id="meta-gradient-unknown"),
    pytest.param(_set("table1", "settings", {"cifar10_shakeshake26_2x96d": {}}),
                 "table1.settings.cifar10_shakeshake26_2x96d: no model for 'shakeshake26_2x96d' in common/models",
                 id="setting-without-model"),
    pytest.param(_set("table3", "test_per_class", DROP), "table3.test_per_class: missing (expected int; "
                 "Omniglot's test drawings per character", id="omniglot-without-test-count"),
    pytest.param(_set("table3", "image_size", 128), "table3.image_size: expected <= 105", id="image-size-too-big"),
    pytest.param(_set("table1", "methods", ["baseline", "autoaugment"]), "table1.methods: unknown method(s) "
                 "['autoaugment'] for table1", id="method-unknown"),
    pytest.param(_set("table3", "meta_gradient", "double_backward"), None, id="double-backward-ok"),
    pytest.param(_set("table2", "transforms_per_sample", 0), "table2.transforms_per_sample: expected",
                 id="mt-zero-transforms"),
    pytest.param(_set("figure5", "methods", ["metaaugment_eps0", "metaaugment_eps2"]), "figure5.methods: unknown "
                 "method(s) ['metaaugment_eps2'] for figure5", id="eps-method-unknown"),
]


@pytest.mark.parametrize("mutate, message", PARAMS_ERRORS)
def test_bad_params_are_errors_naming_the_key(tmp_path, capsys, mutate, message):
    check_params_error(tmp_path, capsys, "metaaugment", mutate, message)


def test_report_section_shows_the_learned_distribution(tmp_path, monkeypatch):
    from common.augment.image_ops import OPS
    from papers.metaaugment import report_sections as hook
    from papers.metaaugment.report_sections import op_marginals, report_sections

    monkeypatch.chdir(tmp_path)                       # the hook writes reports/figures/ under the cwd
    hook._panels.clear()

    uniform = [[1 / 196] * 14 for _ in range(14)]
    skewed = [[(4.0 if a == "Identity" else 1.0) for a in OPS] for _ in OPS]      # second op Identity 4x
    total = sum(map(sum, skewed))
    skewed = [[v / total for v in row] for row in skewed]
    runs = [{"setting": "omniglot_resnet8", "method": "metaaugment",
             "metrics": {"sampler_probs": grid, "ops": list(OPS), "alpha_final": 0.1}}
            for grid in (uniform, skewed)]
    runs.append({"setting": "omniglot_resnet8", "method": "baseline", "metrics": {"test_acc": 50.0}})
    marg = op_marginals(list(OPS), uniform)
    assert all(abs(v - 1 / 14) < 1e-12 for v in marg.values())
    lines = report_sections("table3", runs, {})
    assert len(lines) == 8 and "| omniglot_resnet8 | metaaugment | 2 |" in lines[4] and lines[-1] == ""
    assert "Identity" in lines[4].split("|")[5] and "alpha" in lines[2]
    assert "reports/figures/metaaugment_figure2.png" in lines[6] and (tmp_path / hook.FIGURE2).stat().st_size > 0
    assert report_sections("table1", runs[2:], {}) == []            # no CIFAR panel, the Omniglot one stays
    assert (tmp_path / hook.FIGURE2).exists()


def test_figure2_heat_map_without_and_with_results(tmp_path, monkeypatch):
    """No MetaAugment distribution: no file and no error (a stale file is removed); CIFAR and Omniglot
    distributions: one PNG with both panels, redrawn when the second table is reported."""
    from common.augment.image_ops import OPS
    from papers.metaaugment import report_sections as hook

    monkeypatch.chdir(tmp_path)
    hook._panels.clear()
    assert hook.report_sections("table1", [], {}) == [] and hook.report_sections("table3", [], {}) == []
    assert not (tmp_path / hook.FIGURE2).exists()
    uniform = [[1 / 196] * 14 for _ in range(14)]
    run = {"method": "metaaugment", "profile": "smoke", "metrics": {"sampler_probs": uniform, "ops": list(OPS)}}
    hook.report_sections("table1", [{**run, "setting": "cifar10_resnet20"}], {})
    first = (tmp_path / hook.FIGURE2).read_bytes()
    hook.report_sections("table3", [{**run, "setting": "omniglot_resnet8"}], {})
    assert (tmp_path / hook.FIGURE2).read_bytes() != first                 # now with the Omniglot panel
    assert set(hook._panels) == {"table1", "table3"} and all(hook._panels.values())
    hook._panels.clear()
    hook.report_sections("table1", [], {})
    hook.report_sections("table3", [], {})
    assert not (tmp_path / hook.FIGURE2).exists()


def test_figure5_sweeps_eps_on_the_table1_recipe(mirror):
    """Figure 5: eps 0 / 0.1 / 1.0 as metaaugment_eps0 / metaaugment / metaaugment_eps1; cpu = Table 1's cpu
    recipe on CIFAR-10 ResNet-20 with 3 seeds, paper = Omniglot WRN-28-10 (Table 3's recipe); the eps = 0.1 row
    is not re-run: it is the same config as Table 1's (cpu) / Table 3's (paper) metaaugment (`methods_from`);
    eps 1.0 keeps the sampler uniform."""
    from pipelines.grid import method_configs
    p = load_params(REPO / "params.yaml")
    cpu = table_configs(p, "metaaugment", "cpu", "figure5")
    assert len(cpu) == 6 and {c["method"]: c["policy"]["eps"] for c in cpu} == {
        "metaaugment_eps0": 0.0, "metaaugment_eps1": 1.0}
    for profile, source in (("cpu", "table1"), ("smoke", "table1"), ("paper", "table3")):
        theirs = [{k: v for k, v in c.items() if k != "table"} for c in table_configs(p, "metaaugment", profile, source)
                  if c["method"] == "metaaugment"
                  and c["setting"] in p["metaaugment"]["profiles"][profile]["figure5"]["settings"]]
        mine = [{k: v for k, v in c.items() if k != "table"}
                for c in method_configs(p, "metaaugment", profile, "figure5", "metaaugment")]
        assert mine == theirs and mine[0]["policy"]["eps"] == 0.1, profile
    paper = table_configs(p, "metaaugment", "paper", "figure5")
    assert {c["setting"] for c in paper} == {"omniglot_wrn28_10"} and len(paper) == 10
    smoke = smoke_config("metaaugment_eps1", table="figure5")
    assert (smoke["policy"]["eps"], smoke["setting"]) == (1.0, "cifar10_resnet20")
    config = smoke_config("metaaugment", table="table3", epochs=1)           # the fast Omniglot slice
    config = {**config, "method": "metaaugment_eps1", "policy": {**config["policy"], "eps": 1.0}}
    m = tables.execute(config, mirror)["metrics"]
    assert torch.allclose(torch.tensor(m["sampler_probs"], dtype=torch.float64),
                          torch.full((14, 14), 1 / 196, dtype=torch.float64), atol=1e-6)
    assert m["alpha_final"] != 0.1                                      # the bilevel step ran (not randaugment)


def test_table2_mt_augments_every_image_four_times():
    """Table 2's MetaAugment+MT: metaaugment_mt = Table 5's cpu metaaugment (20 epochs) with transforms_per_sample
    4; the step feeds all 4 n augmented samples (each copy its own op pair) to Eq. 2-4 and records them all."""
    from common.models.cifar_resnet import CifarResNet
    from common.train.batches import ArrayData, Batch
    from papers.metaaugment.image_step import MethodStep
    from papers.metaaugment.metaaugment import TaskNetwork

    p = load_params(REPO / "params.yaml")
    (mt,) = [c for c in table_configs(p, "metaaugment", "cpu", "table2") if c["seed"] == 0]
    t5 = next(c for c in table_configs(p, "metaaugment", "cpu", "table5")
              if c["method"] == "metaaugment" and c["seed"] == 0)
    assert mt["policy"].pop("transforms_per_sample") == 4 and "transforms_per_sample" not in t5["policy"]
    assert {k: v for k, v in mt.items() if k not in ("table", "method")} == \
        {k: v for k, v in t5.items() if k not in ("table", "method")}
    model = TaskNetwork(CifarResNet(8, 10), [125.0] * 3, [60.0] * 3)
    dev = ArrayData(torch.rand(4, 3, 32, 32) * 255, torch.arange(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = MethodStep("metaaugment", model, opt, CosineSchedule(0.1, 10), kind="cifar", dev=dev, val_batch_size=4,
                      transforms_per_sample=4)
    seen = {}
    update = step.update
    step.update = lambda x, y, *rest: seen.update(x=x, y=y) or update(x, y, *rest)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    step(Batch(images, torch.tensor([0, 1, 2]), torch.arange(3)))
    assert seen["x"].shape == (12, 3, 32, 32) and seen["y"].tolist() == [0, 1, 2] * 4
    assert int(step.sampler._counts.sum()) == 12
    with pytest.raises(ValueError, match="transforms_per_sample"):
        MethodStep("baseline", model, opt, CosineSchedule(0.1, 10), kind="cifar", transforms_per_sample=4)
