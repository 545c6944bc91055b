"""The mmel speed benchmark on its smoke profile: every measurement runs and is recorded with its verdict."""
import json

import pytest

from papers.mmel import bench
from pipelines.papers import bench_suites


def test_speed_benchmark_smoke_profile(tmp_path):
    path = bench.run_benchmark("mmel", repeats=1, out_dir=tmp_path, profile="smoke")
    assert path == tmp_path / "mmel_speed.json"
    result = json.loads(path.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    ratio = [v for v in result["verdicts"] if v.startswith("MMEL-H step / DA+UNI step")]
    assert len(ratio) == 1 and ratio[0].endswith(("met", "NOT met"))
    uni, hard = rows["da_uni step (|B| = 3)"], rows["mmel_h step (|B| = 3)"]
    assert uni["ratio_to_da_uni"] == 1.0 and hard["ratio_to_da_uni"] == pytest.approx(
        hard["seconds_per_step"] / uni["seconds_per_step"], abs=0.01)
    views = [r for name, r in rows.items() if name.startswith("crop+flip views")]
    assert views and all(r["views_per_second"] > 0 for r in views)
    compiled = [r for name, r in rows.items() if ", compiled (" in name]
    assert len(compiled) == 2 and all(r["first_call_s"] >= 0 and r["images_per_second"] > 0 for r in compiled)
    assert sum("torch.compile (aot_eager) vs eager" in v for v in result["verdicts"]) == 2
    assert "ResNet-8" in result["setup"]


def test_bench_suite_is_registered():
    assert set(bench_suites("mmel")) == {"speed"}
