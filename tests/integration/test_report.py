"""`repro report`: verdict rules, population std, deviation footnotes, scoreboard, README block, determinism.

Synthetic published tables and result files in tmp_path; nothing is trained.
"""
import json
import math

import pytest
import yaml

import pipelines.reports as report
from common.config import config_hash, load_params
from common.io import write_json_atomic
from common.run.results import RunKey, collect_results
from papers.hu19.tables import resolve_requirements
from pipelines.grid import table_configs
from pipelines.reports import (
    Stats,
    Verdict,
    like_for_like_verdict,
    ordering_verdict,
    seed_stats,
    table_deviations,
)
from pipelines.reports.figures import figure_bars
from tests.conftest import REPO
from tests.integration.report_toys import section, toy_hu19_published, verdict_rows, write_toy_result

PUBLISHED = toy_hu19_published(std_kind="population std")


def toy_params(tmp_path) -> dict:
    paper_t1 = {"seeds": 4, "arch": "resnet34", "lr": 0.1, "settings": {"s1": {}, "s2": {}}}
    paper_t2 = {"seeds": 4, "arch": "resnet34", "weighting": {"w_decay": 5.0, "norm": "linear"},
                "settings": {"r1": {"minority": 30}, "r2": {"minority": 50}, "r3": {"minority": 100}}}
    cpu_t1 = {"seeds": 2, "arch": "resnet34", "lr": 0.1, "settings": {"s1": {}}, "not_run": {"s2": "needs a GPU"}}
    cpu_t2 = {"seeds": 4, "arch": "resnet18", "weighting": {"w_decay": 2.0, "norm": "linear"},
              "settings": {"r1": {"minority": 20}, "r2": {"minority": 50}}}
    return {"base": {"tracking_uri": "none", "results_dir": str(tmp_path / "results")},
            "hu19": {"profiles": {"paper": {"t1": paper_t1, "t2": paper_t2}, "cpu": {"t1": cpu_t1, "t2": cpu_t2}}}}


# (table, setting, method) -> test accuracies of seeds 0, 1, ...
OUR_ACCURACIES = {
    ("t1", "s1", "base"): [53.0, 57.0],          # 55 ± 2: |5| > 2·√(9/4 + 4/2) = 4.12 -> FAIL
    ("t1", "s1", "m1"): [61.0, 63.0],            # 62 ± 1: |2| <= 2·√(9/4 + 1/2) = 3.32 -> OK
    ("t2", "r1", "base"): [40.0, 42.0],
    ("t2", "r1", "m1"): [45.0, 47.0, math.nan],  # above base as in the paper -> SHAPE; one failed run
    ("t2", "r1", "m2"): [44.0, 46.0],            # above base, the paper has it below -> FAIL
    ("t2", "r2", "base"): [50.0],                # one run: base is still ref, m1 is PENDING
    ("t2", "r2", "m1"): [55.0, 57.0],
}


def write_results(tmp_path, profile="cpu"):
    for (table, setting, method), accuracies in OUR_ACCURACIES.items():
        for seed, acc in enumerate(accuracies):
            write_toy_result(tmp_path / "results", "hu19", table, setting, method, seed, acc, profile=profile,
                             git_sha="bbb" if seed else "aaa", wall_s=1800.0)


def write_toy_run(tmp_path, method: str, seed: int, acc: float) -> None:
    """One extra cpu result of toy table t2, setting r1."""
    write_toy_result(tmp_path / "results", "hu19", "t2", "r1", method, seed, acc, git_sha="ccc", wall_s=10.0,
                     finished_at="2024-01-01")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A synthetic hu19 package dir and results; reports are written under tmp_path."""
    papers_dir = tmp_path / "papers"
    (papers_dir / "hu19").mkdir(parents=True)
    (papers_dir / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(PUBLISHED, sort_keys=False))
    monkeypatch.setattr(report, "PAPERS_DIR", papers_dir)
    monkeypatch.setattr(report, "PAPER_MODULES", {"hu19": "papers.hu19.tables"})
    monkeypatch.chdir(tmp_path)
    write_results(tmp_path)
    return toy_params(tmp_path)


def test_seed_stats_population_std_and_failed_runs():
    stats = seed_stats([1.0, 2.0, 3.0, 4.0])
    assert stats.mean == 2.5 and stats.std == pytest.approx(math.sqrt(1.25))   # sample std would be 1.29
    assert seed_stats([1.0, math.nan, 3.0]) == Stats(n=2, mean=2.0, std=1.0, n_failed=1)
    assert seed_stats([math.nan]).n == 0 and seed_stats([math.nan]).n_failed == 1


def test_like_for_like_rule_boundary():
    paper = Stats(n=4, mean=50.0, std=3.0)           # se^2 = 9/4
    ours = {"n": 4, "std": 4.0}                        # se^2 = 16/4; bound = 2·√6.25 = 5
    assert like_for_like_verdict(paper, Stats(mean=55.0, **ours)) == Verdict("OK")
    assert like_for_like_verdict(paper, Stats(mean=45.0, **ours)) == Verdict("OK")
    assert like_for_like_verdict(paper, Stats(mean=55.01, **ours)) == Verdict("FAIL")
    assert like_for_like_verdict(paper, Stats(mean=44.99, **ours)) == Verdict("FAIL")
    assert like_for_like_verdict(paper, Stats(n=1, mean=50.0, std=0.0)).text == "PENDING (n<2)"


def test_ordering_rule():
    paper_base, paper_up = Stats(4, 50.0, 1.0), Stats(4, 55.0, 1.0)
    ours_base = Stats(3, 40.0, 1.0)
    assert ordering_verdict("m", paper_up, Stats(3, 42.0, 1.0), paper_base, ours_base).text == "SHAPE"
    assert ordering_verdict("m", paper_up, Stats(3, 38.0, 1.0), paper_base, ours_base).text == "FAIL"
    assert ordering_verdict("m", paper_up, Stats(3, 40.0, 1.0), paper_base, ours_base).text == "FAIL"  # tie
    assert ordering_verdict("base", paper_base, ours_base, paper_base, ours_base).text == "ref"
    assert ordering_verdict("m", paper_up, Stats(1, 42.0, 0.0), paper_base, ours_base).text == "PENDING (n<2)"
    assert ordering_verdict("m", paper_up, Stats(3, 42.0, 1.0), paper_base, Stats(1, 40.0, 0.0)).kind == "PENDING"
    assert ordering_verdict("m", paper_up, Stats(3, 42.0, 1.0), paper_base, None).kind == "PENDING"


def test_deviations_of_the_repository_profiles():
    profiles = load_params(REPO / "params.yaml")["hu19"]["profiles"]
    assert table_deviations(profiles["cpu"]["table2"], profiles["paper"]["table2"]) == []
    table4 = table_deviations(profiles["cpu"]["table4"], profiles["paper"]["table4"])
    assert "arch: resnet18 here, resnet34 in the paper profile" in table4
    assert "epochs: 10 here, 15 in the paper profile" in table4
    assert "settings.ratio_20.pretrained: unset here, true in the paper profile" in table4
    assert not any(note.startswith(("seeds", "not_run")) for note in table4)


def test_report_verdicts_footnotes_and_not_run_reasons(toy, tmp_path):
    paths = report.write_reports(toy, "cpu", log_tables=False)
    assert paths == [report.REPORTS_DIR / "hu19.md", report.REPORTS_DIR / "figures" / "hu19_t1.png",
                     report.REPORTS_DIR / "figures" / "hu19_t2.png", report.REPORTS_DIR / "index.md"]
    md = (tmp_path / "reports" / "hu19.md").read_text()
    assert md.startswith("# Replication of A. Author. A Toy Paper. 2024.")
    assert "`cpu` profile" in md and "population std (ddof=0" in md

    t1 = verdict_rows(md, "t1")
    assert t1[("S one", "Base")] == ["50.00 ± 3.00 (4)", "55.00 ± 2.00 (2)", "+5.00", "FAIL"]
    assert t1[("S one", "Method one")] == ["60.00 ± 3.00 (4)", "62.00 ± 1.00 (2)", "+2.00", "OK"]
    assert t1[("S two", "Base")][-1] == "NOT RUN: needs a GPU"
    t1_text = section(md, "t1")
    assert "Verdict rule: like-for-like" in t1_text
    assert "1. n = 2 seeds here vs 4 in the paper" in t1_text and "2. " not in t1_text
    assert "![t1: paper vs ours](figures/hu19_t1.png)" in t1_text

    t2 = verdict_rows(md, "t2")
    assert t2[("R one", "Base")][-1] == "ref"
    assert t2[("R one", "Up")] == ["75.00 ± 2.00 (4)", "46.00 ± 1.00 (2), 1 failed", "-29.00", "SHAPE"]
    assert t2[("R one", "Down")][-1] == "FAIL"
    assert t2[("R two", "Base")][-1] == "ref"
    assert t2[("R two", "Up")][-1] == "PENDING (n<2)"
    assert t2[("R two", "Down")][-1] == "NOT RUN: none of its 4 planned runs finished yet"
    assert t2[("R three", "Base")][-1] == "NOT RUN: not in the `cpu` profile"
    t2_text = section(md, "t2")
    assert "Verdict rule: this table deviates" in t2_text
    for note in ("arch: resnet18 here, resnet34 in the paper profile",
                 "weighting.w_decay: 2.0 here, 5.0 in the paper profile",
                 "settings.r1.minority: 20 here, 30 in the paper profile"):
        assert note in t2_text
    assert "settings.r3" not in t2_text and "seeds here" not in t2_text and "4. " not in t2_text

    inventory = md.split("## Run inventory")[1]
    assert "| t1 | 4 | 2.00 | `aaa`, `bbb` |" in inventory
    assert "| t2 | 10 | 5.00 | `aaa`, `bbb` |" in inventory


def test_paper_profile_is_like_for_like(toy, tmp_path):
    write_results(tmp_path, profile="paper")
    report.write_reports(toy, "paper", log_tables=False)
    md = (tmp_path / "reports" / "hu19.md").read_text()
    assert "Verdict rule: like-for-like" in section(md, "t2")
    assert verdict_rows(md, "t2")[("R one", "Up")][-1] == "FAIL"   # 46 vs 75: numbers compared now
    assert "Footnotes" not in section(md, "t2")


def test_index_scoreboard_counts(toy, tmp_path):
    report.write_reports(toy, "cpu", log_tables=False)
    index = (tmp_path / "reports" / "index.md").read_text()
    assert "| hu19 | t1 | cpu | yes | 1 | 0 | 1 | 0 | 2 | [hu19.md](hu19.md) |" in index
    assert "| hu19 | t2 | cpu | no | 0 | 1 | 1 | 1 | 4 | [hu19.md](hu19.md) |" in index
    for paper in ("mmel", "metaaugment", "influence"):
        assert f"| {paper} | — | cpu | not started |" in index


def test_output_is_deterministic(toy, tmp_path):
    (tmp_path / "reports" / "benchmarks").mkdir(parents=True)
    (tmp_path / "reports" / "benchmarks" / "hu19_weighting.json").write_text(json.dumps({
        "setup": "toy setup", "notes": ["a note"], "speedup_vs_loop": 3.5,
        "rows": [{"name": "base", "seconds_per_step": 0.01, "ratio_to_base": 1.0},
                 {"name": "ours_weight", "seconds_per_step": 0.03, "ratio_to_base": 3.0}]}))
    first_paths = report.write_reports(toy, "cpu", log_tables=False)
    first = {p: p.read_bytes() for p in first_paths}
    second_paths = report.write_reports(toy, "cpu", log_tables=False)
    assert second_paths == first_paths
    assert {p: p.read_bytes() for p in second_paths} == first
    performance = first[report.REPORTS_DIR / "hu19.md"].decode().split("## Performance")[1]
    assert "Setup: toy setup" in performance and "| ours_weight | 0.03 | 3.0 |" in performance
    assert "- a note" in performance and "- speedup_vs_loop: 3.5" in performance


def test_figure_skipped_without_results(toy, tmp_path):
    for path in (tmp_path / "results" / "cpu" / "hu19" / "t1").rglob("*.json"):
        path.unlink()
    paths = report.write_reports(toy, "cpu", log_tables=False)
    assert not (tmp_path / "reports" / "figures" / "hu19_t1.png").exists()
    assert (tmp_path / "reports" / "figures" / "hu19_t2.png") in [tmp_path / p for p in paths]
    assert "_No figure: no results for this table yet._" in section((tmp_path / "reports/hu19.md").read_text(), "t1")


def test_readme_results_block_is_replaced(toy, tmp_path):
    readme = tmp_path / "papers" / "hu19" / "README.md"
    readme.write_text("# hu19\n\nIntro.\n\n<!-- results:start -->\nold numbers\n<!-- results:end -->\n\nOutro.\n")
    paths = report.write_reports(toy, "cpu", log_tables=False)
    assert readme in paths
    text = readme.read_text()
    assert text.startswith("# hu19\n\nIntro.\n\n<!-- results:start -->\n") and text.endswith(
        "<!-- results:end -->\n\nOutro.\n")
    assert "old numbers" not in text
    assert "](../../reports/figures/hu19_t1.png)" in text and "](figures/" not in text
    md = (tmp_path / "reports" / "hu19.md").read_text()
    assert section(text, "t1").replace("../../reports/", "") == section(md, "t1")
    report.write_reports(toy, "cpu", log_tables=False)
    assert readme.read_text() == text   # idempotent


def test_readme_without_markers_is_left_alone(toy, tmp_path):
    readme = tmp_path / "papers" / "hu19" / "README.md"
    readme.write_text("# hu19\n\nNo generated block here.\n")
    assert readme not in report.write_reports(toy, "cpu", log_tables=False)
    assert readme.read_text() == "# hu19\n\nNo generated block here.\n"


def test_table_summaries_are_logged(toy, monkeypatch):
    calls = []

    class RecordingTracker:
        def __init__(self, uri):
            assert uri == "none"

        def log_table(self, paper, table, profile, cells, artifacts):
            calls.append((paper, table, profile, cells, artifacts))

    monkeypatch.setattr(report, "Tracker", RecordingTracker)
    report.write_reports(toy, "cpu", log_tables=False)
    assert calls == []
    report.write_reports(toy, "cpu")
    assert [c[:3] for c in calls] == [("hu19", "t1", "cpu"), ("hu19", "t2", "cpu")]
    t1_cells = calls[0][3]
    assert t1_cells[0] == {"setting": "s1", "method": "base", "mean": 55.0, "std": 2.0, "n": 2, "verdict": "FAIL"}
    assert t1_cells[2]["n"] == 0 and t1_cells[2]["verdict"] == "NOT RUN: needs a GPU"
    assert calls[1][4] == [report.REPORTS_DIR / "hu19.md", report.REPORTS_DIR / "figures" / "hu19_t2.png"]


def test_diverged_runs_are_counted_and_explained(toy, tmp_path):
    key = RunKey("hu19", "t1", "s1", "m1", 1)
    path = key.path(tmp_path / "results", "cpu")
    result = json.loads(path.read_text())
    path.unlink()
    write_json_atomic(path, {**result, "method": "m1",
                             "diverged": {"epoch": 4, "reason": "meta-gradient is not finite"},
                             "metrics": {**result["metrics"], "phi_max": 6.2e18}})
    report.write_reports(toy, "cpu")
    text = (tmp_path / "reports" / "hu19.md").read_text()
    row = verdict_rows(text, "t1")[("S one", "Method one")]
    assert row[1] == "62.00 ± 1.00 (2), 1 diverged"             # still counted, with its best-dev accuracy
    assert "m1 seed 1 at 4 (max phi 6.2e+18)" in section(text, "t1")


def test_paper_orderings_are_checked_on_our_numbers(toy, tmp_path, monkeypatch):
    published = json.loads(json.dumps(PUBLISHED))
    published["tables"]["t2"]["orderings"] = [["m1", "base"], ["m2", "base"], ["m1", "m2"]]
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))
    report.write_reports(toy, "cpu")
    t2 = section((tmp_path / "reports" / "hu19.md").read_text(), "t2")
    rows = {tuple(c.strip() for c in line.strip("|").split(" | ")[:2]): line for line in t2.splitlines()
            if "> base" in line or "m1 > m2" in line}
    # r1: m1 = 46 ± 1 (2 finite) vs base 41 ± 1: +5 beyond 2 SE -> holds
    assert rows[("R one", "m1 > base")].endswith("| holds |")
    assert "46.00 vs 41.00 (+5.00" in rows[("R one", "m1 > base")]
    assert ("R three", "m1 > base") not in rows            # a setting without any run is not listed


def test_figure2_section_from_the_lowest_seed(toy, tmp_path):
    published = json.loads(json.dumps(PUBLISHED))
    published["tables"]["table1"] = published["tables"].pop("t1")
    published["figure2"] = {"sentence": "S.", "label": "negative",
                            "fills": {"striking": {"epoch_1": list("abcde"), "epoch_3": list("fghij")}}}
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))
    toy["hu19"]["profiles"] = {p: {"table1" if t == "t1" else t: c for t, c in v.items()}
                               for p, v in toy["hu19"]["profiles"].items()}
    for seed, word in ((1, "later"), (0, "first")):
        write_toy_result(tmp_path / "results", "hu19", "table1", "s1", "ours_aug", seed, 50.0,
                         figure2={"sentence": "s .", "label": 1, "epoch_0": {"striking": [word] * 5},
                                  "epoch_1": {"striking": ["x"] * 5}, "epoch_3": {"striking": ["y"] * 5}})
    report.write_reports(toy, "cpu")
    text = (tmp_path / "reports" / "hu19.md").read_text()
    assert "Figure 2 analog" in text and "seed 0)" in text
    assert "| striking | 0 | — | first, first, first, first, first |" in text
    assert "| striking | 1 | a, b, c, d, e | x, x, x, x, x |" in text


def test_our_variants_are_compared_with_the_method_they_vary(toy, tmp_path):
    published = json.loads(json.dumps(PUBLISHED))
    published["tables"]["t2"]["orderings"] = [["m1", "base"]]
    published["tables"]["t2"]["our_variants"] = {"m1x": {"of": "m1", "label": "Up, our variant"}}
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))
    for seed, acc in enumerate([30.0, 32.0]):       # below base (41), the paper's m1 is above its base: FAIL
        write_toy_run(tmp_path, "m1x", seed, acc)
    report.write_reports(toy, "cpu", log_tables=False)
    text = (tmp_path / "reports" / "hu19.md").read_text()
    rows = verdict_rows(text, "t2")
    assert rows[("R one", "Up, our variant")] == ["75.00 ± 2.00 (4)", "31.00 ± 1.00 (2)", "-44.00", "FAIL"]
    assert "| R one | m1x > base | yes | 31.00 vs 41.00" in section(text, "t2")
    index = (tmp_path / "reports" / "index.md").read_text()       # the variant's FAIL is not a published cell
    assert "| hu19 | t2 | cpu | no | 0 | 1 | 1 | 1 | 4 | [hu19.md](hu19.md) |" in index
    published["tables"]["t2"]["our_variants"] = {"m1x": {"of": "nope", "label": "x"}}
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))
    with pytest.raises(report.ConfigError, match="our_variants.m1x.of: 'nope' is not a method"):
        report.write_reports(toy, "cpu", log_tables=False)


def test_a_result_stated_only_in_the_text_is_shown_and_its_claims_checked(toy, tmp_path):
    """`stated_in_text`: our runs of a method the paper reports only in prose get their own rows and
    ordering checks under the table, but no verdict cell and no scoreboard entry."""
    published = json.loads(json.dumps(PUBLISHED))
    published["tables"]["t2"]["stated_in_text"] = {"aug": {
        "label": "Augmentation", "value": "around 50", "source": "Sec. 9", "orderings": [["m1", "aug"]]}}
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))
    for seed, acc in enumerate([50.0, 52.0]):       # r1: m1 is 46 ± 1, so m1 > aug does NOT hold
        write_toy_run(tmp_path, "aug", seed, acc)
    report.write_reports(toy, "cpu", log_tables=False)
    markdown = (tmp_path / "reports" / "hu19.md").read_text()
    text = section(markdown, "t2")
    assert "Augmentation: Sec. 9" in text
    assert "| R one | Augmentation | around 50 | 51.00 ± 1.00 (2) |" in text
    assert "| R one | m1 > aug | 46.00 vs 51.00 (-5.00 ± 2.00) | does NOT hold |" in text
    # only its own two-number row: no verdict cell
    assert verdict_rows(markdown, "t2")[("R one", "Augmentation")] == ["around 50", "51.00 ± 1.00 (2)"]
    index = (tmp_path / "reports" / "index.md").read_text()       # same scoreboard as without it
    assert "| hu19 | t2 | cpu | no | 0 | 1 | 1 | 1 | 4 | [hu19.md](hu19.md) |" in index
    # the figure draws it as an ours-only bar after the published cells
    results = collect_results(tmp_path / "results", "cpu", "hu19")
    labels, paper_bars, ours = figure_bars(report.build_table(published, "t2", toy, "hu19", "cpu", results),
                                           published["tables"]["t2"], "r1")
    assert labels[-1] == "Augmentation (paper: text only)" and len(paper_bars) == len(labels) - 1
    assert ours[-1][0] == len(labels) - 1 and ours[-1][1].mean == 51.0 and ours[-1][1].n == 2
    published["tables"]["t2"]["stated_in_text"]["aug"]["orderings"] = [["m1", "base"]]
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))
    with pytest.raises(report.ConfigError, match=r"t2.stated_in_text.aug.orderings: \['m1', 'base'\]"):
        report.write_reports(toy, "cpu", log_tables=False)


def test_a_variant_gets_a_row_only_where_a_profile_plans_it():
    """hu19 table3 lists ours_weight_eq12 as our variant: the smoke profile runs it (a NOT RUN row
    until it has results), the cpu profile does not (no row at all, rather than a NOT RUN cell)."""
    params, published = load_params(REPO / "params.yaml"), report.load_published("hu19")
    assert "ours_weight_eq12" in params["hu19"]["profiles"]["smoke"]["table3"]["methods"]
    assert "ours_weight_eq12" not in params["hu19"]["profiles"]["cpu"]["table3"]["methods"]
    configs = {(c["setting"], c["method"], c["seed"]): c for c in table_configs(params, "hu19", "cpu", "table3")}
    runs = [{"paper": "hu19", "table": "table3", "setting": "ratio_20", "method": m, "seed": seed, "profile": "cpu",
             "config_hash": config_hash(configs[("ratio_20", m, seed)]), "git_sha": "a", "config": {}, "wall_s": 1.0,
             "metrics": {"test_acc": 50.0 + seed, "best_dev_acc": 0.0, "best_epoch": 1, "steps_at_best": 3}}
            for m in ("base", "ren") for seed in (0, 1)]
    smoke = report.build_table(published, "table3", params, "hu19", "smoke", [])
    cpu = report.build_table(published, "table3", params, "hu19", "cpu", runs)
    assert len(cpu.runs) == 4 and report.ordering_rows(cpu, published["tables"]["table3"])
    assert [c.verdict.kind for c in smoke.cells if c.method == "ours_weight_eq12"] == ["NOT RUN"] * 3
    assert not [c for c in cpu.cells if c.method == "ours_weight_eq12"]
    assert {c.method for c in cpu.cells} == {"base", "base_val", "proportion", "ren", "ours_weight"}
    assert not [row for row in report.ordering_rows(cpu, published["tables"]["table3"]) if "eq12" in row[1]]


def test_an_ordering_against_a_quoted_only_method_is_not_testable_rather_than_pending():
    """metaaugment table1 claims metaaugment > ra, where `ra` (Cubuk et al.'s RandAugment) is quoted only:
    the cpu profile never runs it, so that claim is 'not testable here', never PENDING, while the claims
    between planned methods are checked on our numbers."""
    params, published = load_params(REPO / "params.yaml"), report.load_published("metaaugment")
    spec = published["tables"]["table1"]
    assert ["metaaugment", "ra"] in spec["orderings"] and "ra" not in params["metaaugment"]["profiles"]["cpu"][
        "table1"]["methods"]
    configs = {(c["method"], c["seed"]): c for c in table_configs(params, "metaaugment", "cpu", "table1")}
    runs = [{"paper": "metaaugment", "table": "table1", "setting": "cifar10_resnet20", "method": m, "seed": seed,
             "profile": "cpu", "config_hash": config_hash(configs[(m, seed)]), "git_sha": "a", "config": {},
             "wall_s": 1.0, "metrics": {"test_acc": acc + seed, "best_dev_acc": 0.0, "best_epoch": 1,
                                        "steps_at_best": 3}}
            for m, acc in (("baseline", 60.0), ("metaaugment", 70.0)) for seed in (0, 1)]
    cpu = report.build_table(published, "table1", params, "metaaugment", "cpu", runs)
    rows = {row[1]: row for row in report.ordering_rows(cpu, spec) if row[0].startswith("CIFAR-10 ResNet-20")}
    assert rows["metaaugment > ra"][3] == "—"
    assert rows["metaaugment > ra"][-1] == "not testable here (`ra` is not run in this profile)"
    assert rows["ra > baseline"][-1] == "not testable here (`ra` is not run in this profile)"
    assert rows["metaaugment > baseline"][-1] == "holds"
    assert rows["metaaugment > randaugment"][-1] == "PENDING"          # planned, no runs yet
    assert [c.planned for c in cpu.cells if c.setting == "cifar10_resnet20" and c.method in ("ra", "randaugment")] \
        == [False, True]


def test_results_of_an_older_config_are_not_counted(tmp_path):
    """A result whose config hash differs from the current params (e.g. params edited after the
    run) is listed, not averaged; base_val counts only while its base results are current."""
    params = load_params(REPO / "params.yaml")
    configs = {(c["method"], c["seed"]): c for c in table_configs(params, "hu19", "smoke", "table2")}

    def result(method, seed, h, steps=3):
        return {"paper": "hu19", "table": "table2", "setting": "not_pretrained", "method": method, "seed": seed,
                "profile": "smoke", "config_hash": h, "git_sha": "a", "config": {}, "wall_s": 1.0,
                "metrics": {"test_acc": 10.0 + seed, "best_dev_acc": 0.0, "best_epoch": 1, "steps_at_best": steps}}

    bases = [result("base", s, config_hash(configs[("base", s)])) for s in (0, 1)]
    base_val = result("base_val", 0, config_hash(resolve_requirements(configs[("base_val", 0)], bases)))
    stale_ren = result("ren", 0, "0123456789abcdef")
    published = report.load_published("hu19")
    table = report.build_table(published, "table2", params, "hu19", "smoke", [*bases, base_val, stale_ren])
    assert [r["method"] for r in table.stale] == ["ren"] and len(table.runs) == 3
    text = report.render_table_section(table, published, "smoke", None)
    assert "Not counted: 1 result(s) made with another config" in text and "not_pretrained ren seeds 0" in text

    bases[1]["config_hash"] = "fedcba9876543210"             # a stale base makes its base_val stale too
    table = report.build_table(published, "table2", params, "hu19", "smoke", [*bases, base_val])
    assert sorted((r["method"], r["seed"]) for r in table.stale) == [("base", 1), ("base_val", 0)]
