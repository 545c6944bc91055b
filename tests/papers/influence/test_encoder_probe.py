"""The encoder probe observes `proposed` without changing it: same test accuracy as the runner's result, and the
statistics it records are the ones it says (checked on the smoke table)."""
import json

import pytest
import torch

from common.errors import ConfigError
from papers.influence import encoder_probe
from pipelines.grid import prepare, run_tables
from tests.papers.influence.test_tables import mnist_mirror, params  # noqa: F401  (fixtures)


def test_probe_leaves_the_run_unchanged_and_reports_its_rounds(params, tmp_path):  # noqa: F811
    prepare(params, "influence", "smoke", ["table1"])
    report = run_tables(params, "influence", "smoke", ["table1"])
    assert not report.failed
    out = tmp_path / "probe"
    probe = encoder_probe.run(params, "smoke", "table1", "mnist_1pct", 0, out, probe_size=64,
                              mirror=params["base"]["data_mirror"])
    saved = json.loads((out / "smoke_table1_mnist_1pct_seed0.json").read_text())
    assert saved == json.loads(json.dumps(probe))
    # the observer changed nothing: the committed run's test accuracy, to the digit
    assert probe["committed_test_acc"] is not None and probe["test_acc"] == probe["committed_test_acc"]
    (row,) = probe["rounds"]                               # the smoke table has one encoder round
    assert 0 <= row["tau_saturated"] <= 1 and 0 < row["tau_abs_mean"] <= 1 and row["tau_std_over_batch"] >= 0
    assert row["original"]["rms_change"] == 0 and row["original"]["outside_unit"] == 0
    for name in ("encoder", "prior"):
        assert row[name]["rms_change"] > 0 and 0 <= row[name]["acc"] <= 100 and row[name]["ce"] > 0


def test_round_probe_statistics_on_a_known_case():
    """A constant saturated encoder: saturation 1, batch std 0; an identity G: no change, F's accuracy as on x."""
    class Const(torch.nn.Module):
        def forward(self, x):
            return torch.ones(len(x), 4)

    class Identity(torch.nn.Module):
        def forward(self, x, tau):
            return type("T", (), {"x": x})()

    class Step:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        train = type("D", (), {"x": torch.full((6, 1, 2, 2), 255, dtype=torch.uint8),
                               "y": torch.tensor([0, 1, 0, 1, 0, 1])})()
        e, g = Const(), Identity()
    step = Step()
    step.model.train()
    probe = encoder_probe.RoundProbe(probe_size=6)
    probe(step, {"epoch": 3, "i_aug_first": 1.0, "i_aug_last": -2.0})
    (row,) = probe.rows
    assert (row["tau_saturated"], row["tau_abs_mean"], row["tau_std_over_batch"]) == (1.0, 1.0, 0.0)
    assert row["encoder"] == row["original"] and row["encoder"]["acc"] == 50.0 and row["encoder"]["max"] == 1.0
    assert step.model.training                              # the mode is restored


def test_probe_without_prepare_is_a_clear_error(params):  # noqa: F811
    with pytest.raises(ConfigError, match="expected one prepared split file for mnist_1pct.*repro prepare"):
        encoder_probe.prepared_split(__import__("pathlib").Path(params["base"]["splits_dir"]),
                                     encoder_probe.run_config(params, "smoke", "table1", "mnist_1pct", 0))
    with pytest.raises(ConfigError, match="no `proposed` run with setting 'nope'"):
        encoder_probe.run_config(params, "smoke", "table1", "nope", 0)
