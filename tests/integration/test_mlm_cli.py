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



SMOKE_BLOCK = {"backbone": "tiny-random-bert", "datasets": ["sst5", "sst2", "trec", "imdb"], "steps": 2, "batch_size": 4, "lr": 1.0e-4, "max_seq_len": 32,
               "seed": 0, "imdb_limit": 10}


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
    assert (tmp_path / "reports/mlm/hu19_smoke.json").is_file()


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

