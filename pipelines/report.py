"""`repro report`: published numbers vs committed results, as markdown, figures and a scoreboard.

Per paper with a `paper_tables.yaml`: reports/<paper>.md (one verdict table per published table),
reports/figures/<paper>_<table>.png, the results section of papers/<paper>/README.md (between
`<!-- results:start -->` and `<!-- results:end -->`), and reports/index.md across all papers.
Verdicts: like-for-like tables compare means within two standard errors; tables whose profile
deviates from the `paper` profile compare only the paper's ordering against the `base` row.
Output is deterministic: yaml order, 2-decimal numbers, no timestamps.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.figure import Figure
from matplotlib.patches import Patch

import papers
from common.errors import ConfigError
from common.run.results import collect_results
from common.run.tracking import Tracker
from pipelines.grid import current_hashes
from pipelines.papers import PAPER_MODULES

PAPERS_DIR = Path(papers.__file__).parent
REPORTS_DIR = Path("reports")
ALL_PAPERS = ("hu19", "mmel", "metaaugment", "influence")
UNCOMPARED_CONFIG_KEYS = ("seeds", "not_run")
PAPER_COLOUR, OURS_COLOUR = "#9aa5b1", "#1f77b4"
COUNTED_VERDICTS = ("OK", "SHAPE", "FAIL", "PENDING", "NOT RUN")
README_BLOCK = re.compile(r"(^<!-- results:start -->[ \t]*\n).*?(^<!-- results:end -->)", re.S | re.M)
COLUMNS = ("setting", "method", "paper mean ± std (n)", "ours mean ± std (n)", "Δ (ours − paper)", "verdict")
RULE_LIKE_FOR_LIKE = (
    "Verdict rule: like-for-like table, so the numbers themselves are compared. OK if |ours − paper| ≤ "
    "2·√(paper_std²/paper_n + ours_std²/ours_n) (two standard errors of the difference of means), else FAIL; "
    "PENDING (n<2) with fewer than 2 of our runs; NOT RUN without results.")
RULE_ORDERING = (
    "Verdict rule: this table deviates from the paper's setup (see the footnotes), so the paper's ordering is "
    "compared, not its numbers. A method is SHAPE if sign(ours − ours base) = sign(paper − paper base) in the "
    "same setting, else FAIL; `base` is the reference row (ref); PENDING (n<2) when the method or `base` has "
    "fewer than 2 of our runs; NOT RUN without results.")
RULE_NOT_CONFIGURED = "Verdict rule: the table is not configured in the `{profile}` profile, so nothing is compared."


@dataclass(frozen=True)
class Stats:
    """Test accuracy over seeds: mean and population std of the `n` finite values."""
    n: int
    mean: float
    std: float
    n_failed: int = 0
    n_diverged: int = 0    # counted in n: training stopped on NaN/inf, test acc from the best dev epoch before


@dataclass(frozen=True)
class Verdict:
    kind: str          # OK | FAIL | SHAPE | ref | PENDING | NOT RUN; the first five are counted
    detail: str = ""   # printed after the kind: " (n<2)", ": <why not run>"

    @property
    def text(self) -> str:
        return self.kind + self.detail


@dataclass(frozen=True)
class Cell:
    setting: str
    method: str
    paper: Stats
    ours: Stats | None
    verdict: Verdict
    variant: bool = False          # our variant of a published method (not a published cell)


@dataclass
class TableReport:
    table: str
    title: str
    like_for_like: bool | None     # None: the table is not configured in the profile
    footnotes: list[str]
    cells: list[Cell]
    runs: list[dict]
    stale: list[dict] = dataclasses.field(default_factory=list)   # results of an older config: not counted
    stale_check: str = ""          # why results could not be checked against the current config, if so
    ours_stats: dict = dataclasses.field(default_factory=dict)   # (table, setting, method) -> Stats, every method


def load_published(paper: str) -> dict | None:
    """papers/<paper>/paper_tables.yaml, or None if the paper has none; each table's `our_variants`
    expanded (see `with_variants`)."""
    path = PAPERS_DIR / paper / "paper_tables.yaml"
    if not path.exists():
        return None
    published = yaml.safe_load(path.read_text())
    published["tables"] = {name: with_variants(spec) for name, spec in published.get("tables", {}).items()}
    for name, spec in published["tables"].items():
        validate_stated_in_text(name, spec)
    return published


def with_variants(spec: dict) -> dict:
    """A table spec with a row per `our_variants` entry ({method: {of, label}}): our variant of the
    paper's method `of`, compared with the published numbers of `of` and inheriting its orderings
    (`of > ren` gives `variant > ren`). The published results themselves are not touched."""
    variants = spec.get("our_variants") or {}
    if not variants:
        return spec
    spec = {**spec, "methods": dict(spec["methods"]), "results": {s: dict(r) for s, r in spec["results"].items()},
            "orderings": list(spec.get("orderings", []))}
    for method, variant in variants.items():
        of = variant["of"]
        if of not in spec["methods"]:
            raise ConfigError(f"paper_tables.yaml: our_variants.{method}.of: {of!r} is not a method of the table; "
                              f"expected one of {list(spec['methods'])}")
        spec["methods"][method] = {"label": variant["label"]}
        for by_method in spec["results"].values():
            if of in by_method:
                by_method[method] = by_method[of]
        spec["orderings"] += [[method if m == of else m for m in pair] for pair in spec["orderings"] if of in pair]
    return spec


def seed_stats(values: list[float | None]) -> Stats:
    """Mean and population std (ddof=0, as the paper) of the finite values; NaNs count as failed."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return Stats(0, math.nan, math.nan, len(values))
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite))
    return Stats(len(finite), mean, std, len(values) - len(finite))


def aggregate(results: list[dict]) -> dict[tuple[str, str, str], Stats]:
    """Stats of test_acc per (table, setting, method)."""
    values: dict[tuple[str, str, str], list[float]] = {}
    diverged: dict[tuple[str, str, str], int] = {}
    for r in results:
        key = (r["table"], r["setting"], r["method"])
        values.setdefault(key, []).append(r["metrics"]["test_acc"])
        diverged[key] = diverged.get(key, 0) + bool(r.get("diverged"))
    return {key: dataclasses.replace(seed_stats(v), n_diverged=diverged[key]) for key, v in values.items()}


def _yaml_value(value) -> str:
    return "unset" if value is None else value if isinstance(value, str) else json.dumps(value)


def config_differences(ours: dict, reference: dict, prefix: str = "") -> list[str]:
    """'key: <ours> here, <reference> in the paper profile' for every differing key, recursing into dicts."""
    notes = []
    for key in sorted(set(ours) | set(reference)):
        mine, theirs = ours.get(key), reference.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            notes += config_differences(mine, theirs, f"{prefix}{key}.")
        elif mine != theirs:
            notes.append(f"{prefix}{key}: {_yaml_value(mine)} here, {_yaml_value(theirs)} in the paper profile")
    return notes


def table_deviations(ours: dict, reference: dict | None) -> list[str]:
    """Config differences from the paper profile (settings compared only where this profile has them)."""
    if reference is None:
        return ["no `paper` profile config for this table to compare with"]
    skip = set(UNCOMPARED_CONFIG_KEYS) | {"settings"}
    notes = config_differences({k: v for k, v in ours.items() if k not in skip},
                               {k: v for k, v in reference.items() if k not in skip})
    for setting, override in ours.get("settings", {}).items():
        if setting not in reference.get("settings", {}):
            notes.append(f"settings.{setting}: configured here, absent in the paper profile")
        else:
            notes += config_differences(override, reference["settings"][setting], f"settings.{setting}.")
    return notes


def like_for_like_verdict(paper: Stats, ours: Stats) -> Verdict:
    """OK within two standard errors of the difference of means, else FAIL."""
    if ours.n < 2:
        return Verdict("PENDING", " (n<2)")
    bound = 2 * math.sqrt(paper.std ** 2 / paper.n + ours.std ** 2 / ours.n)
    return Verdict("OK" if abs(ours.mean - paper.mean) <= bound else "FAIL")


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def ordering_verdict(method: str, paper: Stats, ours: Stats, paper_base: Stats | None,
                     ours_base: Stats | None) -> Verdict:
    """SHAPE if the method sits on the same side of `base` as in the paper, else FAIL."""
    if method == "base":
        return Verdict("ref")
    if ours.n < 2 or paper_base is None or ours_base is None or ours_base.n < 2:
        return Verdict("PENDING", " (n<2)")
    same = _sign(ours.mean - ours_base.mean) == _sign(paper.mean - paper_base.mean)
    return Verdict("SHAPE" if same else "FAIL")


def not_run_reason(config: dict | None, setting: str, method: str, profile: str) -> str:
    """Why a cell has no results: the profile's `not_run` note, else what the profile leaves out."""
    if config is None:
        return f"table not in the `{profile}` profile"
    if setting in config.get("not_run", {}):
        return config["not_run"][setting]
    if setting not in config.get("settings", {}) or method not in config.get("methods", [method]):
        return f"not in the `{profile}` profile"
    seeds = config.get("seeds")
    return f"none of its {seeds} planned runs finished yet" if seeds else "not run yet"


def build_table(published: dict, table: str, params: dict, paper: str, profile: str,
                results: list[dict]) -> TableReport:
    """Cells with verdicts and deviation footnotes of one published table."""
    spec = published["tables"][table]
    paper_n = spec.get("n", published["n"])
    profiles = params.get(paper, {}).get("profiles", {})
    config = profiles.get(profile, {}).get(table)
    footnotes, like_for_like = [], None
    if config is not None:
        deviations = [] if profile == "paper" else table_deviations(config, profiles.get("paper", {}).get(table))
        like_for_like = not deviations
        footnotes = deviations + ([f"n = {config['seeds']} seeds here vs {paper_n} in the paper"]
                                  if config.get("seeds", paper_n) < paper_n else [])
    runs, stale, stale_check = current_runs(table, config, params, paper, profile,
                                            [r for r in results if r["table"] == table])
    ours_stats = aggregate(runs)
    cells = []
    for setting, by_method in spec["results"].items():
        base = by_method.get("base")
        paper_base = Stats(paper_n, base["mean"], base["std"]) if base else None
        for method, published_cell in by_method.items():
            theirs = Stats(paper_n, published_cell["mean"], published_cell["std"])
            ours = ours_stats.get((table, setting, method))
            variant = method in spec.get("our_variants", {})
            if variant and ours is None and config is not None and method not in config.get("methods", []):
                continue  # our variant, not planned in this profile: no row
            if ours is None:
                verdict = Verdict("NOT RUN", ": " + not_run_reason(config, setting, method, profile))
            elif like_for_like:
                verdict = like_for_like_verdict(theirs, ours)
            else:
                verdict = ordering_verdict(method, theirs, ours, paper_base, ours_stats.get((table, setting, "base")))
            cells.append(Cell(setting, method, theirs, ours, verdict, variant))
    return TableReport(table, spec["title"], like_for_like, footnotes, cells, runs, stale, stale_check, ours_stats)


def current_runs(table: str, config: dict | None, params: dict, paper: str, profile: str,
                 runs: list[dict]) -> tuple[list[dict], list[dict], str]:
    """Split a table's results into those of the current params and stale ones (another config hash,
    e.g. params edited after the run); the third item says why no check was possible, if so.
    `config`: the table's block in the profile (None: not configured, nothing to check against)."""
    if config is None:
        return runs, [], ""
    try:
        expected = current_hashes(params, paper, profile, table, runs)
    except ConfigError as exc:
        return runs, [], f"not checked against the current params ({exc})"
    is_current = [expected.get((r["setting"], r["method"], r["seed"])) == r["config_hash"] for r in runs]
    return ([r for r, ok in zip(runs, is_current) if ok], [r for r, ok in zip(runs, is_current) if not ok], "")


def _mean_std(stats: Stats | None) -> str:
    """'mean ± std (n)', with failed runs if any; an em dash without results."""
    if stats is None:
        return "—"
    text = "—" if stats.n == 0 else f"{stats.mean:.2f} ± {stats.std:.2f}"
    return (f"{text} ({stats.n})" + (f", {stats.n_failed} failed" if stats.n_failed else "")
            + (f", {stats.n_diverged} diverged" if stats.n_diverged else ""))


def _markdown_row(values) -> str:
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"


def _markdown_table(header, rows) -> list[str]:
    return [_markdown_row(header), _markdown_row(["---"] * len(header)), *map(_markdown_row, rows)]


def render_table_section(report: TableReport, published: dict, profile: str, figure_link: str | None) -> str:
    """Heading, verdict rule, verdict table, numbered footnotes and figure link of one table."""
    spec = published["tables"][report.table]
    rule = {True: RULE_LIKE_FOR_LIKE, False: RULE_ORDERING}.get(report.like_for_like,
                                                                RULE_NOT_CONFIGURED.format(profile=profile))
    if report.like_for_like is None:  # not configured: one line instead of a table of NOT RUN cells
        return "\n".join([f"## {report.table}: {report.title}", "",
                          f"NOT RUN: not configured in the `{profile}` profile yet "
                          f"({len(report.cells)} published cells; see `paper_tables.yaml`).", ""])
    rows = [[spec["settings"][c.setting]["label"], spec["methods"][c.method]["label"], _mean_std(c.paper),
             _mean_std(c.ours), f"{c.ours.mean - c.paper.mean:+.2f}" if c.ours and c.ours.n else "—", c.verdict.text]
            for c in report.cells]
    lines = [f"## {report.table}: {report.title}", "", rule, "", *_markdown_table(COLUMNS, rows), ""]
    if report.stale:
        groups: dict[tuple[str, str], list[int]] = {}
        for r in report.stale:
            groups.setdefault((r["setting"], r["method"]), []).append(r["seed"])
        listed = "; ".join(f"{setting} {method} seeds {', '.join(map(str, sorted(seeds)))}"
                           for (setting, method), seeds in sorted(groups.items()))
        lines += [f"Not counted: {len(report.stale)} result(s) made with another config than the current "
                  f"`params.yaml` ({listed}). `repro run --paper {published.get('paper', 'hu19')} --table "
                  f"{report.table} --replace-changed` re-runs them and keeps the old files as "
                  "`seed<k>.superseded-<hash>.json`.", ""]
    if report.stale_check:
        lines += [f"Results {report.stale_check}.", ""]
    if any(c.ours and c.ours.n_diverged for c in report.cells):
        lines += ["Diverged runs: training stopped when a loss or meta-gradient became NaN/inf; such a run "
                  "counts with the test accuracy of its best dev epoch before the divergence (what the "
                  "official loop reports, since a NaN model never beats its best dev accuracy again). "
                  "Epochs: " + ", ".join(f"{r['setting']} {r['method']} seed {r['seed']} at {r['diverged']['epoch']}"
                                         + (f" (max phi {r['metrics']['phi_max']:.3g})"
                                            if r["metrics"].get("phi_max") is not None else "")
                                         for r in sorted(report.runs, key=lambda r: (r["setting"], r["method"],
                                                                                     r["seed"]))
                                         if r.get("diverged")) + ".", ""]
        if any(r.get("diverged") and r["method"] == "ours_weight" for r in report.runs):
            lines += ["Why `ours_weight` diverges: as in the official code, the lookahead uses the raw persistent "
                      "weights, theta' = theta + sum_i phi_i Delta_i, not the normalised ones of Eq. 12; an "
                      "example whose phi_i grows moves theta' further, which enlarges its next meta-gradient "
                      "(phi_i <- phi_i / w_decay - grad_i), until phi overflows (max phi above).", ""]
    notes = spec.get("implementation_notes", [])
    if notes:
        lines += ["Notes on the published numbers:", "", *[f"- {note}" for note in notes], ""]
    lines += render_orderings(report, spec)
    lines += render_stated_in_text(report, spec)
    if report.table == "table1":
        lines += render_figure2(published, [r for r in report.runs if r["method"] == "ours_aug"])
    if report.footnotes:
        lines += ["Footnotes (differences from the `paper` profile):", ""]
        lines += [f"{i}. {note}" for i, note in enumerate(report.footnotes, start=1)] + [""]
    if figure_link:
        lines += [f"![{report.table}: paper vs ours]({figure_link})", ""]
    else:
        lines += ["_No figure: no results for this table yet._", ""]
    return "\n".join(lines)


def ordering_check(a: Stats | None, b: Stats | None) -> tuple[str, str]:
    """Does `a > b` hold on our numbers, and beyond two standard errors of the difference?
    (numbers, verdict); PENDING while either side has fewer than 2 runs."""
    if not a or not b or a.n < 2 or b.n < 2:
        return "—", "PENDING"
    diff = a.mean - b.mean
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    if diff > 0:
        verdict = "holds" + ("" if diff > 2 * se else " (within 2 SE)")
    else:
        verdict = "does NOT hold" + ("" if -diff > 2 * se else " (within 2 SE)")
    return f"{a.mean:.2f} vs {b.mean:.2f} ({diff:+.2f} ± {2 * se:.2f})", verdict


def ordering_rows(report: TableReport, spec: dict) -> list[list[str]]:
    """The paper's claims `higher > lower` per setting: does it hold on our numbers, and beyond noise?"""
    ours = {(c.setting, c.method): c.ours for c in report.cells}
    rows = []
    for higher, lower in spec.get("orderings", []):
        for setting in spec["settings"]:
            if (setting, higher) not in ours or (setting, lower) not in ours:
                continue                     # a variant this profile does not plan (no row)
            a, b = ours[(setting, higher)], ours[(setting, lower)]
            paper_holds = spec["results"][setting][higher]["mean"] > spec["results"][setting][lower]["mean"]
            if a is None and b is None:
                continue                     # setting not run in this profile
            rows.append([spec["settings"][setting]["label"], f"{higher} > {lower}", "yes" if paper_holds else "no",
                         *ordering_check(a, b)])
    return rows


def validate_stated_in_text(table: str, spec: dict) -> None:
    """`stated_in_text` ({method: {label, value, source, orderings}}): results the paper gives only in
    its text (no table cell, no std). Each ordering pair must name the stated method."""
    for method, entry in (spec.get("stated_in_text") or {}).items():
        where = f"paper_tables.yaml: tables.{table}.stated_in_text.{method}"
        missing = [k for k in ("label", "value", "source", "orderings") if k not in (entry or {})]
        if missing:
            raise ConfigError(f"{where}: missing {missing}; expected label, value, source and orderings")
        for pair in entry["orderings"]:
            if not (isinstance(pair, list) and len(pair) == 2 and method in pair):
                raise ConfigError(f"{where}.orderings: {pair!r}; expected [higher, lower] pairs naming {method!r}")


def render_stated_in_text(report: TableReport, spec: dict) -> list[str]:
    """Our numbers for methods the paper reports only in its text, and its claims about them. Not
    verdict cells (there is no published mean ± std), so never in the scoreboard."""
    stated = spec.get("stated_in_text") or {}
    rows, claims = [], []
    for method, entry in stated.items():
        for setting in spec["settings"]:
            ours = report.ours_stats.get((report.table, setting, method))
            if ours is None:
                continue
            label = spec["settings"][setting]["label"]
            rows.append([label, entry["label"], entry["value"], _mean_std(ours)])
            for higher, lower in entry["orderings"]:
                a = report.ours_stats.get((report.table, setting, higher))
                b = report.ours_stats.get((report.table, setting, lower))
                claims.append([label, f"{higher} > {lower}", *ordering_check(a, b)])
    if not rows:
        return []
    sources = "; ".join(f"{entry['label']}: {entry['source']}" for entry in stated.values())
    return ["Stated in the paper's text only (no table cell or std, so no verdict cell and not in the scoreboard; "
            f"{sources}):", "", *_markdown_table(["setting", "method", "paper (text)", "ours mean ± std (n)"], rows),
            "", *_markdown_table(["setting", "paper's claim (text)", "ours (Δ ± 2 SE)", "on our numbers"], claims), ""]


def render_orderings(report: TableReport, spec: dict) -> list[str]:
    rows = ordering_rows(report, spec)
    if not rows or not any(r[-1] != "PENDING" for r in rows):
        return []
    header = ["setting", "paper's claim", "in the paper?", "ours (Δ ± 2 SE)", "on our numbers"]
    return ["The paper's orderings on our numbers (2 SE = two standard errors of the difference):", "",
            *_markdown_table(header, rows), ""]


def render_figure2(published: dict, runs: list[dict]) -> list[str]:
    """hu19 Figure 2 analog: the augmenter's top-5 substitutions, paper vs ours (first ours_aug run
    that recorded them, i.e. the lowest SST-5 seed)."""
    paper_fig = published.get("figure2")
    recorded = sorted((r for r in runs if r.get("figure2")), key=lambda r: r["seed"])
    if not paper_fig or not recorded:
        return []
    run = recorded[0]
    ours = run["figure2"]
    epochs = sorted((k for k in ours if k.startswith("epoch_")), key=lambda k: int(k.split("_")[1]))
    masked = " and ".join(f'"{w}"' for w in paper_fig["fills"])
    rows = []
    for word, by_epoch in paper_fig["fills"].items():
        for epoch in epochs:
            paper_words = ", ".join(by_epoch.get(epoch, [])) or "—"
            rows.append([word, epoch.replace("epoch_", ""), paper_words, ", ".join(ours[epoch].get(word, []))])
    return [f"### Figure 2 analog: what the augmenter substitutes ({run['method']}, {run['setting']}, seed "
            f"{run['seed']})", "",
            f"Sentence: \"{ours['sentence']}\" (label {paper_fig['label']}), {masked} masked; top-5 fills, "
            "most probable first. Epoch 0 is the CBERT fitted on the train set before joint "
            "training (what `fixed_aug` uses throughout).", "",
            *_markdown_table(["masked word", "epoch", "paper", "ours"], rows), ""]


def render_mlm(path: Path) -> str:
    """The MLM the text augmenter starts from (reports/mlm/<paper>_<profile>.json): dev loss, fills."""
    mlm = json.loads(path.read_text())
    lines = ["## The MLM the text augmenter starts from", "",
             f"Backbone {mlm.get('backbone')}: masked-LM fine-tuning of the whole model for {mlm.get('steps')} steps "
             f"(batch {mlm.get('batch_size')}, lr {mlm.get('lr')}) on {mlm.get('n_train_texts')} train-pool texts "
             f"({', '.join(mlm.get('datasets', []))}; no dev or test example). Dev MLM loss "
             f"{mlm.get('dev_loss_before', float('nan')):.3f} before, {mlm.get('dev_loss_best', float('nan')):.3f} "
             f"best (step {mlm.get('step_best')}) on {mlm.get('n_dev_texts')} held-out train-pool texts.", "",
             *_markdown_table(["probe ([MASK] filled)", "top-5 fills"],
                              [[sentence, ", ".join(fills)] for sentence, fills in mlm.get("fills", {}).items()]), ""]
    return "\n".join(lines)


def render_performance(benchmark_path: Path) -> str:
    """The meta-step benchmark JSON (rows, setup, notes, other scalars) as a markdown section."""
    bench = json.loads(benchmark_path.read_text())
    rows = bench.get("rows", [])
    columns = list(dict.fromkeys(key for row in rows for key in row))
    suite = benchmark_path.stem.split("_", 1)[-1]
    lines = [f"## Performance: {suite}", "", f"Setup: {bench.get('setup', 'not recorded')}", ""]
    if rows:
        lines += [*_markdown_table(columns, [[row.get(c, "") for c in columns] for row in rows]), ""]
    if bench.get("verdicts"):
        lines += ["Verdicts against the targets:", "", *[f"- {v}" for v in bench["verdicts"]], ""]
    extras = {k: v for k, v in bench.items() if k not in ("rows", "notes", "setup", "paper", "profile", "verdicts")}
    lines += [f"- {key}: {json.dumps(value)}" for key, value in extras.items()]
    lines += [f"- {note}" for note in bench.get("notes", [])]
    return "\n".join(lines) + "\n"


def render_inventory(reports: list[TableReport]) -> str:
    """Per table: number of committed runs, their total wall-clock hours and the git shas they came from."""
    rows = []
    for report in reports:
        hours = sum(float(run["wall_s"]) for run in report.runs) / 3600
        shas = ", ".join(f"`{sha}`" for sha in sorted({run["git_sha"] for run in report.runs})) or "—"
        rows.append([report.table, len(report.runs), f"{hours:.2f}", shas])
    header = ["table", "runs", "wall-clock hours", "git shas"]
    return "\n".join(["## Run inventory", "", *_markdown_table(header, rows)]) + "\n"


def draw_figure(report: TableReport, published: dict, paper: str, profile: str, path: Path) -> bool:
    """Grouped bars (paper vs ours, ± std) per setting; False (and no file) if the table has no results."""
    if not any(cell.ours and cell.ours.n for cell in report.cells):
        path.unlink(missing_ok=True)
        return False
    spec = published["tables"][report.table]
    settings = list(spec["results"])
    fig = Figure(figsize=(max(6.0, 4.0 * len(settings)), 4.8), dpi=100)
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    for ax, setting in zip(axes, settings):
        cells = [c for c in report.cells if c.setting == setting]
        xs = range(len(cells))
        ax.bar([x - 0.2 for x in xs], [c.paper.mean for c in cells], 0.4, yerr=[c.paper.std for c in cells],
               capsize=3, color=PAPER_COLOUR)
        ours = [(x, c.ours) for x, c in zip(xs, cells) if c.ours and c.ours.n]
        ax.bar([x + 0.2 for x, _ in ours], [s.mean for _, s in ours], 0.4, yerr=[s.std for _, s in ours],
               capsize=3, color=OURS_COLOUR)
        ax.set_xticks(list(xs), [spec["methods"][c.method]["label"] for c in cells], rotation=30, ha="right",
                      fontsize=8)
        ax.set_title(spec["settings"][setting]["label"], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.legend(handles=[Patch(color=PAPER_COLOUR, label="paper"), Patch(color=OURS_COLOUR, label=f"ours ({profile})")],
               loc="upper center", bbox_to_anchor=(0.5, 0.94), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{paper} {report.table}: {report.title}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.91))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return True


def verdict_counts(report: TableReport) -> dict[str, int]:
    """Number of published cells per counted verdict kind (`ref` rows and our variants are not counted)."""
    return {kind: sum(cell.verdict.kind == kind and not cell.variant for cell in report.cells)
            for kind in COUNTED_VERDICTS}


def render_index(scoreboard: dict[str, list[TableReport] | None], profile: str) -> str:
    """One row per (paper, table) with verdict counts; papers without tables are 'not started'."""
    rows = []
    for paper in list(ALL_PAPERS) + sorted(set(scoreboard) - set(ALL_PAPERS)):
        if scoreboard.get(paper) is None:
            rows.append([paper, "—", profile, "not started", *[""] * len(COUNTED_VERDICTS), "—"])
        for r in scoreboard.get(paper) or []:
            like = {True: "yes", False: "no", None: "not configured"}[r.like_for_like]
            rows.append([paper, r.table, profile, like, *verdict_counts(r).values(), f"[{paper}.md]({paper}.md)"])
    header = ["paper", "table", "profile", "like-for-like?", *COUNTED_VERDICTS, "report"]
    return "\n".join(["# Replication scoreboard", "", f"Cell counts per table for the `{profile}` profile "
                      "(`ref` rows are not counted).", "", *_markdown_table(header, rows)]) + "\n"


def update_readme(readme: Path, generated: str) -> bool:
    """Replace the text between the results markers; False (file untouched) without markers."""
    if not readme.exists():
        return False
    text = readme.read_text()
    if not README_BLOCK.search(text):
        return False
    readme.write_text(README_BLOCK.sub(lambda m: f"{m.group(1)}\n{generated}\n{m.group(2)}", text, count=1))
    return True


def render_paper_report(published: dict, profile: str, table_sections: str, reports: list[TableReport],
                        benchmarks: list[Path]) -> str:
    """Title, provenance line, table sections, optional Performance section and the run inventory."""
    intro = (f"# Replication of {published['citation']}\n\nNumbers produced by the `{profile}` profile "
             f"(`repro report --profile {profile}`) from committed results. Test accuracy in percent, mean ± "
             "population std (ddof=0, as the paper's official code) over seeds; n counts runs with a finite test "
             "accuracy, runs with NaN are listed as failed.\n")
    performance = [render_performance(path) for path in benchmarks if path.exists()]
    mlm = REPORTS_DIR / "mlm" / f"{published.get('paper', 'hu19')}_{profile}.json"
    if mlm.exists():
        performance.append(render_mlm(mlm))
    return "\n".join([intro, table_sections, *performance, render_inventory(reports)])


def write_paper_report(params: dict, profile: str, paper: str,
                       published: dict) -> tuple[list[TableReport], list[Path]]:
    """reports/<paper>.md, its figures and the README results block; returns the tables and written paths."""
    results = collect_results(Path(params["base"]["results_dir"]), profile, paper)
    reports = [build_table(published, table, params, paper, profile, results) for table in published["tables"]]
    figures = [REPORTS_DIR / "figures" / f"{paper}_{r.table}.png" for r in reports]
    drawn = [fig for r, fig in zip(reports, figures) if draw_figure(r, published, paper, profile, fig)]

    def sections(figure_prefix: str) -> str:
        return "\n".join(render_table_section(r, published, profile, figure_prefix + fig.name if fig in drawn else None)
                         for r, fig in zip(reports, figures))

    report_path = REPORTS_DIR / f"{paper}.md"
    benchmarks = sorted((REPORTS_DIR / "benchmarks").glob(f"{paper}_*.json"))
    report_path.write_text(render_paper_report(published, profile, sections("figures/"), reports, benchmarks))
    readme = PAPERS_DIR / paper / "README.md"
    readme_updated = update_readme(readme, sections("../../reports/figures/").rstrip("\n"))
    return reports, [report_path, *drawn, *([readme] if readme_updated else [])]


def log_table_summaries(tracker: Tracker, paper: str, profile: str, reports: list[TableReport]) -> None:
    """One tracking run per table: our mean/std/n and the verdict of every cell, report and figure attached."""
    for report in reports:
        cells = [{"setting": c.setting, "method": c.method, "mean": c.ours.mean if c.ours else None,
                  "std": c.ours.std if c.ours else None, "n": c.ours.n if c.ours else 0, "verdict": c.verdict.text}
                 for c in report.cells]
        artifacts = [REPORTS_DIR / f"{paper}.md", REPORTS_DIR / "figures" / f"{paper}_{report.table}.png"]
        tracker.log_table(paper, report.table, profile, cells, artifacts=artifacts)


def write_reports(params: dict, profile: str, log_tables: bool = True) -> list[Path]:
    """All paper reports, figures, README blocks and reports/index.md; returns the written paths."""
    (REPORTS_DIR / "figures").mkdir(parents=True, exist_ok=True)
    tracker = Tracker(params["base"]["tracking_uri"]) if log_tables else None
    scoreboard: dict[str, list[TableReport] | None] = {}
    written: list[Path] = []
    for paper in PAPER_MODULES:
        published = load_published(paper)
        if published is None:
            continue
        scoreboard[paper], paths = write_paper_report(params, profile, paper, published)
        written += paths
        if tracker is not None:
            log_table_summaries(tracker, paper, profile, scoreboard[paper])
    index = REPORTS_DIR / "index.md"
    index.write_text(render_index(scoreboard, profile))
    return written + [index]
