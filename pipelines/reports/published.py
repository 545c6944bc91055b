"""A paper's published numbers: papers/<paper>/paper_tables.yaml, loaded and checked."""
from __future__ import annotations

from pathlib import Path

import yaml

from common.errors import ConfigError
from pipelines.papers import PAPERS_DIR


def load_published(paper: str, papers_dir: Path = PAPERS_DIR) -> dict | None:
    """<papers_dir>/<paper>/paper_tables.yaml, or None if the paper has none; `paper` set to the id,
    each table's `our_variants` expanded (see `with_variants`), `stated_in_text` and `official_log`
    entries checked."""
    path = Path(papers_dir) / paper / "paper_tables.yaml"
    if not path.exists():
        return None
    published = yaml.safe_load(path.read_text())
    published.setdefault("paper", paper)
    published["tables"] = {name: with_variants(spec) for name, spec in published.get("tables", {}).items()}
    for name, spec in published["tables"].items():
        validate_stated_in_text(name, spec)
        validate_official_logs(name, spec)
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
