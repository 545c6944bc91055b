"""`repro mlm` end to end: the params block, the CLI's training/overwrite rules, and the leak guard's
dev pools derived from the registered tables (these import pipelines/ and the registry)."""
import copy
import json

import pytest

from common.text import mlm as mlm_head

SENTENCE = "the cat sat on the mat ."


pytestmark = pytest.mark.usefixtures("one_thread")


def test_held_out_pools_come_from_the_tables_split_definitions():
    """The MLM's leak guard is derived from every registered table's dev pools, not a copied list."""
    from common.config import load_params
    from pipelines.grid import text_dev_pools
    from tests.conftest import REPO
    params = load_params(REPO / "params.yaml")
    assert text_dev_pools(params, "cpu") == {"trec": [("train_tail", 500)], "imdb": [("train_tail_per_class", 500)]}
    edited = copy.deepcopy(params)
    edited["hu19"]["profiles"]["cpu"]["table1"]["settings"]["trec"]["dev_pool_size"] = 800
    assert text_dev_pools(edited, "cpu")["trec"] == [("train_tail", 800)]



SMOKE_BLOCK = {"backbone": "tiny-random-bert", "datasets": ["sst5", "sst2", "trec", "imdb"], "steps": 2,
               "batch_size": 4, "lr": 1.0e-4, "max_seq_len": 32, "seed": 0, "imdb_limit": 10}


def run_cli(tmp_path, block: dict | None, *extra: str) -> int:
    import yaml

    from pipelines.cli import main
    from tests.conftest import REPO
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlm"]["profiles"]["smoke"] = block
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return main(["--params", str(tmp_path / "params.yaml"), "mlm", "--profile", "smoke", *extra])


def test_cli_mlm_trains_then_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mlm_head, "mlm_corpus", lambda *args, **kwargs: ([SENTENCE] * 9, [SENTENCE]))
    monkeypatch.chdir(tmp_path)          # the MLM report is published to ./reports/mlm: not the repo's
    block = {**SMOKE_BLOCK, "out_dir": str(tmp_path / "artifacts/mlm/smoke")}
    assert run_cli(tmp_path, block) == 0
    report = json.loads((tmp_path / "artifacts/mlm/smoke/mlm_report.json").read_text())
    assert report["profile"] == "smoke" and report["steps"] == 2 and report["n_train_texts"] == 9
    assert "dev MLM loss" in capsys.readouterr().out
    assert run_cli(tmp_path, block) == 2
    assert "smoke: exists and is not empty" in capsys.readouterr().err
    assert run_cli(tmp_path, block, "--overwrite") == 0
    assert (tmp_path / "reports/mlm/smoke.json").is_file()


@pytest.mark.parametrize("change, message", [
    ({"steps": "600"}, r"mlm\.profiles\.smoke\.steps: expected int, got str '600' \(a quoted number is text"),
    ({"lr": "1e-4"}, r"mlm\.profiles\.smoke\.lr: expected float, got str '1e-4' \(YAML reads 1e-4 as text"),
    ({"step": 3}, r"mlm\.profiles\.smoke: unknown key\(s\) \['step'\]"),
    ({"out_dir": None}, r"mlm\.profiles\.smoke\.out_dir: missing"),
    (None, r"mlm\.profiles\.smoke: missing \(expected the keys"),
    ({"batch_size": 0}, r"mlm\.profiles\.smoke\.batch_size: expected >= 1, got 0"),
    ({"lr": -1.0e-4}, r"mlm\.profiles\.smoke\.lr: expected a number > 0"),
    ({"datasets": []}, r"mlm\.profiles\.smoke\.datasets"),
], ids=["steps-string", "lr-1e-4", "unknown-key", "out_dir-missing", "block-missing", "batch-zero", "lr-negative",
        "no-datasets"])
def test_cli_mlm_bad_params(tmp_path, capsys, change, message):
    import re
    block = None if change is None else {k: v for k, v in {**SMOKE_BLOCK, "out_dir": "x", **change}.items()
                                         if v is not None}
    assert run_cli(tmp_path, block) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x").exists()



def test_mlm_build_is_bit_reproducible_and_records_its_identity(tmp_path):
    """Same code, corpus and thread count on one machine: the same weights (sha256 in the report)."""
    reports = []
    for name in ("a", "b"):
        reports.append(mlm_head.train_mlm("tiny-random-bert", [SENTENCE] * 9, [SENTENCE], tmp_path / name, steps=3,
                                          batch_size=4, max_seq_len=32, threads=1))
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"] == mlm_head.mlm_weights_sha256(tmp_path / "a")
    assert reports[0]["threads"] == 1
    assert json.loads((tmp_path / "b" / mlm_head.REPORT_NAME).read_text())["weights_sha256"] == \
        reports[1]["weights_sha256"]


def test_repro_run_builds_the_mlm_only_when_a_text_run_needs_it(tmp_path, monkeypatch):
    """A fresh clone with every result committed never builds the MLM; a missing text run does, once,
    and the built MLM is compared with the committed report's identity."""
    import yaml

    from common.config import config_hash
    from common.io import write_json_atomic
    from pipelines import mlm_stage
    from tests.conftest import REPO
    monkeypatch.setattr(mlm_head, "mlm_corpus", lambda *args, **kwargs: ([SENTENCE] * 9, [SENTENCE]))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    out_dir = tmp_path / "artifacts/mlm/smoke"
    params["mlm"]["profiles"]["smoke"] = {**SMOKE_BLOCK, "out_dir": str(out_dir), "threads": 1}
    config = {"paper": "hu19", "table": "table1", "setting": "sst5", "method": "fixed_aug", "seed": 0,
              "profile": "smoke", "mlm_dir": str(out_dir)}
    results, reports = tmp_path / "results", tmp_path / "reports/mlm"
    result_path = results / "smoke/hu19/table1/sst5/fixed_aug/seed0.json"
    write_json_atomic(result_path, {**config, "config_hash": config_hash(config), "git_sha": "x", "metrics": {},
                                    "wall_s": 1.0, "finished_at": "2026-12-01T00:00:00+00:00"})
    assert mlm_stage.ensure_mlm(params, "smoke", [config], results, reports) is None    # every run done
    assert not out_dir.exists()
    result_path.unlink()
    first = mlm_stage.ensure_mlm(params, "smoke", [config], results, reports)
    sha = mlm_head.mlm_weights_sha256(out_dir)
    assert sha and "no committed MLM report" in first
    mlm_stage.publish_mlm_report(out_dir, "smoke", reports)
    monkeypatch.setattr(mlm_stage, "build_mlm", lambda *a, **k: pytest.fail("rebuilt an MLM that exists"))
    assert "identical to the committed one" in mlm_stage.ensure_mlm(params, "smoke", [config], results, reports)
    committed = json.loads((reports / "smoke.json").read_text())
    write_json_atomic(reports / "smoke.json", {**committed, "weights_sha256": "0" * 64})
    assert "differs from the committed one" in mlm_stage.ensure_mlm(params, "smoke", [config], results, reports)
    elsewhere = {**config, "mlm_dir": str(tmp_path / "mine")}
    with pytest.raises(Exception, match=r"mlm_dir .*mine: holds no MLM .* is not mlm\.profiles\.smoke\.out_dir"):
        mlm_stage.ensure_mlm(params, "smoke", [elsewhere], results, reports)
