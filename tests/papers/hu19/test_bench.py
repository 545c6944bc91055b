"""The benchmark's batched weights equal the per-example loop's, and it records ratios."""
import json

from papers.hu19.bench import run_benchmark


def test_benchmark_smoke_profile(tmp_path):
    path = run_benchmark("hu19", repeats=1, out_dir=tmp_path, profile="smoke")
    bench = json.loads(path.read_text())
    assert bench["weights_match_loop_1e-5"] and bench["max_rel_meta_grad_diff_vs_loop"] < 1e-4
    rows = {r["name"]: r for r in bench["rows"]}
    assert rows["base"]["ratio_to_base"] == 1.0
    assert {"ren", "ours_weight", "ours_weight_loop"} <= set(rows)
    assert all(r["seconds_per_step"] > 0 for r in rows.values())
    ren, ours, loop, why = bench["verdicts"]
    stated = float(ren.split(": ")[1].split("x")[0])            # "ren: 3.12x base, target <= 3.0x: NOT met"
    assert abs(stated - rows["ren"]["ratio_to_base"]) <= 0.011
    assert ren.endswith("target <= 3.0x: met" if stated < 2.995 else "NOT met") or abs(stated - 3.0) < 0.01
    assert ours.startswith("ours_weight: ") and "per-example loop" in loop and why.startswith("Why:")


def test_text_benchmark_smoke_profile(tmp_path):
    from papers.hu19.bench_text import run_text_benchmark

    path = run_text_benchmark(repeats=1, out_dir=tmp_path, profile="smoke", n_aug_meta=2)
    bench = json.loads(path.read_text())
    rows = {r["method"]: r for r in bench["rows"]}
    assert {"base", "ours_weight", "fixed_aug", "ours_aug"} <= set(rows)
    timed = {m: r for m, r in rows.items() if "rest of the meta-gradient" not in m}   # that row is a difference
    assert all(r["ms_per_step"] > 0 for r in timed.values())
    parts = [m for m in rows if m.startswith("  of which: ")]
    assert len(parts) == 4 and rows[parts[-1]]["ms_per_step"] == rows["base"]["ms_per_step"]
    assert "x base" in rows["ours_weight"]["ratio"] and "x fixed_aug" in rows["ours_aug"]["ratio"]
    assert "tiny-random-bert" in bench["setup"]
    assert [v.split(":")[0] for v in bench["verdicts"]] == ["ours_weight", "ours_aug"]
