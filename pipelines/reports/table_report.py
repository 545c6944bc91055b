"""One published table against our current results: cells with verdicts and deviation footnotes."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from common.errors import ConfigError
from pipelines.grid import current_hashes, method_configs, table_configs
from pipelines.reports.published import reference_method
from pipelines.reports.stats import Stats, Verdict, aggregate, like_for_like_verdict, ordering_verdict

UNCOMPARED_CONFIG_KEYS = ("seeds", "not_run")


@dataclass(frozen=True)
class Cell:
    setting: str
    method: str
    paper: Stats
    ours: Stats | None
    verdict: Verdict
    variant: bool = False          # our variant of a published method (not a published cell)
    log: Stats | None = None       # the paper's own per-run logs (`official_log`), if published
    log_verdict: Verdict | None = None   # ours against `log`, by the table's rule
    planned: bool = True           # the profile plans runs of it (False: quoted only, or left out of the profile)


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
    reference: str = "base"        # the reference row of the ordering rule (`reference:` in paper_tables.yaml)
    paper_n: int = 0               # the table's published n (`n` of the table, else of the file)

    @property
    def has_logs(self) -> bool:
        return any(cell.log is not None for cell in self.cells)

    @property
    def has_paper_std_missing(self) -> bool:
        """Some published cell prints no std (shown as mean only; the like-for-like bound is ours alone)."""
        return any(cell.paper.std is None for cell in self.cells)

    @property
    def has_cell_n(self) -> bool:
        """Some published cell gives its own run count, different from the table's."""
        return any(cell.paper.n != self.paper_n for cell in self.cells)


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


def setting_left_out(config: dict | None, setting: str, profile: str) -> str:
    """What keeps a whole setting out of the profile ('' if nothing): no table config, the profile's
    `not_run` note, or no entry under `settings`. Shared by `not_run_reason` and `planned_here`."""
    if config is None:
        return f"table not in the `{profile}` profile"
    if setting in config.get("not_run", {}):
        return config["not_run"][setting]
    if setting not in config.get("settings", {}):
        return f"not in the `{profile}` profile"
    return ""


def not_run_reason(config: dict | None, setting: str, method: str, profile: str) -> str:
    """Why a cell has no results: the profile's `not_run` note, else what the profile leaves out."""
    left_out = setting_left_out(config, setting, profile)
    if left_out:
        return left_out
    if method not in config.get("methods", [method]):
        return f"not in the `{profile}` profile"
    seeds = config.get("seeds")
    return f"none of its {seeds} planned runs finished yet" if seeds else "not run yet"


def planned_here(config: dict | None, spec: dict, setting: str, method: str, profile: str) -> bool:
    """Does the profile plan runs of this cell, in the table itself or (`methods_from`) in another table?"""
    if setting_left_out(config, setting, profile):
        return False
    return method in config.get("methods", []) or method in spec.get("methods_from", {})


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


def official_log_stats(cell: dict | None) -> Stats | None:
    """The `official_log` of a published cell as Stats, if it has one."""
    log = (cell or {}).get("official_log")
    return Stats(log["n"], log["mean"], log["std"]) if log else None


def cell_verdict(method: str, reference: Stats, ours: Stats | None, reference_base: Stats | None,
                 ours_base: Stats | None, like_for_like: bool | None, not_run: str,
                 reference_row: str = "base") -> Verdict:
    """Ours against one reference (the paper's numbers or its logs) by the table's rule;
    `reference_row`: the table's reference method (`reference_base`/`ours_base` are its numbers)."""
    if ours is None:
        return Verdict("NOT RUN", not_run)
    if like_for_like:
        return like_for_like_verdict(reference, ours)
    return ordering_verdict(method, reference, ours, reference_base, ours_base, reference_row)


def published_stats(cell: dict, table_n: int) -> Stats:
    """A published cell as Stats: its own `n` if it gives one (else the table's), std None where the
    paper prints none."""
    return Stats(cell.get("n", table_n), cell["mean"], cell.get("std"))


def cell_runs(runs: list[dict], table: str) -> list[dict]:
    """The results as rows of `table`: a result whose metrics hold `cells` ({table: {setting: value}},
    one run scoring several published cells, e.g. mmel's GLUE runs: dev and test rows of Table 3 and
    a Table 4 cell) gives one row per cell of `table`, its value as test_acc; others pass unchanged."""
    rows = []
    for r in runs:
        cells = r.get("metrics", {}).get("cells")
        if cells is None:
            rows += [r] if r["table"] == table else []
            continue
        shared = {"borrowed_from": r["table"]} if r["table"] != table else {}
        rows += [{**r, "table": table, "setting": setting, "metrics": {**r["metrics"], "test_acc": value}, **shared}
                 for setting, value in cells.get(table, {}).items()]
    return rows


def _without_table(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("table", "method")}


def borrow_sources(sources: list) -> list[tuple[str, str | None]]:
    """`methods_from` sources as (table, method): a table name (the same method there) or
    {table: <t>, method: <m>} (another method id there with the same config, e.g. mmel's `mmel_h_b10` is
    Table 1's `mmel_h`: |B| = 10 is Table 1's |B|)."""
    return [(s, None) if isinstance(s, str) else (s["table"], s["method"]) for s in sources]


def borrowed_runs(spec: dict, table: str, config: dict | None, params: dict, paper: str, profile: str,
                  results: list[dict]) -> tuple[list[dict], dict[tuple[str, str], str], list[str]]:
    """`methods_from: {method: [source, ...]}` (paper_tables.yaml): a method this table does not run in the
    profile is scored from the first listed source whose runs have exactly the configs this table would give
    the method (every key but `table` and `method`; the run's code reads its algorithm from the config, so
    equal configs are the same runs), setting by setting; e.g. metaaugment's Figure 5 eps = 0.1 point is
    Table 1's `metaaugment`. Returns those runs (current ones only, relabelled to this table and method,
    `borrowed_from` naming the source), why a (setting, method) has none, and a footnote per borrowed cell."""
    if config is None:
        return [], {}, []
    tables = params.get(paper, {}).get("profiles", {}).get(profile, {})
    runs, reasons, notes = [], {}, []
    for method, sources in (spec.get("methods_from") or {}).items():
        if method in config.get("methods", []):
            continue                                   # this profile runs it in the table itself
        wanted: dict[str, dict[int, dict]] = {}
        for c in method_configs(params, paper, profile, table, method):
            wanted.setdefault(c["setting"], {})[c["seed"]] = _without_table(c)
        for setting, seeds in wanted.items():
            why = []
            for source, source_method in borrow_sources(sources):
                source_method = source_method or method
                name = source if source_method == method else f"{source}'s {source_method}"
                if source_method not in tables.get(source, {}).get("methods", []):
                    why.append(f"{source} does not run {source_method} in the `{profile}` profile")
                    continue
                theirs = {c["seed"]: _without_table(c) for c in table_configs(params, paper, profile, source)
                          if c["method"] == source_method and c["setting"] == setting}
                if not theirs:
                    why.append(f"{source} has no {setting} runs of {source_method}")
                    continue
                differ = sorted({key for seed, mine in seeds.items() for key in set(mine) | set(theirs.get(seed, {}))
                                 if mine.get(key) != theirs.get(seed, {}).get(key)})
                if differ:
                    why.append(f"{name} runs differ in {', '.join(differ)}")
                    continue
                found, _, _ = current_runs(source, tables[source], params, paper, profile,
                                           [r for r in results if r["table"] == source])
                mine = [{**r, "table": table, "method": method, "borrowed_from": source} for r in found
                        if r["method"] == source_method and r["setting"] == setting and r["seed"] in seeds]
                runs += mine
                notes.append(f"{method} ({setting}): {source}'s runs of {source_method} (the same config; "
                             "`methods_from`)")
                if not mine:
                    reasons[(setting, method)] = (f"none of {source}'s {len(seeds)} planned runs of {source_method} "
                                                  "finished yet")
                break
            else:
                reasons[(setting, method)] = "no table runs it with this table's config: " + "; ".join(why)
    return runs, reasons, notes


def build_table(published: dict, table: str, params: dict, paper: str, profile: str,
                results: list[dict]) -> TableReport:
    """Cells with verdicts and deviation footnotes of one published table. A table with `runs_from:
    <table>` (paper_tables.yaml) has no runs of its own: its cells come from that table's runs
    (`cell_runs`), checked against that table's config; `methods_from` scores single methods from
    another table's runs (`borrowed_runs`)."""
    spec = published["tables"][table]
    source = spec.get("runs_from", table)
    paper_n = spec.get("n", published["n"])
    profiles = params.get(paper, {}).get("profiles", {})
    config = profiles.get(profile, {}).get(source)
    footnotes, like_for_like = [], None
    if config is not None:
        deviations = [] if profile == "paper" else table_deviations(config, profiles.get("paper", {}).get(source))
        like_for_like = not deviations
        footnotes = deviations + ([f"n = {config['seeds']} seeds here vs {paper_n} in the paper"]
                                  if config.get("seeds", paper_n) < paper_n else [])
    runs, stale, stale_check = current_runs(source, config, params, paper, profile,
                                            [r for r in results if r["table"] == source])
    runs, stale = cell_runs(runs, table), cell_runs(stale, table)
    borrowed, borrowed_why, borrowed_notes = borrowed_runs(spec, table, config, params, paper, profile, results)
    runs, footnotes = runs + borrowed, footnotes + borrowed_notes
    ours_stats = aggregate(runs)
    reference = reference_method(spec)
    cells = []
    for setting, by_method in spec["results"].items():
        base = by_method.get(reference)
        paper_base = published_stats(base, paper_n) if base else None
        log_base = official_log_stats(base)
        ours_base = ours_stats.get((table, setting, reference))
        for method, published_cell in by_method.items():
            theirs = published_stats(published_cell, paper_n)
            ours = ours_stats.get((table, setting, method))
            variant = method in spec.get("our_variants", {})
            if variant and ours is None and config is not None and method not in config.get("methods", []):
                continue  # our variant, not planned in this profile: no row
            setting_spec = spec.get("settings", {}).get(setting, {})
            run_setting = setting_spec.get("run_setting", setting)
            not_run = ": " + (spec.get("methods", {}).get(method, {}).get("not_run") or setting_spec.get("not_run")
                              or borrowed_why.get((run_setting, method))
                              or not_run_reason(config, run_setting, method, profile))
            verdict = cell_verdict(method, theirs, ours, paper_base, ours_base, like_for_like, not_run, reference)
            log = official_log_stats(published_cell)
            log_verdict = None if log is None else cell_verdict(method, log, ours, log_base, ours_base,
                                                                like_for_like, "", reference)
            planned = ours is not None or planned_here(config, spec, run_setting, method, profile)
            cells.append(Cell(setting, method, theirs, ours, verdict, variant, log, log_verdict, planned))
    return TableReport(table, spec["title"], like_for_like, footnotes, cells, runs, stale, stale_check, ours_stats,
                       reference, paper_n)
