"""influence tables: run configs, G cached once per data set by prepare, smoke runs of every method through the
runner, params errors, the retraining command."""
import copy
import json
import os
from pathlib import Path

import pytest
import torch

from common.config import load_params
from common.errors import ConfigError
from papers.influence import retraining, tables
from pipelines.grid import prepare, run_tables, table_configs
from tests.conftest import REPO, killed_and_resumed


@pytest.fixture
def mnist_mirror() -> str:
    path = os.environ.get("REPRO_DATA_MIRROR")
    if not path or not (Path(path) / "mnist").is_dir():
        pytest.skip("REPRO_DATA_MIRROR with mnist/ is needed")
    return path


@pytest.fixture
def params(tmp_path, mnist_mirror) -> dict:
    p = load_params(REPO / "params.yaml")
    p["base"].update(results_dir=str(tmp_path / "results"), splits_dir=str(tmp_path / "splits"),
                     tracking_uri="none", data_mirror=mnist_mirror, profile="smoke")
    p["base"]["runner"].update(workers=1)
    return p


def block(profile="smoke", table="table1") -> dict:
    return copy.deepcopy(load_params(REPO / "params.yaml")["influence"]["profiles"][profile][table])


# ------------------------------------------------------------------------------------------ configs
def test_paper_profile_follows_appendix_b_and_only_proposed_carries_g_and_e():
    p = load_params(REPO / "params.yaml")
    t1 = {(c["setting"], c["method"]): c for c in table_configs(p, "influence", "paper", "table1") if c["seed"] == 0}
    assert set(t1) == {(s, m) for s in ("mnist_1pct", "mnist_10pct") for m in ("none", "heuristic", "proposed")}
    prop = t1[("mnist_1pct", "proposed")]
    assert prop["optimizer"] == {"name": "adam", "lr": 0.01, "betas": [0.9, 0.99], "weight_decay": 0.0}
    assert prop["batch_size"] == 128 and prop["arch"] == "cnn4" and prop["dev_per_class"] * 10 == 5000
    assert (prop["transform"]["lr"], prop["transform"]["betas"], prop["transform"]["batch_size"]) == \
        (1e-4, [0.5, 0.9], 128)
    assert (prop["encoder"]["lr"], prop["encoder"]["betas"], prop["encoder"]["batch_size"]) == (0.01, [0.9, 0.99], 128)
    assert prop["train_counts"] == [55] * 10 and t1[("mnist_10pct", "none")]["train_counts"] == [550] * 10
    assert "transform" not in t1[("mnist_1pct", "heuristic")] and "encoder" not in t1[("mnist_1pct", "none")]
    assert "crop_pad" not in t1[("mnist_1pct", "none")] and "heuristic_ops" in t1[("mnist_1pct", "heuristic")]
    t2 = {(c["setting"], c["method"]): c for c in table_configs(p, "influence", "paper", "table2") if c["seed"] == 0}
    assert (t2[("cifar10_100pct", "none")]["arch"] == "resnet56"
            and t2[("cifar10_100pct", "none")]["train_counts"] is None)
    # per setting, proposed first: `repro prepare` meets a config that carries G's params
    assert next(c["method"] for c in table_configs(p, "influence", "paper", "table1")) == "proposed"


def test_cpu_profile_plan():
    p = load_params(REPO / "params.yaml")
    t1, t2 = (table_configs(p, "influence", "cpu", t) for t in ("table1", "table2"))
    assert len(t1) == 2 * 3 * 5 and len(t2) == 1 * 3 * 3
    assert {c["setting"] for c in t2} == {"cifar10_10pct"}
    g1 = {json.dumps(c["transform"], sort_keys=True) for c in t1 if c["method"] == "proposed"}
    assert len(g1) == 1                                  # one G for both MNIST columns (once per data set)


# ------------------------------------------------------------------------------------ through the runner
def test_prepare_fits_g_once_and_every_method_runs_through_the_runner(params, tmp_path):
    written = prepare(params, "influence", "smoke", ["table1"])
    g_files = list((tmp_path / "splits" / "smoke" / "influence" / "transforms").glob("mnist_*.pt"))
    assert len(written) == 1 and len(g_files) == 1
    before = g_files[0].stat().st_mtime_ns
    report = run_tables(params, "influence", "smoke", ["table1"])
    assert not report.failed and len(report.done) == 3
    assert g_files[0].stat().st_mtime_ns == before       # the cached G is reused, not refitted
    out = tmp_path / "results" / "smoke" / "influence" / "table1" / "mnist_1pct"
    prop = json.loads((out / "proposed" / "seed0.json").read_text())["metrics"]
    assert prop["encoder_rounds"] == 1 and prop["transform"]["path"] == g_files[0].name
    assert prop["encoder_log"][0]["s_val_residual"] < 1e-8
    for method in ("none", "heuristic"):
        metrics = json.loads((out / method / "seed0.json").read_text())["metrics"]
        assert 0 <= metrics["test_acc"] <= 100 and "transform" not in metrics


def test_cached_g_with_other_params_is_an_error(params, tmp_path, mnist_mirror):
    config = next(c for c in table_configs(params, "influence", "smoke", "table1") if c["method"] == "proposed")
    split = tmp_path / "splits" / "smoke" / "influence" / "table1" / "x.json"
    data = tables._dataset(config, mnist_mirror)
    tables.load_or_fit_generator(config, data, split)
    path = tables.transform_path(config, split)
    saved = torch.load(path, weights_only=True)
    saved["config"] = {**saved["config"], "steps": 999}
    torch.save(saved, path)
    with pytest.raises(ConfigError, match="cached transformation model was trained with other params; delete it"):
        tables.load_or_fit_generator(config, data, split)


# ------------------------------------------------------------------------------------------ params
WHERE = "influence.profiles.smoke.table1"


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b["encoder"].update(damping=0.0), (r"encoder.damping: expected a number > 0, got 0.0: the softmax "
                                                  r"top-layer Hessian of F is singular")),
    (lambda b: b["encoder"].update(damping=-0.5), r"encoder.damping: expected a number > 0, got -0.5"),
    (lambda b: b["transform"].update(pool_kernel=4), r"transform.pool_kernel: expected an odd kernel"),
    (lambda b: b.update(arch="resnet9"), r"\.arch: expected 'cnn4' or 'resnet<6n\+2>'"),
    (lambda b: b.update(heuristic_ops=["rotate", "solarize"]), r"heuristic_ops\[1\]: unknown heuristic op 'solarize'"),
    (lambda b: b.pop("transform"), r"\.transform: missing \(expected a mapping; needed by proposed\)"),
    (lambda b: b.update(methods=["none", "ratner_mf"]), r"unknown method\(s\) \['ratner_mf'\] for table1"),
], ids=["damping-zero", "damping-negative", "pool-kernel-even", "arch-unknown", "heuristic-op-unknown",
        "transform-missing", "quoted-method"])
def test_bad_params_are_errors_naming_the_key(mutate, message):
    b = block()
    mutate(b)
    with pytest.raises(ConfigError, match=message):
        tables.validate_table_config("table1", b, WHERE)


# ------------------------------------------------------------------------------------------ retraining
def test_retraining_command_writes_json_and_png(tmp_path, mnist_mirror, monkeypatch):
    monkeypatch.setitem(retraining.PROFILES, "tiny", {**retraining.PROFILES["smoke"], "n_train": 40, "n_val": 30,
                                                      "points": 8})
    report = retraining.run("tiny", mnist_mirror, tmp_path)
    assert (tmp_path / "tiny.json").exists() and (tmp_path / "tiny.png").stat().st_size > 0
    for m in report["models"].values():
        assert len(m["predicted"]) == len(m["actual"]) == 8 and -1 <= m["pearson"] <= 1


def test_report_section_shows_g_encoder_rounds_and_retraining(tmp_path, monkeypatch):
    from papers.influence import report_sections as rs
    published = {"tables": {"table1": {"results": {"mnist_1pct": {}},
                                       "settings": {"mnist_1pct": {"label": "MNIST 1%"}}}}}
    g = {"path": "mnist_abc.pt", "sha256": "f" * 64, "images": 64, "history": [{"step": 2, "disp_rms": 0.01,
                                                                                 "image_rms_change": 0.02}]}
    runs = [{"setting": "mnist_1pct", "method": "proposed", "profile": "smoke",
             "metrics": {"transform": g, "encoder_log": [{"epoch": 1, "i_aug_first": -0.1 * k, "i_aug_last": -0.3 * k,
                                                          "seconds": 1.0}]}} for k in (1, 2)]
    runs.append({"setting": "mnist_1pct", "method": "none", "profile": "smoke", "metrics": {}})
    monkeypatch.setattr(rs, "RETRAINING_DIR", tmp_path)
    (tmp_path / "smoke.json").write_text(json.dumps({"classes": [1, 7], "models": {"logistic_regression": {
        "parameters": 34, "n_points": 100, "pearson": 0.9, "spearman": 0.95, "damping": 0.0,
        "solve": {"iterations": 9}}}}))
    text = "\n".join(rs.report_sections("table1", runs, published))
    assert "| MNIST 1% | 1 | 1 | -0.15 | -0.45 | 1 | 2 |" in text and "G `mnist_abc.pt`" in text
    assert "| logistic_regression | 34 | 100 | 0.900 | 0.950 | 0.0 | 9 |" in text
    assert rs.report_sections("table2", [], {"tables": {"table2": {"results": {}, "settings": {}}}}) == []
    monkeypatch.setattr(rs, "FIGURES_DIR", tmp_path)
    (tmp_path / "influence_figure3_smoke.json").write_text(json.dumps({"verdicts": ["row 2: downward -> agrees"]}))
    (tmp_path / "influence_figure4_mnist_smoke.png").write_bytes(b"png")
    text = "\n".join(rs.report_sections("table1", runs, published))
    assert "- row 2: downward -> agrees" in text and "influence_figure4_mnist_smoke.png" in text


def test_proposed_resumes_after_a_kill_to_the_same_numbers(tmp_path, mnist_mirror):
    """Killed after epoch 1 (before the encoder round of epoch 2), resumed from its checkpoint: the same result as
    an uninterrupted run, and fitting G in the run leaves the global RNG as loading it would."""
    p = load_params(REPO / "params.yaml")
    config = next(c for c in table_configs(p, "influence", "smoke", "table1") if c["method"] == "proposed")
    split = tmp_path / "splits" / "smoke" / "influence" / "table1" / "s.json"
    first = tables.execute(config, mnist_mirror, split_path=split, device="cpu")         # fits G
    before, after, resumed = killed_and_resumed(tables.execute, tmp_path / "ckpt.pt", config=config,
                                                mirror=mnist_mirror, split_path=split, device="cpu")
    assert before == [1] and after[0] == 2, "resumed after epoch 1, not from scratch"
    assert resumed["history"] == first["history"]
    assert resumed["metrics"]["encoder_log"][0]["i_aug_last"] == first["metrics"]["encoder_log"][0]["i_aug_last"]
