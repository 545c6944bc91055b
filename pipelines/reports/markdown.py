"""Markdown of a paper report: table sections (verdicts, orderings, notes, footnotes), performance,
the MLM section, the run inventory and the README results block. Deterministic: 2-decimal numbers,
yaml order, no timestamps."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from pipelines.papers import PAPER_MODULES, hook
from pipelines.reports.stats import Stats, bootstrap_difference_ci, difference_two_se, welch_p_value
from pipelines.reports.table_report import TableReport

README_BLOCK = re.compile(r"(^<!-- results:start -->[ \t]*\n).*?(^<!-- results:end -->)", re.S | re.M)
COLUMNS = ("setting", "method", "paper mean ± std (n)", "ours mean ± std (n)", "Δ (ours − paper)", "verdict")
# a table with `official_log` cells: the logs beside the paper's numbers, their verdict beside the paper's
COLUMNS_WITH_LOG = ("setting", "method", "paper mean ± std (n)", "official log mean ± std (n)", "ours mean ± std (n)",
                    "Δ (ours − paper)", "verdict", "verdict vs official log")
# Welch p: two-sided Welch t-test of the two groups of runs; CI: percentile bootstrap of the difference
# of means (stats.BOOTSTRAP_RESAMPLES resamples of each group, seed stats.BOOTSTRAP_SEED).
ORDERING_COLUMNS = ("setting", "paper's claim", "in the paper?", "ours (Δ ± 2 SE)", "Welch t-test p",
                    "Δ 95% bootstrap CI", "on our numbers")
RULE_LIKE_FOR_LIKE = (
    "Verdict rule: like-for-like table, so the numbers themselves are compared. OK if |ours − paper| ≤ "
    "2·√(paper_std²/paper_n + ours_std²/ours_n) (two standard errors of the difference of means), else FAIL; "
    "PENDING (n<2) with fewer than 2 of our runs; NOT RUN without results.")
RULE_ORDERING = (   # {reference}: the table's reference row (`reference:` in paper_tables.yaml, default base)
    "Verdict rule: this table deviates from the paper's setup (see the footnotes), so the paper's ordering is "
    "compared, not its numbers. A method is SHAPE if sign(ours − ours {reference}) = "
    "sign(paper − paper {reference}) in the same setting, else FAIL; `{reference}` is the reference row (ref); "
    "PENDING (n<2) when the method or `{reference}` has fewer than 2 of our runs; NOT RUN without results.")
STD_NOT_PUBLISHED = "std not published"
# appended to the rule of a table with published cells that print no std, or that give their own n
RULE_NO_STD_LIKE_FOR_LIKE = (
    "Cells marked \"{marker}\": the paper prints no std, so its mean is taken as exact and the bound is our two "
    "standard errors alone, 2·ours_std/√ours_n.")
RULE_NO_STD_ORDERING = "Cells marked \"{marker}\" (the paper prints no std) take part by their means, as any other."
RULE_CELL_N = "paper_n is a cell's own run count where the paper gives one (shown as its (n)), else the table's."
RULE_OFFICIAL_LOG = (
    "Official log: {description}. Its verdict applies the same rule with the log's mean, std and n in place "
    "of the paper's; the scoreboard counts the paper's verdict.")
RULE_NOT_CONFIGURED = "Verdict rule: the table is not configured in the `{profile}` profile, so nothing is compared."
NOT_TESTABLE = "not testable here"   # an ordering with a method this profile never runs (quoted only)
ORDERINGS_INTRO = "The paper's orderings on our numbers (2 SE = two standard errors of the difference):"


def mean_std(stats: Stats | None) -> str:
    """'mean ± std (n)', with failed runs if any; an em dash without results; 'mean (n), std not
    published' for a published cell without a std."""
    if stats is None:
        return "—"
    no_std = stats.n > 0 and stats.std is None
    text = "—" if stats.n == 0 else f"{stats.mean:.2f}" if no_std else f"{stats.mean:.2f} ± {stats.std:.2f}"
    return (f"{text} ({stats.n})" + (f", {stats.n_failed} failed" if stats.n_failed else "")
            + (f", {stats.n_diverged} diverged" if stats.n_diverged else "")
            + (f", {STD_NOT_PUBLISHED}" if no_std else ""))


def verdict_rule(report: TableReport, profile: str) -> str:
    """The verdict legend of a table: its rule, plus how cells without a published std (and cells
    with their own n) are compared, where the table has any."""
    if report.like_for_like is None:
        return RULE_NOT_CONFIGURED.format(profile=profile)
    if not report.like_for_like:
        rule = RULE_ORDERING.format(reference=report.reference)
        return rule + (" " + RULE_NO_STD_ORDERING.format(marker=STD_NOT_PUBLISHED)
                       if report.has_paper_std_missing else "")
    extra = [RULE_NO_STD_LIKE_FOR_LIKE.format(marker=STD_NOT_PUBLISHED)] if report.has_paper_std_missing else []
    extra += [RULE_CELL_N] if report.has_cell_n else []
    return " ".join([RULE_LIKE_FOR_LIKE, *extra])


def markdown_row(values) -> str:
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"


def markdown_table(header, rows) -> list[str]:
    return [markdown_row(header), markdown_row(["---"] * len(header)), *map(markdown_row, rows)]


def paper_sections(published: dict, report: TableReport) -> list[str]:
    """The paper's own lines for a table (its optional `report_sections` hook), if it has one."""
    paper = published.get("paper")
    sections = hook(paper, "report_sections") if paper in PAPER_MODULES else None
    return sections(report.table, report.runs, published) if sections else []


def render_table_section(report: TableReport, published: dict, profile: str, figure_link: str | None) -> str:
    """Heading, verdict rule, verdict table, notes, orderings, the paper's own sections, numbered
    footnotes and figure link of one table."""
    spec = published["tables"][report.table]
    rule = verdict_rule(report, profile)
    if report.like_for_like is None:  # not configured: one line instead of a table of NOT RUN cells
        return "\n".join([f"## {report.table}: {report.title}", "",
                          f"NOT RUN: not configured in the `{profile}` profile yet "
                          f"({len(report.cells)} published cells; see `paper_tables.yaml`).", ""])
    lines = [f"## {report.table}: {report.title}", "", rule, ""]
    if report.has_logs:
        description = (published.get("official_logs") or {}).get("description", "the paper's own per-run logs")
        lines += [RULE_OFFICIAL_LOG.format(description=description.rstrip(".")), ""]
    lines += [*render_verdict_table(report, spec), ""]
    if report.stale:
        groups: dict[tuple[str, str], list[int]] = {}
        for r in report.stale:
            groups.setdefault((r["setting"], r["method"]), []).append(r["seed"])
        listed = "; ".join(f"{setting} {method} seeds {', '.join(map(str, sorted(seeds)))}"
                           for (setting, method), seeds in sorted(groups.items()))
        lines += [f"Not counted: {len(report.stale)} result(s) made with another config than the current "
                  f"`params.yaml` ({listed}). `repro run --paper {published['paper']} --table "
                  f"{report.table} --replace-changed` re-runs them and keeps the old files as "
                  "`seed<k>.superseded-<hash>.json`.", ""]
    if report.stale_check:
        lines += [f"Results {report.stale_check}.", ""]
    lines += render_diverged(report)
    notes = spec.get("implementation_notes", [])
    if notes:
        lines += ["Notes on the published numbers:", "", *[f"- {note}" for note in notes], ""]
    lines += render_orderings(report, spec)
    lines += render_stated_in_text(report, spec)
    lines += paper_sections(published, report)
    if report.footnotes:
        lines += ["Footnotes (differences from the `paper` profile):", ""]
        lines += [f"{i}. {note}" for i, note in enumerate(report.footnotes, start=1)] + [""]
    if figure_link:
        lines += [f"![{report.table}: paper vs ours]({figure_link})", ""]
    else:
        lines += ["_No figure: no results for this table yet._", ""]
    return "\n".join(lines)


def render_verdict_table(report: TableReport, spec: dict) -> list[str]:
    """One row per cell: published numbers, ours, Δ and verdict; the official-log columns when the
    table has any."""
    rows = []
    for c in report.cells:
        delta = f"{c.ours.mean - c.paper.mean:+.2f}" if c.ours and c.ours.n else "—"
        ours = mean_std(c.ours)
        if report.has_logs:
            log_verdict = "—" if c.log_verdict is None else c.log_verdict.text
            values = [mean_std(c.paper), mean_std(c.log), ours, delta, c.verdict.text, log_verdict]
        else:
            values = [mean_std(c.paper), ours, delta, c.verdict.text]
        rows.append([spec["settings"][c.setting]["label"], spec["methods"][c.method]["label"], *values])
    return markdown_table(COLUMNS_WITH_LOG if report.has_logs else COLUMNS, rows)


def render_diverged(report: TableReport) -> list[str]:
    """Which counted runs diverged (epoch, max phi if recorded) and how they are counted."""
    if not any(c.ours and c.ours.n_diverged for c in report.cells):
        return []
    diverged = [r for r in sorted(report.runs, key=lambda r: (r["setting"], r["method"], r["seed"]))
                if r.get("diverged")]
    epochs = ", ".join(f"{r['setting']} {r['method']} seed {r['seed']} at {r['diverged']['epoch']}"
                       + (f" (max phi {r['metrics']['phi_max']:.3g})" if r["metrics"].get("phi_max") is not None
                          else "") for r in diverged)
    return ["Diverged runs: training stopped when a loss or meta-gradient became NaN/inf; such a run "
            "counts with the test accuracy of its best dev epoch before the divergence (what the "
            "official loop reports, since a NaN model never beats its best dev accuracy again). "
            f"Epochs: {epochs}.", ""]


def ordering_check(a: Stats | None, b: Stats | None) -> tuple[str, str]:
    """Does `a > b` hold on our numbers, and beyond two standard errors of the difference?
    (numbers, verdict); PENDING while either side has fewer than 2 runs."""
    if not a or not b or a.n < 2 or b.n < 2:
        return "—", "PENDING"
    diff, two_se = difference_two_se(a, b)
    if diff > 0:
        verdict = "holds" + ("" if diff > two_se else " (within 2 SE)")
    else:
        verdict = "does NOT hold" + ("" if -diff > two_se else " (within 2 SE)")
    return f"{a.mean:.2f} vs {b.mean:.2f} ({diff:+.2f} ± {two_se:.2f})", verdict


def significance_columns(a: Stats | None, b: Stats | None) -> tuple[str, str]:
    """Welch p-value and bootstrap 95% CI of mean(a) − mean(b); '—' where a group has fewer than 2 runs."""
    a_values, b_values = (a.values if a else ()), (b.values if b else ())
    p = welch_p_value(a_values, b_values)
    ci = bootstrap_difference_ci(a_values, b_values)
    p_text = "—" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"
    return p_text, "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def ordering_rows(report: TableReport, spec: dict) -> list[list[str]]:
    """The paper's claims `higher > lower` per setting: does it hold on our numbers, and beyond noise?
    (columns of ORDERING_COLUMNS; the verdict last)."""
    ours = {(c.setting, c.method): c.ours for c in report.cells}
    planned = {(c.setting, c.method): c.planned for c in report.cells}
    rows = []
    for higher, lower in spec.get("orderings", []):
        for setting in spec["settings"]:
            if (setting, higher) not in ours or (setting, lower) not in ours:
                continue                     # a variant this profile does not plan (no row)
            a, b = ours[(setting, higher)], ours[(setting, lower)]
            paper_holds = spec["results"][setting][higher]["mean"] > spec["results"][setting][lower]["mean"]
            if a is None and b is None:
                continue                     # setting not run in this profile
            unplanned = [m for m in (higher, lower) if not planned[(setting, m)]]
            if unplanned:                    # a quoted-only method: never PENDING, it will not be run here
                numbers, verdict = "—", f"{NOT_TESTABLE} (`{unplanned[0]}` is not run in this profile)"
            else:
                numbers, verdict = ordering_check(a, b)
            rows.append([spec["settings"][setting]["label"], f"{higher} > {lower}", "yes" if paper_holds else "no",
                         numbers, *significance_columns(a, b), verdict])
    return rows


def render_orderings(report: TableReport, spec: dict) -> list[str]:
    rows = ordering_rows(report, spec)
    if not rows or not any(r[-1] != "PENDING" and not r[-1].startswith(NOT_TESTABLE) for r in rows):
        return []
    return [ORDERINGS_INTRO, "", *markdown_table(ORDERING_COLUMNS, rows), ""]


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
            rows.append([label, entry["label"], entry["value"], mean_std(ours)])
            for higher, lower in entry["orderings"]:
                a = report.ours_stats.get((report.table, setting, higher))
                b = report.ours_stats.get((report.table, setting, lower))
                claims.append([label, f"{higher} > {lower}", *ordering_check(a, b)])
    if not rows:
        return []
    sources = "; ".join(f"{entry['label']}: {entry['source']}" for entry in stated.values())
    return ["Stated in the paper's text only (no table cell or std, so no verdict cell and not in the scoreboard; "
            f"{sources}):", "", *markdown_table(["setting", "method", "paper (text)", "ours mean ± std (n)"], rows),
            "", *markdown_table(["setting", "paper's claim (text)", "ours (Δ ± 2 SE)", "on our numbers"], claims), ""]


def mlm_identity_lines(mlm: dict, used: dict[str | None, int]) -> list[str]:
    """Which MLM the text results used: weights sha256 of the committed MLM report vs the hashes the
    results record (`used`: hash -> number of results; None: a result from before hashes were recorded)."""
    committed = mlm.get("weights_sha256")
    threads = f", trained with {mlm['threads']} threads" if mlm.get("threads") else ""
    lines = [f"MLM weights sha256: `{committed or 'not recorded (built before MLM identities were kept)'}`{threads}."]
    for sha, n in sorted(used.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        what = ("this MLM" if sha is not None and sha == committed else
                "an MLM whose hash was not recorded (results from before identities were kept)" if sha is None else
                f"another MLM, `{sha[:12]}`")
        lines.append(f"- {n} counted text result(s) used {what}.")
    if not used:
        lines.append("- No counted text result used an MLM yet.")
    return [*lines, ""]


def render_mlm(path: Path, used: dict[str | None, int] | None = None) -> str:
    """The MLM the text augmenter starts from (reports/mlm/<profile>.json): identity, dev loss, fills."""
    mlm = json.loads(path.read_text())
    lines = ["## The MLM the text augmenter starts from", "", *mlm_identity_lines(mlm, used or {}),
             f"Backbone {mlm.get('backbone')}: masked-LM fine-tuning of the whole model for {mlm.get('steps')} steps "
             f"(batch {mlm.get('batch_size')}, lr {mlm.get('lr')}) on {mlm.get('n_train_texts')} train-pool texts "
             f"({', '.join(mlm.get('datasets', []))}; no dev or test example). Dev MLM loss "
             f"{mlm.get('dev_loss_before', float('nan')):.3f} before, {mlm.get('dev_loss_best', float('nan')):.3f} "
             f"best (step {mlm.get('step_best')}) on {mlm.get('n_dev_texts')} held-out train-pool texts.", "",
             *markdown_table(["probe ([MASK] filled)", "top-5 fills"],
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
        lines += [*markdown_table(columns, [[row.get(c, "") for c in columns] for row in rows]), ""]
    if bench.get("verdicts"):
        lines += ["Verdicts against the targets:", "", *[f"- {v}" for v in bench["verdicts"]], ""]
    extras = {k: v for k, v in bench.items() if k not in ("rows", "notes", "setup", "paper", "profile", "verdicts")}
    lines += [f"- {key}: {json.dumps(value)}" for key, value in extras.items()]
    lines += [f"- {note}" for note in bench.get("notes", [])]
    return "\n".join(lines) + "\n"


def render_inventory(reports: list[TableReport]) -> str:
    """Per table: number of committed runs, their total wall-clock hours and the git shas they came from;
    runs a table scores from another table's (`runs_from`, `methods_from`) are counted there, shown as (+n of t)."""
    rows = []
    for report in reports:
        own = [run for run in report.runs if not run.get("borrowed_from")]
        shared = Counter(run["borrowed_from"] for run in report.runs if run.get("borrowed_from"))
        count = f"{len(own)}" + "".join(f" (+{n} of {source})" for source, n in sorted(shared.items()))
        hours = sum(float(run["wall_s"]) for run in own) / 3600
        shas = ", ".join(f"`{sha}`" for sha in sorted({run["git_sha"] for run in own})) or "—"
        rows.append([report.table, count, f"{hours:.2f}", shas])
    header = ["table", "runs", "wall-clock hours", "git shas"]
    return "\n".join(["## Run inventory", "", *markdown_table(header, rows)]) + "\n"


def render_paper_report(published: dict, profile: str, table_sections: str, reports: list[TableReport],
                        benchmarks: list[Path], mlm_path: Path | None = None,
                        mlm_used: dict[str | None, int] | None = None) -> str:
    """Title, provenance line, table sections, optional Performance and MLM sections, the run inventory."""
    intro = (f"# Replication of {published['citation']}\n\nNumbers produced by the `{profile}` profile "
             f"(`repro report --profile {profile}`) from committed results. Test accuracy in percent, mean ± "
             "population std (ddof=0, as the paper's official code) over seeds; n counts runs with a finite test "
             "accuracy, runs with NaN are listed as failed.\n")
    performance = [render_performance(path) for path in benchmarks if path.exists()]
    if mlm_path is not None and mlm_path.exists():
        performance.append(render_mlm(mlm_path, mlm_used))
    return "\n".join([intro, table_sections, *performance, render_inventory(reports)])


def update_readme(readme: Path, generated: str) -> bool:
    """Replace the text between the results markers; False (file untouched) without markers."""
    if not readme.exists():
        return False
    text = readme.read_text()
    if not README_BLOCK.search(text):
        return False
    readme.write_text(README_BLOCK.sub(lambda m: f"{m.group(1)}\n{generated}\n{m.group(2)}", text, count=1))
    return True
