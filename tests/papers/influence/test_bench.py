"""The influence speed benchmark on its smoke profile: every measurement runs and is recorded with its verdict."""
import json

from pipelines.papers import bench_suites


def test_speed_benchmark_smoke_profile(tmp_path, monkeypatch):
    monkeypatch.delenv("REPRO_DATA_MIRROR", raising=False)        # random images: no data needed
    suites = bench_suites("influence")
    assert set(suites) == {"speed"}
    path = suites["speed"]({"base": {"data_mirror": None}}, "smoke", 1, tmp_path)
    assert path == tmp_path / "influence_speed.json"
    result = json.loads(path.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    ratio = [v for v in result["verdicts"] if "I_aug score of 8 augmented samples (last layer) / none F step" in v]
    assert len(ratio) == 1 and ratio[0].endswith(("met", "NOT met"))
    step = rows["cnn4 (mnist, batch 8): none F step"]
    score = rows["cnn4 (mnist, batch 8): I_aug score, last layer (x~ given)"]
    assert step["ratio_to_none_step"] == 1.0 and score["seconds"] > 0
    cg = [r for name, r in rows.items() if name.startswith("CG, top layer")]
    assert len(cg) == 2 and all(r["residual"] <= float(r["name"].rsplit("rtol ", 1)[1]) for r in cg)
    assert all(r["rel_error_vs_direct"] < 1e-2 for r in cg)
    assert any(name.startswith("CG, all parameters") for name in rows)
    assert "random images" in result["setup"]
