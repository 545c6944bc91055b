"""`reference: <method>` per table, published cells without a std (`std: null` or no key) and a cell's
own `n` in paper_tables.yaml (mmel's Tables 1-5: reference rows `da` and `baseline`, DA+Long with
`n: 1` and no std, SMART and Tables 4-5 without a std).

A toy paper in tmp_path whose reference rows are `da` (like-for-like table) and `baseline` (a table
whose profile deviates, so the ordering rule), with result files there; nothing is trained. The
last tests use the real mmel paper_tables.yaml, params.yaml and dvc.yaml.
"""
import json
import re

import pytest
import yaml

import pipelines.reports as report
from common.config import config_hash, load_params
from pipelines import cli
from pipelines.grid import table_configs
from pipelines.papers import PAPER_MODULES
from pipelines.reports.markdown import RULE_ORDERING
from pipelines.reports.stats import Stats, Verdict, like_for_like_verdict, ordering_verdict
from tests.conftest import REPO
from tests.integration.report_toys import current_hashes_are_h, section, verdict_rows, write_toy_results

PAPER = "toyref"
PUBLISHED = {
    "paper": PAPER, "citation": "A. Author. A Toy Paper With Another Reference Row. 2024.", "n": 5,
    "tables": {
        "img": {"title": "Toy image table (reference da)", "reference": "da",
                "settings": {"s1": {"label": "S one"}, "s2": {"label": "S two"}},
                "methods": {"da": {"label": "Baseline(DA)"}, "long": {"label": "DA+Long"}, "m1": {"label": "M one"}},
                "results": {"s1": {"da": {"mean": 70.0, "std": 1.0}, "long": {"mean": 72.0, "std": None, "n": 1},
                                   "m1": {"mean": 71.0, "std": 0.5, "n": 2}},
                            "s2": {"da": {"mean": 60.0, "std": 1.0}, "long": {"mean": 62.0, "std": None, "n": 1},
                                   "m1": {"mean": 61.0, "std": 0.5}}}},
        "txt": {"title": "Toy text table (reference baseline)", "reference": "baseline",
                "settings": {"r1": {"label": "R one"}},
                "methods": {"baseline": {"label": "Baseline"}, "up": {"label": "Up"}, "smart": {"label": "SMART"}},
                "results": {"r1": {"baseline": {"mean": 80.0, "std": 1.0}, "up": {"mean": 82.0, "std": 1.0},
                                   "smart": {"mean": 79.0}}}},     # no std key at all: as std: null
    },
}
OUR_ACCURACIES = {   # (table, setting, method) -> test accuracies of seeds 0, 1
    ("img", "s1", "da"): [69.0, 71.0],      # 70 ± 1 vs 70 ± 1 (5): OK
    ("img", "s1", "long"): [71.6, 72.0],    # 71.8 ± 0.2 vs 72 (no std): |0.2| <= 2·0.2/√2 = 0.28 -> OK
    ("img", "s1", "m1"): [70.2, 70.4],      # 70.3 ± 0.1 vs 71 ± 0.5 (n 2): |0.7| <= 2·√(0.25/2 + 0.01/2) = 0.72
                                            # -> OK; with the table's n = 5 the bound would be 0.47 -> FAIL
    ("img", "s2", "da"): [59.0, 61.0],      # OK
    ("img", "s2", "long"): [61.0, 61.4],    # 61.2 ± 0.2 vs 62 (no std): |0.8| > 0.28 -> FAIL
    ("img", "s2", "m1"): [61.0, 61.0],      # OK
    ("txt", "r1", "baseline"): [70.0, 72.0],   # ref
    ("txt", "r1", "up"): [73.0, 75.0],         # above baseline, as in the paper -> SHAPE
    ("txt", "r1", "smart"): [72.0, 74.0],      # above baseline, the paper has it below -> FAIL
}


def toy_params(tmp_path) -> dict:
    img = {"seeds": 5, "epochs": 200, "settings": {"s1": {}, "s2": {}}}
    txt = {"seeds": 5, "epochs": 200, "settings": {"r1": {}}}
    return {"base": {"tracking_uri": "none", "results_dir": str(tmp_path / "results")},
            PAPER: {"profiles": {"paper": {"img": img, "txt": txt},
                                 "cpu": {"img": {**img, "seeds": 2},                 # like-for-like (n footnote)
                                         "txt": {**txt, "seeds": 2, "epochs": 20}}}}}   # deviates: orderings


def write_published(tmp_path, published: dict) -> None:
    (tmp_path / "papers" / PAPER).mkdir(parents=True, exist_ok=True)
    (tmp_path / "papers" / PAPER / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))


@pytest.fixture
def toy(tmp_path, monkeypatch):
    write_published(tmp_path, PUBLISHED)
    monkeypatch.setattr(report, "PAPERS_DIR", tmp_path / "papers")
    monkeypatch.setattr(report, "PAPER_MODULES", {PAPER: "papers.mmel.tables"})
    current_hashes_are_h(monkeypatch)
    monkeypatch.chdir(tmp_path)
    write_toy_results(tmp_path / "results", PAPER, OUR_ACCURACIES)
    return toy_params(tmp_path)


# ------------------------------------------------------------------------------------------ the rules
def test_like_for_like_without_a_published_std_uses_our_standard_error_only():
    paper = Stats(n=1, mean=72.0, std=None)
    ours = {"n": 4, "std": 0.5}                        # bound = 2·0.5/√4 = 0.5
    assert like_for_like_verdict(paper, Stats(mean=72.5, **ours)) == Verdict("OK")
    assert like_for_like_verdict(paper, Stats(mean=71.5, **ours)) == Verdict("OK")
    assert like_for_like_verdict(paper, Stats(mean=72.51, **ours)) == Verdict("FAIL")
    assert like_for_like_verdict(paper, Stats(n=1, mean=72.0, std=0.0)).text == "PENDING (n<2)"


def test_ordering_rule_with_another_reference_row():
    paper_da, paper_up = Stats(5, 50.0, 1.0), Stats(5, 55.0, None)     # a cell without std takes part by its mean
    ours_da = Stats(3, 40.0, 1.0)
    assert ordering_verdict("da", paper_da, ours_da, paper_da, ours_da, reference="da").text == "ref"
    # a row named `base` is an ordinary method when the reference is `da`
    assert ordering_verdict("base", Stats(5, 52.0, 1.0), Stats(3, 38.0, 1.0), paper_da, ours_da,
                            reference="da").text == "FAIL"
    assert ordering_verdict("m", paper_up, Stats(3, 42.0, 1.0), paper_da, ours_da, reference="da").text == "SHAPE"
    assert ordering_verdict("m", paper_up, Stats(3, 42.0, 1.0), None, ours_da,
                            reference="da").text == "PENDING (no `da` row in this setting)"


def test_default_reference_rule_text_is_unchanged():
    """hu19's tables have no `reference:` key: the ordering legend must read as before (byte-identical reports)."""
    assert RULE_ORDERING.format(reference="base") == (
        "Verdict rule: this table deviates from the paper's setup (see the footnotes), so the paper's ordering is "
        "compared, not its numbers. A method is SHAPE if sign(ours − ours base) = sign(paper − paper base) in the "
        "same setting, else FAIL; `base` is the reference row (ref); PENDING (n<2) when the method or `base` has "
        "fewer than 2 of our runs; NOT RUN without results.")
    assert report.published.reference_method({}) == "base"


# ------------------------------------------------------------------------------------- the toy report
def test_verdicts_against_the_reference_row_and_cells_without_std(toy, tmp_path):
    paths = report.write_reports(toy, "cpu", log_tables=False)
    assert report.REPORTS_DIR / f"{PAPER}.md" in paths
    md = (tmp_path / "reports" / f"{PAPER}.md").read_text()

    img = verdict_rows(md, "img")
    assert img[("S one", "Baseline(DA)")] == ["70.00 ± 1.00 (5)", "70.00 ± 1.00 (2)", "+0.00", "OK"]
    assert img[("S one", "DA+Long")] == ["72.00 (1), std not published", "71.80 ± 0.20 (2)", "-0.20", "OK"]
    assert img[("S one", "M one")] == ["71.00 ± 0.50 (2)", "70.30 ± 0.10 (2)", "-0.70", "OK"]    # the cell's n
    assert img[("S two", "DA+Long")] == ["62.00 (1), std not published", "61.20 ± 0.20 (2)", "-0.80", "FAIL"]
    assert img[("S two", "M one")][0] == "61.00 ± 0.50 (5)"                                      # the table's n
    img_text = section(md, "img")
    assert "Verdict rule: like-for-like" in img_text
    assert 'Cells marked "std not published": the paper prints no std' in img_text
    assert "2·ours_std/√ours_n" in img_text and "paper_n is a cell's own run count" in img_text

    txt = verdict_rows(md, "txt")
    assert txt[("R one", "Baseline")][-1] == "ref"
    assert txt[("R one", "Up")] == ["82.00 ± 1.00 (5)", "74.00 ± 1.00 (2)", "-8.00", "SHAPE"]
    assert txt[("R one", "SMART")] == ["79.00 (5), std not published", "73.00 ± 1.00 (2)", "-6.00", "FAIL"]
    txt_text = section(md, "txt")
    assert "sign(ours − ours baseline) = sign(paper − paper baseline)" in txt_text
    assert "`baseline` is the reference row (ref)" in txt_text and "`base`" not in txt_text
    assert 'Cells marked "std not published" (the paper prints no std) take part by their means' in txt_text

    verdicts = [row[-1] for table in ("img", "txt") for row in verdict_rows(md, table).values()]
    assert len(verdicts) == 9 and not [v for v in verdicts if v.startswith(("PENDING", "NOT RUN"))]
    assert not re.search(r"\bnan\b|± nan|\binf\b", md)        # the intro's "runs with NaN are listed" is prose
    metrics_text = (tmp_path / "reports" / "metrics" / f"{PAPER}.json").read_text()
    assert "nan" not in metrics_text.lower()
    metrics = json.loads(metrics_text)
    assert metrics["img"]["cells"]["s1"]["long"] == {"n": 2, "mean": 71.8, "std": 0.2, "verdict": "OK"}
    assert metrics["img"]["verdicts"] == {"OK": 5, "SHAPE": 0, "FAIL": 1, "PENDING": 0, "NOT RUN": 0}
    assert metrics["txt"]["cells"]["r1"]["baseline"]["verdict"] == "ref"
    assert metrics["txt"]["verdicts"] == {"OK": 0, "SHAPE": 1, "FAIL": 1, "PENDING": 0, "NOT RUN": 0}
    index = (tmp_path / "reports" / "index.md").read_text()
    assert f"| {PAPER} | img | cpu | yes | 5 | 0 | 1 | 0 | 0 | [{PAPER}.md]({PAPER}.md) | — |" in index
    assert f"| {PAPER} | txt | cpu | no | 0 | 1 | 1 | 0 | 0 | [{PAPER}.md]({PAPER}.md) | — |" in index
    assert (tmp_path / "reports" / "figures" / f"{PAPER}_img.png").stat().st_size > 0   # no error bar, no crash


BAD_PUBLISHED = [
    pytest.param(("img", "reference", "dx"), r"tables\.img\.reference: 'dx' is not a method \(row\) of the table; "
                 r"expected one of \['da', 'long', 'm1'\]", id="reference-unknown"),
    pytest.param(("txt", "reference", ["baseline"]), r"tables\.txt\.reference: \['baseline'\] is not a method",
                 id="reference-not-a-name"),
    pytest.param(("img", "results.s1.long.std", float("nan")), r"tables\.img\.results\.s1\.long\.std: nan; expected "
                 r"a finite number >= 0, or null where the paper prints no std", id="std-nan"),
    pytest.param(("img", "results.s1.long.n", 0), r"tables\.img\.results\.s1\.long\.n: 0; expected a positive "
                 "integer", id="n-zero"),
]


@pytest.mark.parametrize("edit, message", BAD_PUBLISHED)
def test_a_bad_reference_or_published_cell_is_a_clear_error(toy, tmp_path, edit, message):
    published = json.loads(json.dumps(PUBLISHED))
    table, dotted, value = edit
    *parents, key = dotted.split(".")
    target = published["tables"][table]
    for part in parents:
        target = target[part]
    target[key] = value
    write_published(tmp_path, published)
    with pytest.raises(report.ConfigError, match=re.escape(str(tmp_path / "papers" / PAPER / "paper_tables.yaml"))
                       + ": " + message):
        report.write_reports(toy, "cpu", log_tables=False)
    assert not (tmp_path / "reports" / f"{PAPER}.md").exists()


def test_cli_report_with_a_bad_reference_exits_2_naming_the_file_and_key(tmp_path, monkeypatch, capsys):
    """docs/bad_inputs.md row 85: `repro report` on a paper_tables.yaml whose `reference:` is not a row."""
    published = yaml.safe_load((REPO / "papers" / "mmel" / "paper_tables.yaml").read_text())
    published["tables"]["table1"]["reference"] = "base"
    (tmp_path / "papers" / "mmel").mkdir(parents=True)
    (tmp_path / "papers" / "mmel" / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))
    (tmp_path / "papers" / "hu19").mkdir()            # a good paper before it in the registry: not written either
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_bytes(
        (REPO / "papers" / "hu19" / "paper_tables.yaml").read_bytes())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(results_dir=str(tmp_path / "results"), tracking_uri="none")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)                        # papers/ and reports/ are relative to the repo root
    assert cli.main(["--params", str(tmp_path / "params.yaml"), "report", "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert ("error: papers/mmel/paper_tables.yaml: tables.table1.reference: 'base' is not a method (row) of the "
            "table; expected one of ['da', 'da_long', 'da_uni', 'mmel_h', 'mmel_s']") in err
    assert not [p for p in tmp_path.joinpath("reports").rglob("*") if p.is_file()]     # no report file written


# ---------------------------------------------------------------------------------- the real mmel files
def test_mmel_reference_rows_and_cells_without_std_load():
    published = report.load_published("mmel", REPO / "papers")
    tables = published["tables"]
    assert {t: report.published.reference_method(s) for t, s in tables.items()} == {
        "table1": "da", "table2": "da", "table3": "baseline", "table4": "mmel_h_original_label", "table5": "da"}
    cells = {(t, s, m): c for t, spec in tables.items() for s, by in spec["results"].items() for m, c in by.items()}
    no_std = {key for key, c in cells.items() if c.get("std") is None}
    assert all(isinstance(c["std"], float) for key, c in cells.items() if key not in no_std)   # no NaN left
    assert {m for t, _, m in no_std if t in ("table1", "table3")} == {"da_long", "smart"}
    assert all(c.get("std") is None for (t, _, _), c in cells.items() if t in ("table4", "table5"))
    assert {c.get("n") for (t, _, m), c in cells.items() if m == "da_long"} == {1}


def test_mmel_table1_verdicts_are_computed_against_da(tmp_path):
    """With two current-config cpu runs per method, every Table 1 cell of CIFAR-10 ResNet-20 gets a
    verdict against Baseline(DA) (the cpu profile deviates: the ordering rule), none PENDING."""
    params, published = load_params(REPO / "params.yaml"), report.load_published("mmel", REPO / "papers")
    configs = {(c["setting"], c["method"], c["seed"]): c for c in table_configs(params, "mmel", "cpu", "table1")}
    accuracy = {"da": 80.0, "da_long": 82.0, "da_uni": 81.0, "mmel_h": 79.0, "mmel_s": 81.5}   # mmel_h below da
    runs = [{"paper": "mmel", "table": "table1", "setting": "cifar10_resnet20", "method": method, "seed": seed,
             "profile": "cpu", "config_hash": config_hash(configs[("cifar10_resnet20", method, seed)]),
             "git_sha": "a", "config": {}, "wall_s": 1.0,
             "metrics": {"test_acc": acc + seed, "best_dev_acc": 0.0, "best_epoch": 1, "steps_at_best": 3}}
            for method, acc in accuracy.items() for seed in (0, 1)]
    table = report.build_table(published, "table1", params, "mmel", "cpu", runs)
    assert table.like_for_like is False and table.reference == "da" and len(table.runs) == 10
    verdicts = {c.method: c.verdict.text for c in table.cells if c.setting == "cifar10_resnet20"}
    assert verdicts == {"da": "ref", "da_long": "SHAPE", "da_uni": "SHAPE", "mmel_h": "FAIL", "mmel_s": "SHAPE"}
    text = report.render_table_section(table, published, "cpu", None)
    assert "| CIFAR-10 ResNet-20 | Baseline(DA+Long) | 93.27 (1), std not published | 82.50 ± 0.50 (2) |" in text
    assert "`da` is the reference row (ref)" in text
    assert not re.search(r"\bnan\b", text)


def test_dvc_yaml_declares_the_report_outputs_of_every_paper_with_tables():
    """reports/<paper>.md and reports/plots/<paper> (outs) and reports/metrics/<paper>.json (metrics) of
    every registered paper with a paper_tables.yaml (test_dvc_metrics checks the toy paper's files)."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stage = dvc["stages"]["report"]

    def names(entries):
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries]

    outs, metrics = names(stage["outs"]), names(stage["metrics"])
    assert all(not next(iter(e.values())).get("cache", True) for e in [*stage["outs"], *stage["metrics"]])
    papers = [p for p in PAPER_MODULES if report.load_published(p, REPO / "papers") is not None]
    assert "mmel" in papers
    for paper in papers:
        assert f"reports/{paper}.md" in outs and f"reports/plots/{paper}" in outs, paper
        assert f"reports/metrics/{paper}.json" in metrics, paper
