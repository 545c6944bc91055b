"""The metaaugment speed benchmark on its smoke profile: every measurement runs and is recorded with its verdict."""
import json

from papers.metaaugment import bench
from pipelines.papers import bench_suites


def test_speed_benchmark_smoke_profile(tmp_path):
    path = bench.run_benchmark(repeats=1, out_dir=tmp_path, profile="smoke")
    assert path == tmp_path / "metaaugment_speed.json"
    result = json.loads(path.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["baseline step"]["ratio_to_baseline"] == 1.0
    for name in ("randaugment", "metaaugment (jvp)", "metaaugment (double_backward)", "metaaugment_ownfe (jvp)",
                 "metaaugment (jvp via torch.func, before the tangent program)"):
        assert rows[f"{name} step"]["seconds_per_step"] > 0
    assert next(r for n, r in rows.items() if n.startswith("14-op pipeline"))["images_per_second"] > 0
    assert len(result["verdicts"]) == 1 and result["verdicts"][0].endswith(("met", "NOT met"))
    assert "ResNet-8" in result["setup"]


def test_bench_suite_is_registered():
    assert set(bench_suites("metaaugment")) == {"speed"}
