"""mmel's report hook: training time per method beside the paper's time column (Tables 1 and 3).

The paper's claim about DA+Long is one of cost ("comparable or better performance, while being much
more efficient in training", Sec. 4.1), so the report shows the wall time of our runs per method and
its ratio to Baseline(DA), beside the paper's V100 hours and their ratio (absolute hours do not
compare across hardware; the ratios do).
"""
from __future__ import annotations

import statistics


def _row(values) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def unique_runs(runs: list[dict]) -> list[dict]:
    """One entry per run: a GLUE run scores several cells (dev, test), each a row of `runs`."""
    return list({r.get("config_hash", id(r)): r for r in runs}.values())


def time_rows(spec: dict, runs: list[dict]) -> list[list[str]]:
    """Table 1: per (setting, method) the paper's hours beside the median wall time of our runs."""
    walls: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        walls.setdefault((r["setting"], r["method"]), []).append(float(r["wall_s"]) / 3600)
    rows = []
    for setting, by_method in spec["results"].items():
        if not any((setting, m) in walls for m in by_method):
            continue
        paper_da = by_method.get("da", {}).get("time_h")
        ours_da = statistics.median(walls[(setting, "da")]) if (setting, "da") in walls else None
        for method, cell in by_method.items():
            paper_h = cell.get("time_h")
            ours = walls.get((setting, method))
            ours_h = statistics.median(ours) if ours else None
            rows.append([spec["settings"][setting]["label"], spec["methods"][method]["label"],
                         "—" if paper_h is None else f"{paper_h:.1f}",
                         "—" if paper_h is None or not paper_da else f"{paper_h / paper_da:.1f}x",
                         "—" if ours_h is None else f"{ours_h:.2f} ({len(ours)})",
                         "—" if ours_h is None or not ours_da else f"{ours_h / ours_da:.1f}x"])
    return rows


def glue_time_rows(spec: dict, runs: list[dict]) -> tuple[list[list[str]], list[str]]:
    """Table 3: the paper's hours per method (all GLUE tasks, one V100) beside our wall time per method:
    per task the median over seeds of a run's wall time (a median, so one run slowed by other load on
    the machine does not move it), summed over the tasks every shown method has run (so a seed still
    in progress does not shorten a sum). A run scores several cells (dev and test), so runs are
    counted once (by config hash). Returns the rows and the tasks summed."""
    walls: dict[str, dict[str, list[float]]] = {}
    for r in unique_runs(runs):
        task = r.get("config", {}).get("task") or r["setting"].split("_", 1)[-1]
        walls.setdefault(r["method"], {}).setdefault(task, []).append(float(r["wall_s"]) / 3600)
    shown = [m for m in spec["methods"] if m in walls]
    tasks = sorted(set.intersection(*(set(walls[m]) for m in shown))) if shown else []
    ours = {m: sum(statistics.median(walls[m][t]) for t in tasks) for m in shown} if tasks else {}
    runs_per_task = {m: min(len(walls[m][t]) for t in tasks) for m in ours}
    paper = spec.get("time_h", {})
    rows = []
    for method, label in ((m, spec["methods"][m]["label"]) for m in spec["methods"]):
        if method not in paper and method not in ours:
            continue
        paper_h, ours_h = paper.get(method), ours.get(method)
        rows.append([label, "—" if paper_h is None else f"{paper_h:.1f}",
                     "—" if paper_h is None or not paper.get("baseline") else f"{paper_h / paper['baseline']:.1f}x",
                     "—" if ours_h is None else f"{ours_h:.2f} (≥ {runs_per_task[method]})",
                     "—" if ours_h is None or not ours.get("baseline") else f"{ours_h / ours['baseline']:.1f}x"])
    return rows, tasks


def mlm_provenance_lines(runs: list[dict]) -> list[str]:
    """GLUE tables: which mmel MLM (weights sha256, as each result records it) made the views and teacher
    outputs of the counted runs that train on views (all but `baseline`). One MLM: one line. Several
    (e.g. the git-ignored artifacts rebuilt on another machine, whose float arithmetic gives other
    weights from the same code and seed): each with its number of runs, the runs of all but the most
    used one listed by task, method and seed."""
    by_sha: dict[str, list[dict]] = {}
    for r in unique_runs(runs):                        # `baseline` trains on x_i only: no views, no MLM recorded
        if (r.get("mlm") or {}).get("weights_sha256"):
            by_sha.setdefault(r["mlm"]["weights_sha256"], []).append(r)
    if not by_sha:
        return []
    ranked = sorted(by_sha.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if len(ranked) == 1:
        sha, mine = ranked[0]
        return [f"Views and teacher outputs of all {len(mine)} counted runs with views come from one mmel MLM "
                f"(weights sha256 `{sha[:12]}`).", ""]
    n_runs = sum(len(v) for v in by_sha.values())
    lines = [f"Views and teacher outputs of the {n_runs} counted runs with views come from {len(ranked)} builds "
             "of the mmel MLM (same code, config and seed; weights sha256 differ):", ""]
    for i, (sha, mine) in enumerate(ranked):
        listed = "" if i == 0 else ": " + "; ".join(
            f"{r.get('config', {}).get('task') or r['setting']} {r['method']} seed {r['seed']}"
            for r in sorted(mine, key=lambda r: (r["setting"], r["method"], r["seed"])))
        lines.append(f"- `{sha[:12]}`: {len(mine)} run(s){listed}")
    return [*lines, ""]


def report_sections(table: str, runs: list[dict], published: dict) -> list[str]:
    """Markdown lines after Table 1's or Table 3's orderings: training time per method, paper vs ours;
    for the GLUE tables (3 and 4), which MLM made the counted runs' views."""
    if table == "table4" and runs:
        return mlm_provenance_lines(runs)
    if table == "table3" and runs:
        rows, tasks = glue_time_rows(published["tables"][table], runs)
        header = ["method", "paper hours (all tasks, one V100)", "paper ÷ Baseline",
                  "ours hours (runs per task)", "ours ÷ Baseline"]
        return [*mlm_provenance_lines(runs),
                f"Training time per method (our hours: per task the median run over seeds, summed over the "
                f"{len(tasks)} tasks every method has run ({', '.join(tasks)}); one CPU thread per run; only the "
                "ratios compare across hardware):", "",
                _row(header), _row(["---"] * len(header)), *map(_row, rows), ""]
    if table != "table1":
        return []
    rows = time_rows(published["tables"][table], runs)
    if not rows:
        return []
    header = ["setting", "method", "paper hours (one V100)", "paper ÷ DA", "ours hours per run (n)", "ours ÷ DA"]
    return ["Training time per method (the paper's time column beside the median wall-clock time of our runs, "
            "each on one CPU thread; only the ratios to Baseline(DA) compare across hardware):", "",
            _row(header), _row(["---"] * len(header)), *map(_row, rows), ""]
