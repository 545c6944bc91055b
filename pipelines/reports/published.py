"""A paper's published numbers: papers/<paper>/paper_tables.yaml, loaded and checked."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from common.errors import ConfigError
from pipelines.papers import PAPERS_DIR


def load_published(paper: str, papers_dir: Path = PAPERS_DIR) -> dict | None:
    """<papers_dir>/<paper>/paper_tables.yaml, or None if the paper has none; `paper` set to the id,
    each table's `our_variants` expanded (see `with_variants`), its `reference` row, the published
    cells (see `validate_cells`), `stated_in_text` and `official_log` entries checked."""
    path = Path(papers_dir) / paper / "paper_tables.yaml"
    if not path.exists():
        return None
    published = yaml.safe_load(path.read_text())
    published.setdefault("paper", paper)
    published["tables"] = {name: with_variants(spec) for name, spec in published.get("tables", {}).items()}
    for name, spec in published["tables"].items():
        validate_reference(path, name, spec)
        validate_cells(path, name, spec)
        validate_stated_in_text(name, spec)
        validate_official_logs(name, spec)
        validate_runs_from(path, name, spec, published["tables"])
        validate_methods_from(path, name, spec, published["tables"])
    return published


def validate_methods_from(path: Path, table: str, spec: dict, tables: dict) -> None:
    """`methods_from: {method: [source, ...]}` (a method scored from another table's runs with the same
    config, see `table_report.borrowed_runs`): each method a row of the table, each source another table's
    name or {table: <name>, method: <method id>}."""
    entries = spec.get("methods_from")
    if entries is None:
        return
    where = f"{path}: tables.{table}.methods_from"
    if not isinstance(entries, dict):
        raise ConfigError(f"{where}: expected a mapping method -> list of tables, got {type(entries).__name__}")
    for method, sources in entries.items():
        if method not in spec.get("methods", {}):
            raise ConfigError(f"{where}.{method}: not a method (row) of the table; expected one of "
                              f"{sorted(spec.get('methods', {}))}")
        others = sorted(t for t in tables if t != table)

        def is_source(s) -> bool:
            name = s.get("table") if isinstance(s, dict) and set(s) == {"table", "method"} \
                and isinstance(s["method"], str) else s
            return isinstance(name, str) and name != table and name in tables

        if not isinstance(sources, list) or not sources or not all(is_source(s) for s in sources):
            raise ConfigError(f"{where}.{method}: expected a non-empty list of other tables of this file "
                              f"({others}), each a name or {{table: <name>, method: <method id>}}, got {sources!r}")


def validate_runs_from(path: Path, table: str, spec: dict, tables: dict) -> None:
    """`runs_from: <table>` (a table scored by another table's runs, see `table_report.cell_runs`) must
    name another table of the same file."""
    source = spec.get("runs_from")
    if source is not None and (source == table or source not in tables):
        raise ConfigError(f"{path}: tables.{table}.runs_from: {source!r} is not another table of this file; "
                          f"expected one of {sorted(t for t in tables if t != table)}")


DEFAULT_REFERENCE = "base"


def reference_method(spec: dict) -> str:
    """The table's reference row (`reference: <method>`, default `base`): the row the ordering rule
    compares every other method with in the same setting, marked `ref` in the report."""
    return spec.get("reference", DEFAULT_REFERENCE)


def validate_reference(path: Path, table: str, spec: dict) -> None:
    """An explicit `reference` must name a published method of the table (not one of `our_variants`).
    Without the key the reference is `base`, which a table may lack (its ordering cells then stay PENDING)."""
    if "reference" not in spec:
        return
    published_methods = [m for m in spec.get("methods", {}) if m not in (spec.get("our_variants") or {})]
    reference = spec["reference"]
    if not isinstance(reference, str) or reference not in published_methods:
        raise ConfigError(f"{path}: tables.{table}.reference: {reference!r} is not a method (row) of the table; "
                          f"expected one of {published_methods}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_cells(path: Path, table: str, spec: dict) -> None:
    """Each published cell: `mean` a number; `std` a finite number >= 0, or null / absent where the
    paper prints no std (the report then shows the mean only and the like-for-like rule uses our
    standard error alone); `n`, if given, a positive integer: the cell's own run count, used instead
    of the table's (`n` of the table, else of the file) wherever the report uses the paper's n."""
    for setting, by_method in spec.get("results", {}).items():
        for method, cell in by_method.items():
            where = f"{path}: tables.{table}.results.{setting}.{method}"
            if not isinstance(cell, dict):
                raise ConfigError(f"{where}: {cell!r}; expected a mapping {{mean, std, ...}}")
            if not _is_number(cell.get("mean")):
                raise ConfigError(f"{where}.mean: {cell.get('mean')!r}; expected a number")
            std = cell.get("std")
            if std is not None and not (_is_number(std) and math.isfinite(std) and std >= 0):
                raise ConfigError(f"{where}.std: {std!r}; expected a finite number >= 0, or null where the paper "
                                  "prints no std")
            n = cell.get("n")
            if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
                raise ConfigError(f"{where}.n: {n!r}; expected a positive integer (the cell's own run count)")


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


OFFICIAL_LOG_KEYS = ("source", "path", "n", "mean", "std")


def validate_official_logs(table: str, spec: dict) -> None:
    """`official_log` of a result cell ({source, path, n, mean, std}): a second reference, the paper's
    own per-run logs (e.g. published with its code); n a positive integer, mean and std numbers."""
    for setting, by_method in spec["results"].items():
        for method, cell in by_method.items():
            log = cell.get("official_log")
            if log is None:
                continue
            where = f"paper_tables.yaml: tables.{table}.results.{setting}.{method}.official_log"
            missing = [k for k in OFFICIAL_LOG_KEYS if k not in (log if isinstance(log, dict) else {})]
            if missing:
                raise ConfigError(f"{where}: missing {missing}; expected {', '.join(OFFICIAL_LOG_KEYS)}")
            numbers_ok = all(isinstance(log[k], (int, float)) and not isinstance(log[k], bool) for k in ("mean", "std"))
            if not (isinstance(log["n"], int) and not isinstance(log["n"], bool) and log["n"] >= 1 and numbers_ok):
                raise ConfigError(f"{where}: n={log['n']!r}, mean={log['mean']!r}, std={log['std']!r}; "
                                  "expected a positive integer n and numbers mean and std")
