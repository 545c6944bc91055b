"""Resolve a paper's table configs for a profile and run them (the DVC `run` and `prepare` stages)."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.config import config_hash, data_mirror, table_config
from common.errors import ConfigError
from common.run.grid import GridReport, make_backend, run_grid
from common.run.progress import progress_enabled
from common.run.results import collect_results
from common.run.tracking import Tracker
from pipelines.papers import PAPER_MODULES, hook, paper_module

log = logging.getLogger("repro.grid")


def table_configs(params: dict, paper: str, profile: str, table: str) -> list[dict]:
    module = paper_module(paper)
    cfg = table_config(params, paper, profile, table)
    module.validate_table_config(table, cfg, f"params.yaml: {paper}.profiles.{profile}.{table}")
    return module.run_configs(table, cfg, profile)


def method_configs(params: dict, paper: str, profile: str, table: str, method: str) -> list[dict]:
    """The run configs `table` of `profile` would have for `method` if it listed only that method (a
    method it scores from another table's runs, `methods_from` in paper_tables.yaml)."""
    module = paper_module(paper)
    cfg = {**table_config(params, paper, profile, table), "methods": [method]}
    module.validate_table_config(table, cfg, f"params.yaml: {paper}.profiles.{profile}.{table} (as {method})")
    return module.run_configs(table, cfg, profile)


def current_hashes(params: dict, paper: str, profile: str, table: str, results: list[dict]) -> dict:
    """(setting, method, seed) -> the config hash a result needs to count under the current params
    (None: cannot count, its `requires` results are missing or stale). Dependent runs (base_val)
    are resolved from `results` as the runner resolves them."""
    module = paper_module(paper)
    found = {(r["setting"], r["method"], r["seed"]): r for r in results if r["table"] == table}
    configs = table_configs(params, paper, profile, table)
    hashes = {(c["setting"], c["method"], c["seed"]): config_hash(c) for c in configs if "requires" not in c}
    for c in configs:
        if "requires" in c:
            req = c["requires"]
            deps = [found.get((c["setting"], req["method"], s)) for s in range(req["seeds"])]
            current = all(d is not None and d["config_hash"] == hashes.get((c["setting"], req["method"], s))
                          for s, d in enumerate(deps))
            hashes[(c["setting"], c["method"], c["seed"])] = (config_hash(module.resolve_requirements(c, deps))
                                                              if current else None)
    return hashes


@dataclass
class CellStatus:
    """Progress of one (table, setting, method) of a grid."""
    table: str
    setting: str
    method: str
    done: int
    missing: int
    stale: int                 # a result exists but with another config hash (see `repro run --replace-changed`)
    est_s: float | None        # estimated seconds (one core) for the missing and stale runs
    est_from_stale: bool = False   # est_s comes from the stale runs' wall times (no current run finished yet)


def grid_status(params: dict, paper: str, profile: str, tables: list[str]) -> list[CellStatus]:
    """What a grid still needs, per cell, with a time estimate: the median wall time of the finished
    runs of the same method in the table (any setting); with none yet, the median of the method's
    stale runs, else of its archived (superseded) runs (both flagged `est_from_stale`: another
    config, e.g. fewer epochs, so only a guide); else None. Finished runs ran under whatever load
    the machine had, so the estimate is rough."""
    results = collect_results(Path(params["base"]["results_dir"]), profile, paper)
    archived = collect_results(Path(params["base"]["results_dir"]), profile, paper, archived=True)
    cells = []
    for table in tables:
        runs = [r for r in results if r["table"] == table]
        expected = current_hashes(params, paper, profile, table, runs)
        found = {(r["setting"], r["method"], r["seed"]): r for r in runs}
        by_cell: dict[tuple[str, str], list[str]] = {}
        for c in table_configs(params, paper, profile, table):
            key = (c["setting"], c["method"], c["seed"])
            result = found.get(key)
            state = ("missing" if result is None else
                     "done" if result["config_hash"] == expected.get(key) else "stale")
            by_cell.setdefault((c["setting"], c["method"]), []).append(state)
        for (setting, method), states in by_cell.items():
            mine = [r for r in runs if r["method"] == method]
            current = sorted(float(r["wall_s"]) for r in mine
                             if r["config_hash"] == expected.get((r["setting"], method, r["seed"])))
            walls = (current or sorted(float(r["wall_s"]) for r in mine)
                     or sorted(float(r["wall_s"]) for r in archived if (r["table"], r["method"]) == (table, method)))
            todo = len(states) - states.count("done")
            est = todo * walls[len(walls) // 2] if walls else (0.0 if todo == 0 else None)
            cells.append(CellStatus(table, setting, method, states.count("done"), states.count("missing"),
                                    states.count("stale"), est, est_from_stale=bool(todo and walls and not current)))
    return cells


def select(configs: list[dict], setting: str | None, method: str | None, seed: int | None) -> list[dict]:
    def keep(c):
        return ((setting is None or c["setting"] == setting) and (method is None or c["method"] == method)
                and (seed is None or c["seed"] == seed))

    chosen = [c for c in configs if keep(c)]
    if not chosen:
        have = {k: sorted({str(c[k]) for c in configs}) for k in ("setting", "method", "seed")}
        raise ConfigError(f"no run matches setting={setting} method={method} seed={seed}; available: {have}")
    return chosen


def order_runs(configs: list[dict]) -> list[dict]:
    """Cheap methods first (the paper's `run_cost` hook), then seed-major, so partial grids give every
    method some seeds: runs of cost rank >= 3 (meta steps) go after all cheaper runs."""
    def cost(c: dict) -> int:
        rank = hook(c["paper"], "run_cost")
        return rank(c["method"]) if rank else 3
    return sorted(configs, key=lambda c: (cost(c) >= 3, c["seed"], cost(c), c["setting"]))


def split_path(splits_dir: Path, config: dict) -> Path:
    spec = {k: config.get(k) for k in ("dataset", "classes", "train_counts", "dev_per_class", "dev_pool_size",
                                       "test_limit", "data_seed")}
    spec.update({k: config[k] for k in ("train_counts_per_class", "dev_source", "class_order", "test_sample")
                 if k in config})
    return (Path(splits_dir) / config["profile"] / config["paper"] / config["table"]
            / f"{config['setting']}_dataseed{config['data_seed']}_{config_hash(spec)[:8]}.json")


def writable_dir(path: Path, key: str) -> None:
    """Create base.<key> if needed and check a file can be made there, before any run starts (else a run
    would train first and then fail writing its split or result with a raw OSError)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ConfigError(f"base.{key}: cannot write to {path} ({type(exc).__name__}: {exc.strerror or exc}); "
                          f"set base.{key} in the params file to a folder you can write to") from exc


def prepare(params: dict, paper: str, profile: str, tables: list[str]) -> list[Path]:
    """Write the split index files of every run (fixed protocol: one per setting)."""
    base = params["base"]
    writable_dir(Path(base["splits_dir"]), "splits_dir")
    module = paper_module(paper)
    written = []
    for table in tables:
        for c in table_configs(params, paper, profile, table):
            path = split_path(Path(base["splits_dir"]), c)
            if path in written:
                continue
            module.prepare_split(c, data_mirror(base), path)
            written.append(path)
    return written


def run_tables(params: dict, paper: str, profile: str, tables: list[str], *, setting=None, method=None, seed=None,
               workers: int | None = None, replace_changed: bool = False, dry_run: bool = False,
               allow_dirty: bool = False, replace_dirty: bool = False) -> GridReport:
    base = params["base"]
    module = paper_module(paper)
    configs = []
    for table in tables:
        configs += table_configs(params, paper, profile, table)
    configs = order_runs(select(configs, setting, method, seed))
    runner_cfg = dict(base["runner"])
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers: expected a number >= 1, got {workers}")
        runner_cfg["workers"] = workers
    if not dry_run:
        writable_dir(Path(base["results_dir"]), "results_dir")
        writable_dir(Path(base["splits_dir"]), "splits_dir")
    if not dry_run:
        from pipelines.mlm_stage import ensure_mlm
        identity = ensure_mlm(params, profile, configs, Path(base["results_dir"]), replace_dirty=replace_dirty)
        if identity:
            log.info("%s", identity)
    tracker = Tracker(base["tracking_uri"])
    return run_grid(configs, paper_module=PAPER_MODULES[paper], results_dir=Path(base["results_dir"]),
                    mirror=data_mirror(base), backend=make_backend(runner_cfg),
                    threads=runner_cfg["threads_per_worker"], resolve=module.resolve_requirements,
                    split_path_for=lambda c: split_path(Path(base["splits_dir"]), c),
                    replace_changed=replace_changed, on_result=tracker.log_result, dry_run=dry_run,
                    progress=progress_enabled(), allow_dirty=allow_dirty, replace_dirty=replace_dirty)


def text_dev_pools(params: dict, profile: str) -> dict[str, list[tuple[str, int]]]:
    """Every dev pool a registered paper's table of `profile` draws dev examples from, by dataset:
    {dataset: [(dev_source, dev_pool_size), ...]} from the run configs themselves (keys `dataset`,
    `dev_source`, `dev_pool_size`); `dev_split` (an official dev split) needs no entry. The MLM corpus
    holds these rows out (`repro mlm`), so the leak guard follows the tables' split definitions."""
    pools: dict[str, set[tuple[str, int]]] = {}
    for paper in PAPER_MODULES:
        for table in paper_profile_tables(params, paper, profile):
            for c in table_configs(params, paper, profile, table):
                if c.get("dev_source") not in (None, "dev_split"):
                    pools.setdefault(c["dataset"], set()).add((c["dev_source"], int(c.get("dev_pool_size") or 0)))
    return {name: sorted(found) for name, found in sorted(pools.items())}


def paper_profile_tables(params: dict, paper: str, profile: str) -> list[str]:
    """The tables a paper's `profile` configures (none when the paper has no block for it)."""
    return sorted(params.get(paper, {}).get("profiles", {}).get(profile, {}) or {})


def sync_tracking(params: dict, profile: str) -> int:
    base = params["base"]
    results = []
    for paper in PAPER_MODULES:
        results += collect_results(Path(base["results_dir"]), profile, paper)
    return Tracker(base["tracking_uri"]).sync_results(results)
