"""mmel GLUE tables: losses per method, grouped forward, data artifacts, smoke runs, report cells."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import yaml

from common.errors import ConfigError, DataError
from papers.mmel import tables, text_data
from papers.mmel import text_tables as tt
from papers.mmel.mmel import mmel_h_loss
from pipelines.reports.table_report import cell_runs
from tests.conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
SMOKE = PARAMS["mmel"]["profiles"]["smoke"]["table3"]


def smoke_configs(**overrides):
    cfg = {**copy.deepcopy(SMOKE), **overrides}
    return tables.run_configs("table3", cfg, "smoke")


# ------------------------------------------------------------------------------------------ losses
def test_da_uni_is_mmel_h_with_infinite_lambda_on_teacher_labels():
    torch.manual_seed(0)
    out, y = torch.randn(4, 3, 2), torch.tensor([0, 1, 1, 0])
    teacher = torch.softmax(torch.randn(4, 2, 2), -1)
    uni, w = tt.method_loss("da_uni", "cola", out, y, teacher, None, None)
    labels = torch.cat([torch.nn.functional.one_hot(y, 2).float()[:, None], teacher], 1)
    assert torch.allclose(uni, mmel_h_loss(out, labels, math.inf).loss)
    assert torch.allclose(w, torch.full((4, 3), 1 / 3))
    h, wh = tt.method_loss("mmel_h", "cola", out, y, teacher, 1.0, None)
    assert torch.allclose(h, mmel_h_loss(out, labels, 1.0).loss) and not torch.allclose(wh, w)


def test_original_label_variants_ignore_the_teacher():
    torch.manual_seed(1)
    out, y = torch.randn(3, 4, 2), torch.tensor([1, 0, 1])
    t1, t2 = torch.softmax(torch.randn(3, 3, 2), -1), torch.softmax(torch.randn(3, 3, 2), -1)
    for method in ("mmel_h_original_label", "mmel_s_original_label"):
        a, _ = tt.method_loss(method, "cola", out, y, t1, 1.0, 1.0)
        b, _ = tt.method_loss(method, "cola", out, y, t2, 1.0, 1.0)
        assert torch.equal(a, b)
    a, _ = tt.method_loss("mmel_s", "cola", out, y, t1, 1.0, 1.0)
    b, _ = tt.method_loss("mmel_s", "cola", out, y, t2, 1.0, 1.0)
    assert not torch.equal(a, b)


def test_baseline_sees_x_i_only_and_regression_uses_squared_error():
    out, y = torch.randn(5, 1, 1), torch.rand(5) * 5
    loss, w = tt.method_loss("baseline", "stsb", out, y, None, None, None)
    assert w is None and torch.allclose(loss, ((out[:, 0, 0] - y) ** 2).mean())
    out5, teacher = torch.randn(5, 3, 1), torch.rand(5, 2) * 5
    loss, w = tt.method_loss("mmel_h", "stsb", out5, y, teacher, 1.0, None)
    assert w.shape == (5, 3) and torch.allclose(w.sum(-1), torch.ones(5))


def test_grouped_forward_equals_one_padded_forward():
    from common.text.classifier import build_text_classifier
    torch.manual_seed(0)
    model = build_text_classifier("tiny-random-bert", 2, 32).eval()
    ids = torch.zeros(6, 3, 32, dtype=torch.long)
    lengths = torch.tensor([[3, 9, 30], [5, 5, 12], [2, 20, 7], [31, 4, 6], [8, 8, 8], [15, 3, 22]])
    for (i, j), n in np.ndenumerate(lengths.numpy()):
        ids[i, j, 0], ids[i, j, 1:n - 1], ids[i, j, n - 1] = 101, torch.randint(1000, 2000, (n - 2,)), 102
    types = (torch.arange(32) > 10).long().expand(6, 3, 32) * (ids != 0)
    with torch.no_grad():
        one, grouped = tt.forward(model, ids, types, max_groups=1), tt.forward(model, ids, types, max_groups=4)
    assert one.shape == (6, 3, 2)
    assert torch.allclose(one, grouped, atol=1e-5)


# -------------------------------------------------------------------------------------------- data
def test_train_rows_are_a_seeded_sorted_subset():
    a, b = text_data.train_rows(100, 10, 0), text_data.train_rows(100, 10, 0)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(a) == 10
    assert not np.array_equal(a, text_data.train_rows(100, 10, 1))
    assert np.array_equal(text_data.train_rows(5, None, 0), np.arange(5))


def test_glue_mlm_corpus_holds_out_every_dev_and_test_sentence(mirror):
    train, dev = text_data.glue_mlm_corpus(mirror)
    held_out = set()
    for task in text_data.GLUE_TASKS:
        for split, (x, _) in text_data.load_task(task, mirror).items():
            if split != "train":
                held_out.update(" ".join(s.split()) for row in x for s in (row if isinstance(row, tuple) else (row,)))
    assert not (set(train) | set(dev)) & held_out
    assert len(set(train)) == len(train) and not set(train) & set(dev)
    assert len(train) > 20_000 and 0.015 < len(dev) / (len(train) + len(dev)) < 0.025


def test_a_changed_split_file_is_refused(tmp_path, mirror):
    config = smoke_configs()[0]
    path = tmp_path / "split.json"
    text_data.write_split(path, config, 100)
    text_data.write_split(path, config, 100)              # same config: accepted
    with pytest.raises(DataError, match="split file differs"):
        text_data.write_split(path, {**config, "train_limit": 5}, 100)
    before = path.read_bytes()
    path.write_text(before.decode()[:40])                 # truncated: an error naming the file, left untouched
    with pytest.raises(DataError, match=r"split\.json: corrupt split index file"):
        text_data.write_split(path, config, 100)
    assert path.read_bytes() == before[:40]


def test_another_teacher_config_gets_its_own_file_and_a_copied_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {**smoke_configs()[0], "n_train": 2}
    made = {"outputs": np.full((2, 2, 2), 0.5), "dev_score": 1.0}
    outputs, dev = text_data.ensure_teacher(config, lambda: made, "sha")
    assert outputs.shape == (2, 2, 2) and dev == 1.0
    first = text_data.artifact_path(config, "teacher", text_data.teacher_meta(config, "sha"))
    before = first.read_bytes()
    # an edited recipe key (lr) trains a new teacher beside the old one, which stays as it was
    again = {"outputs": np.full((2, 2, 2), 0.25), "dev_score": 2.0}
    changed = {**config, "lr": 1.0}
    outputs, dev = text_data.ensure_teacher(changed, lambda: again, "sha")
    assert dev == 2.0 and np.allclose(outputs, 0.25) and first.read_bytes() == before
    second = text_data.artifact_path(changed, "teacher", text_data.teacher_meta(changed, "sha"))
    assert second != first and second.is_file()
    # the first config finds its own outputs again, without training
    outputs, dev = text_data.ensure_teacher(config, lambda: pytest.fail("retrained"), "sha")
    assert dev == 1.0
    # a file copied under another config's name is refused, naming the key that differs
    second.write_bytes(before)
    with pytest.raises(DataError, match=r"teacher outputs made for another config \(differs in \['lr'\]; the file"):
        text_data.ensure_teacher(changed, lambda: again, "sha")


# -------------------------------------------------------------------------------------- smoke runs
def test_smoke_runs_of_every_method_score_their_cells(tmp_path, monkeypatch, mirror):
    monkeypatch.chdir(tmp_path)
    results = {}
    for c in smoke_configs():
        r = tables.execute(c, mirror, split_path=tmp_path / f"split_{c['task']}.json")
        results[(c["task"], c["method"])] = r
        cells = r["metrics"]["cells"]
        assert ("table4" in cells) == (c["method"] in tt.TABLE4_METHODS)
        assert ("table3" in cells) == (not c["method"].endswith("_original_label"))
        if "table3" in cells:
            expected = {f"dev_{c['task']}"} | ({"test_stsb"} if c["task"] == "stsb" else set())
            assert set(cells["table3"]) == expected
        assert all(math.isfinite(v) for t in cells.values() for v in t.values())
        assert (r.get("mlm") is None) == (c["method"] == "baseline")
    assert len(list((tmp_path / "artifacts/mmel/smoke/cola").glob("views_b3-*.json"))) == 1
    [stsb_views] = (tmp_path / "artifacts/mmel/smoke/stsb").glob("views_b3-*.json")
    views = json.loads(stsb_views.read_text())
    assert len(views["views"]) == 12 and all(len(v) == 2 for v in views["views"])
    # same seed, same numbers (the artifacts are reused, the run itself is repeated)
    c = next(c for c in smoke_configs() if c["task"] == "stsb" and c["method"] == "mmel_s")
    again = tables.execute(c, mirror)
    assert again["metrics"]["cells"] == results[("stsb", "mmel_s")]["metrics"]["cells"]


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("key, value, message", [
    ("num_views", 1, r"table3\.num_views: expected >= 2"),
    ("lambda_p", 0.0, r"table3\.lambda_p"),
    ("mask_ratio", 1.5, r"table3\.mask_ratio"),
    ("settings", {"sst3": {}}, r"sst3"),
    ("methods", ["mmel_x"], r"mmel_x"),
])
def test_bad_text_table_params_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        tables.validate_table_config("table3", {**copy.deepcopy(SMOKE), key: value}, "mmel.profiles.smoke.table3")


# ------------------------------------------------------------------------------------- report cells
def test_cell_runs_turn_one_run_into_its_cells_of_a_table():
    run = {"table": "table3", "setting": "stsb", "method": "mmel_h", "seed": 0,
           "metrics": {"test_acc": 80.0, "cells": {"table3": {"dev_stsb": 80.0, "test_stsb": 75.0},
                                                    "table4": {"stsb": 80.0}}}}
    plain = {"table": "table1", "setting": "x", "method": "da", "seed": 0, "metrics": {"test_acc": 1.0}}
    rows3 = cell_runs([run, plain], "table3")
    assert {(r["setting"], r["metrics"]["test_acc"]) for r in rows3} == {("dev_stsb", 80.0), ("test_stsb", 75.0)}
    assert [(r["table"], r["setting"]) for r in cell_runs([run], "table4")] == [("table4", "stsb")]
    assert cell_runs([run, plain], "table1") == [plain]


def test_table4_is_built_from_table3_runs_checked_against_table3_params():
    from common.config import config_hash
    from pipelines.reports.published import load_published
    from pipelines.reports.table_report import build_table
    params = copy.deepcopy(PARAMS)
    runs = []
    for c in smoke_configs():
        value = 50.0 + c["seed"] + (5.0 if c["method"] in ("mmel_h", "mmel_s") else 0.0)
        cells = {"table4": {c["task"]: value}} if c["method"] in tt.TABLE4_METHODS else {}
        runs.append({**{k: c[k] for k in ("paper", "table", "setting", "method", "seed", "profile")},
                     "config_hash": config_hash(c), "metrics": {"test_acc": value, "cells": cells}})
    runs.append({**runs[-1], "seed": 7, "config_hash": "stale"})      # a run of old params: not counted
    report = build_table(load_published("mmel", REPO / "papers"), "table4", params, "mmel", "smoke", runs)
    ours = {(c.setting, c.method): c.ours for c in report.cells if c.ours is not None}
    assert set(ours) == {(t, m) for t in ("cola", "stsb") for m in tt.TABLE4_METHODS}
    assert all(s.n == 1 and s.mean == 55.0 for (t, m), s in ours.items() if not m.endswith("_original_label"))
    assert len(report.stale) == 1 and report.stale[0]["setting"] in ("cola", "stsb")
    assert not any("no `paper` profile config" in f for f in report.footnotes)   # compared with table3's


def test_runs_from_must_name_another_table(tmp_path):
    from pipelines.reports.published import load_published
    (tmp_path / "p").mkdir()
    (tmp_path / "p/paper_tables.yaml").write_text(yaml.safe_dump({"n": 5, "tables": {"t1": {
        "title": "x", "runs_from": "t9", "settings": {}, "methods": {}, "results": {}}}}))
    with pytest.raises(ConfigError, match=r"tables\.t1\.runs_from: 't9' is not another table of this file"):
        load_published("p", tmp_path)


def test_glue_time_rows_count_each_run_once():
    from papers.mmel.report_sections import glue_time_rows
    spec = {"methods": {"baseline": {"label": "B"}, "mmel_h": {"label": "H"}},
            "time_h": {"baseline": 2.0, "mmel_h": 3.0}}
    runs = []
    for seed in (0, 1):
        for task in ("cola", "stsb"):
            for method, hours in (("baseline", 1.0), ("mmel_h", 4.0)):
                r = {"method": method, "seed": seed, "config_hash": f"{task}{method}{seed}", "wall_s": hours * 3600}
                runs += [{**r, "setting": f"dev_{task}"}, {**r, "setting": f"test_{task}"}]   # two cells, one run
    rows, tasks = glue_time_rows(spec, runs)
    assert tasks == ["cola", "stsb"]
    assert rows == [["B", "2.0", "1.0x", "2.00 (≥ 2)", "1.0x"], ["H", "3.0", "1.5x", "8.00 (≥ 2)", "4.0x"]]


def test_glue_time_rows_ignore_a_slowed_run_and_a_seed_in_progress():
    """One run slowed by other load moves a median of three by nothing; a task only one method has run
    yet is left out of every sum (else a seed in progress would shorten one method's hours)."""
    from papers.mmel.report_sections import glue_time_rows
    spec = {"methods": {"baseline": {"label": "B"}, "mmel_h": {"label": "H"}}, "time_h": {}}
    runs = [{"method": m, "seed": s, "config_hash": f"{t}{m}{s}", "setting": f"dev_{t}", "wall_s": h * 3600}
            for t in ("cola", "rte") for m, h in (("baseline", 1.0), ("mmel_h", 2.0)) for s in (0, 1, 2)]
    runs[4]["wall_s"] *= 4                                   # cola mmel_h seed 1, slowed 4x
    runs.append({"method": "baseline", "seed": 0, "config_hash": "stsb", "setting": "dev_stsb", "wall_s": 3600})
    rows, tasks = glue_time_rows(spec, runs)
    assert tasks == ["cola", "rte"]
    assert rows == [["B", "—", "—", "2.00 (≥ 3)", "1.0x"], ["H", "—", "—", "4.00 (≥ 3)", "2.0x"]]


def test_mlm_provenance_names_the_runs_of_a_second_mlm_build():
    """Runs whose views came from a rebuilt MLM (another weights hash) are listed by task, method and
    seed; a run scoring two cells (dev, test) counts once; `baseline` (no views) is not counted; one MLM
    gives one line."""
    from papers.mmel.report_sections import mlm_provenance_lines
    def run(task, method, seed, sha):
        r = {"method": method, "seed": seed, "config_hash": f"{task}{method}{seed}", "config": {"task": task},
             "mlm": {"weights_sha256": sha}}
        return [{**r, "setting": f"dev_{task}"}, {**r, "setting": f"test_{task}"}]
    runs = [*run("cola", "mmel_h", 0, "a" * 64), *run("cola", "mmel_h", 1, "a" * 64)]
    assert mlm_provenance_lines(runs) == ["Views and teacher outputs of all 2 counted runs with views come from "
                                          "one mmel MLM (weights sha256 `aaaaaaaaaaaa`).", ""]
    runs += run("stsb", "da_uni", 2, "b" * 64)
    runs.append({"method": "baseline", "seed": 0, "config_hash": "base", "setting": "dev_cola"})   # no views
    lines = mlm_provenance_lines(runs)
    assert "3 counted runs with views come from 2 builds" in lines[0]
    assert lines[2:4] == ["- `aaaaaaaaaaaa`: 2 run(s)", "- `bbbbbbbbbbbb`: 1 run(s): stsb da_uni seed 2"]
