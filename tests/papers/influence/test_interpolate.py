"""The Fig. 4 analog (tau interpolation strip) from the cached G of the smoke profile."""
import json
import os
from pathlib import Path

import pytest
import torch

from common.config import load_params
from common.errors import ConfigError
from papers.influence import interpolate, tables
from tests.conftest import REPO


def test_interpolation_taus_are_a_line_between_two_prior_draws():
    taus = interpolate.interpolation_taus(3, steps=10)
    assert taus.shape == (10, 128) and taus.abs().max() <= 1
    assert torch.allclose(taus[4] - taus[3], taus[9] - taus[8], atol=1e-6)     # evenly spaced on one line
    assert not torch.allclose(taus[0], taus[-1])


def test_strip_from_the_cached_g(tmp_path):
    mirror = os.environ.get("REPRO_DATA_MIRROR")
    if not mirror or not (Path(mirror) / "mnist").is_dir():
        pytest.skip("REPRO_DATA_MIRROR with mnist/ is needed")
    params = load_params(REPO / "params.yaml")
    params["base"]["splits_dir"] = str(tmp_path / "splits")
    with pytest.raises(ConfigError, match=r"no cached G for smoke/table1; run `repro prepare --paper influence"):
        interpolate.run(params, "smoke", "table1", tmp_path, mirror=mirror)
    config = interpolate.proposed_config(params, "smoke", "table1")
    split = tmp_path / "splits" / "smoke" / "influence" / "table1" / "x.json"
    tables.load_or_fit_generator(config, tables._dataset(config, mirror), split)     # what `repro prepare` caches
    report = interpolate.run(params, "smoke", "table1", tmp_path / "out", mirror=mirror, steps=4)
    stem = tmp_path / "out" / "influence_figure4_mnist_smoke"
    assert stem.with_suffix(".png").stat().st_size > 5_000
    assert json.loads(stem.with_suffix(".json").read_text()) == report
    assert report["generator"]["path"] == tables.transform_path(config, split).name
    assert [c["alpha"] for c in report["columns"]] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert all(c["disp_rms_px"] > 0 and c["image_rms_change"] > 0 for c in report["columns"])


def test_unknown_profile_is_a_clear_error(capsys):
    with pytest.raises(SystemExit, match=r"error: influence.profiles: no profile 'gpu'; expected one of \['cpu', "):
        interpolate.main(["--profile", "gpu"])
