"""The benchmark's batched weights equal the per-example loop's, and it records ratios."""
import json
import statistics

from papers.hu19.bench import run_benchmark


def test_benchmark_smoke_profile(tmp_path, monkeypatch):
    from papers.hu19 import bench as bench_module

    medians = []

    class MedianSpy:
        """bench's `statistics`, recording every median it takes (one per timed step, in row order)."""

        def __getattr__(self, name):
            return getattr(statistics, name)

        @staticmethod
        def median(values):
            medians.append(statistics.median(values))
            return medians[-1]

    monkeypatch.setattr(bench_module, "statistics", MedianSpy())
    path = run_benchmark("hu19", repeats=1, out_dir=tmp_path, profile="smoke")
    bench = json.loads(path.read_text())
    assert bench["weights_match_loop_1e-5"] and bench["max_rel_meta_grad_diff_vs_loop"] < 1e-4
    rows = {r["name"]: r for r in bench["rows"]}
    assert rows["base"]["ratio_to_base"] == 1.0
    assert {"ren", "ours_weight", "ours_weight_loop"} <= set(rows)
    assert all(r["seconds_per_step"] > 0 for r in rows.values())

    # the exact (unrounded) ratios behind the verdicts: the medians in row order
    assert len(medians) == len(bench["rows"])
    median = dict(zip((r["name"] for r in bench["rows"]), medians))
    ratio = {name: m / median["base"] for name, m in median.items()}
    for name, row in rows.items():
        assert row["ratio_to_base"] == round(ratio[name], 2)
        assert row["seconds_per_step"] == round(median[name], 4)
    ren, ours, loop, why = bench["verdicts"]
    for verdict, name in ((ren, "ren"), (ours, "ours_weight")):
        # e.g. "ren: 3.12x base, target <= 3.0x: NOT met"; met iff the ratio itself is <= 3.0, so a ratio
        # printed as 3.00x can be either
        assert verdict == (f"{name}: {ratio[name]:.2f}x base, target <= 3.0x: "
                           + ("met" if ratio[name] <= 3.0 else "NOT met"))
    speedup = median["ours_weight_loop"] / median["ours_weight"]
    assert bench["speedup_vs_loop"] == round(speedup, 2)
    assert loop == (f"ours_weight vs the per-example loop: {speedup:.2f}x faster, target >= 3x: "
                    + ("met" if speedup >= 3.0 else "NOT met"))
    assert why.startswith("Why:")


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
