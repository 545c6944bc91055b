"""The toy 2D study (Fig. 3 analog) on its smoke profile: both rows, every method, the figure and its numbers."""
import json

import torch

from papers.influence import toy


def test_toy_smoke_profile_writes_figure_and_numbers(tmp_path):
    report = toy.run("smoke", tmp_path, "fig3")
    assert (tmp_path / "fig3.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "fig3.json").read_text())
    assert saved["verdicts"] == report["verdicts"] and len(saved["verdicts"]) == 4
    assert set(saved["rows"]) == {"misclassified", "shifted"}
    for row in saved["rows"].values():
        assert len(row["per_seed"]) == 2
        for m in toy.METHODS:
            assert 0 <= row["summary"][m]["val_accuracy"]["mean"] <= 1
        seed0 = row["per_seed"][0]
        rnd = seed0["influence"]["rounds"][0]
        assert rnd["i_aug_last"] < rnd["i_aug_first"]            # E lowers the mean I_aug (Eq. 15)
        assert max(abs(v) for v in seed0["influence"]["mean_translation"]) <= toy.COMMON["bound"]
        assert "translations" not in seed0["influence"]


def test_toy_methods_share_the_warmup_and_none_has_no_translation():
    data = toy.make_row("shifted", 20, 0)
    cfg = {**toy.COMMON, **toy.PROFILES["smoke"], "warmup_steps": 20, "e_steps": 3, "f_steps": 5}
    none, inf = toy.run_method("none", data, cfg, 0), toy.run_method("influence", data, cfg, 0)
    assert none["after_warmup_val"] == inf["after_warmup_val"]
    assert "translations" not in none
    assert torch.all(inf["translations"].abs() <= cfg["bound"])
    big = toy.make_row("shifted", 400, 0)                   # row 2's validation points are moved down by `shift`
    assert float(big["train_x"][:, 1].mean() - big["val_x"][:, 1].mean()) > 0.3
