"""`repro verify`: re-run a sample of the committed results on this machine and compare them.

    repro verify --paper hu19 --table table2 --method base --runs-per-cell 2
    repro verify --paper hu19 --dry-run                 # what would re-run, and a time estimate

Per cell (table, setting, method) it takes the K committed results that `repro report` counts
(config hash of the current params, see `pipelines.grid.current_hashes`), lowest seeds first, and
re-runs exactly their configs (the `config` each result stores, so `base_val` keeps the step count it
was sized with) through the normal job machinery (`common.run.grid.run_grid` on the local backend,
with the torch thread count each result records), into a temporary results directory: the
repository's results/, .checkpoints/ and splits/ are only read. Committed split index files are
copied in, so a re-run checks it draws the same split.

Per run: committed and re-run metric, delta, whether metrics and per-epoch history are bitwise equal,
and the first history row where they differ. Per cell: the committed mean ± std (n, population
std as in the reports) against the mean of the K re-runs. Float-level differences (another CPU,
BLAS or build) grow during training, so a re-run on another machine is a new draw from the seed
distribution, not a copy; the verdict is therefore statistical: "agree" when

    |mean(re-runs) - mean(committed)| <= 2 SE,   SE = std * sqrt(1/K + 1/n)

(the standard error of the difference between a mean of K new draws and the committed mean of n, both
from the committed distribution; the reports' like-for-like rule with the committed std on both
sides). A cell whose K re-runs are all bitwise equal agrees outright. With n < 2 or std 0 the SE is
unknown ("n too small"): the verdict falls back to exact equality of the metric per seed.
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.errors import ConfigError, ReproError

METRIC = "test_acc"


@dataclass
class RunCheck:
    """One committed result against its re-run."""
    table: str
    setting: str
    method: str
    seed: int
    committed: float | None
    rerun: float | None = None
    delta: float | None = None
    bitwise: bool = False
    first_difference: dict | None = None   # {"row", "epoch", "phase", "keys", "committed", "rerun"}; None: none
    first_score_difference: dict | None = None   # the same, loss values ignored (e.g. where dev_acc first differs)
    threads: int = 1
    committed_wall_s: float | None = None
    rerun_wall_s: float | None = None
    committed_git_sha: str = ""
    rerun_git_sha: str = ""
    error: str | None = None               # the re-run failed (last line of its traceback)

    @property
    def label(self) -> str:
        return f"{self.table}/{self.setting}/{self.method}/seed{self.seed}"


@dataclass
class CellCheck:
    table: str
    setting: str
    method: str
    n: int                                 # committed counted results with a finite metric
    committed_mean: float
    committed_std: float
    k: int                                 # re-runs with a finite metric
    rerun_mean: float | None
    delta: float | None
    se: float | None                       # None: n too small (exact comparison)
    verdict: str                           # agree | DISAGREE | FAILED
    note: str = ""
    seeds: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.table}/{self.setting}/{self.method}"


@dataclass
class Plan:
    """What `verify` re-runs: per cell the counted results (seed order) and the K selected."""
    paper: str
    profile: str
    counted: dict[tuple[str, str, str], list[dict]]
    selected: dict[tuple[str, str, str], list[dict]]

    @property
    def runs(self) -> list[dict]:
        return [r for chosen in self.selected.values() for r in chosen]


# --- selection ----------------------------------------------------------------------------------------

def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plan_verify(params: dict, paper: str, profile: str, tables: list[str], *, setting: str | None = None,
                method: str | None = None, runs_per_cell: int = 2) -> Plan:
    """Per matching cell, the committed counted results and the `runs_per_cell` lowest seeds of them."""
    from common.config import config_hash
    from common.run.results import collect_results
    from pipelines.grid import current_hashes

    if runs_per_cell < 1:
        raise ConfigError(f"--runs-per-cell: expected a number >= 1, got {runs_per_cell}")
    results_dir = Path(params["base"]["results_dir"])
    results = collect_results(results_dir, profile, paper)
    counted: dict[tuple[str, str, str], list[dict]] = {}
    for table in tables:
        runs = [r for r in results if r["table"] == table]
        expected = current_hashes(params, paper, profile, table, runs)
        for r in sorted(runs, key=lambda r: (r["setting"], r["method"], r["seed"])):
            if expected.get((r["setting"], r["method"], r["seed"])) == r["config_hash"]:
                counted.setdefault((table, r["setting"], r["method"]), []).append(r)
    matching = {cell: runs for cell, runs in counted.items()
                if (setting is None or cell[1] == setting) and (method is None or cell[2] == method)}
    if not matching:
        have = sorted("/".join(cell) for cell in counted)
        raise ReproError(
            f"verify: no counted result matches paper={paper} profile={profile} table={','.join(tables)} "
            f"setting={setting} method={method} in {results_dir / profile / paper} (counted: results whose config "
            f"hash matches the current params); cells with counted results: {have or 'none'}. "
            "Check the filters, or see `repro status` and run the grid first (`repro run`)")
    selected = {}
    for cell, runs in matching.items():
        usable = [r for r in runs if _finite(r["metrics"].get(METRIC))]
        selected[cell] = (usable or runs)[:runs_per_cell]
        for r in selected[cell]:
            stored = r.get("config")
            if stored is None or config_hash(stored) != r["config_hash"]:
                what = ("stores no `config`" if stored is None else
                        f"stores a `config` that hashes to {config_hash(stored)}, not its config_hash "
                        f"{r['config_hash']} (the file was edited)")
                raise ReproError(f"{results_dir / profile / _label(r)}.json: the committed result "
                                 f"{what}, so it cannot be re-run exactly; restore the file from git, or move it away "
                                 "and `repro run` that seed again")
    return Plan(paper, profile, matching, selected)


def _label(r: dict) -> str:
    return f"{r['paper']}/{r['table']}/{r['setting']}/{r['method']}/seed{r['seed']}"


# --- time estimate ------------------------------------------------------------------------------------

def estimate_seconds(walls: list[float], workers: int) -> float:
    """Wall time of re-running runs of these recorded durations on `workers` pooled workers: the recorded
    wall times (as `repro status` estimates from finished runs), longest first onto the freest worker."""
    free = [0.0] * max(1, workers)
    for wall in sorted(walls, reverse=True):
        free[free.index(min(free))] += wall
    return max(free)


def load_slowdown(workers: int, threads: int) -> float | None:
    """Rough slowdown from what else runs now: (1-min load + our threads) / cores, at least 1; None if unknown."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    return max(1.0, (load + workers * threads) / cores)


def describe_estimate(plan: Plan, workers: int) -> str:
    runs = plan.runs
    walls = [float(r.get("wall_s") or 0.0) for r in runs]
    est = estimate_seconds(walls, workers)
    threads = max(int(r.get("threads") or 1) for r in runs)
    text = (f"re-running {len(runs)} run(s) of {len(plan.selected)} cell(s) on {workers} worker(s): about "
            f"{est / 60:.1f} min from the recorded wall times of these runs ({sum(walls) / 60:.1f} core-min)")
    slowdown = load_slowdown(workers, threads)
    if slowdown is not None and slowdown > 1.05:
        text += (f"; the machine is busy now (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} core(s)), "
                 f"so perhaps ~{est * slowdown / 60:.1f} min")
    return text


# --- re-running ---------------------------------------------------------------------------------------

def rerun(plan: Plan, params: dict, work_dir: Path, workers: int, progress: bool = False) -> dict[str, dict | str]:
    """Re-run the selected configs into `work_dir` (results, checkpoints and splits all there); returns
    label -> the re-run result, or the error text of a failed run. One grid per recorded thread count."""
    from common.config import data_mirror
    from common.run.grid import make_backend, run_grid
    from common.run.results import RunKey, read_result
    from pipelines.grid import split_path
    from pipelines.papers import PAPER_MODULES

    base = params["base"]
    results_dir, splits_dir = work_dir / "results", work_dir / "splits"
    repo_splits = Path(base["splits_dir"])

    def staged_split(config: dict) -> Path:
        """The committed split index file copied into the work dir (drawn there if there is none)."""
        target = split_path(splits_dir, config)
        source = split_path(repo_splits, config)
        if not target.exists() and source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return target

    by_threads: dict[int, list[dict]] = {}
    for r in plan.runs:       # each stored config hashes to its result's config_hash (checked by plan_verify)
        by_threads.setdefault(int(r.get("threads") or base["runner"]["threads_per_worker"]), []).append(r["config"])
    from pipelines.mlm_stage import ensure_mlm
    ensure_mlm(params, plan.profile, [r["config"] for r in plan.runs], results_dir)   # the MLM text re-runs read
    out: dict[str, dict | str] = {}
    for threads, configs in sorted(by_threads.items()):
        report = run_grid(configs, paper_module=PAPER_MODULES[plan.paper], results_dir=results_dir,
                          mirror=data_mirror(base), backend=make_backend({"backend": "local", "workers": workers}),
                          threads=threads, split_path_for=staged_split, progress=progress,
                          allow_dirty=True)     # the re-runs are compared and thrown away, never published
        for label, error in report.failed.items():
            out[label] = error.strip().splitlines()[-1] if error.strip() else "failed"
        for c in configs:
            key = RunKey(c["paper"], c["table"], c["setting"], c["method"], c["seed"])
            result = read_result(key.path(results_dir, c["profile"]))
            if result is not None:
                out[key.label()] = result
    return out


# --- comparison ---------------------------------------------------------------------------------------

def _is_loss(key: str) -> bool:
    return "loss" in key


def first_difference(committed: list[dict], rerun: list[dict], scores_only: bool = False) -> dict | None:
    """The first history row (per-epoch record) that differs, with the keys that differ; None if the
    histories are equal. `scores_only`: ignore loss values (they differ at the first float-level
    difference; dev accuracies usually stay equal for a few epochs after)."""
    for i in range(max(len(committed), len(rerun))):
        a = committed[i] if i < len(committed) else None
        b = rerun[i] if i < len(rerun) else None
        keys = sorted(set(a or {}) | set(b or {}))
        differ = [k for k in keys if (a or {}).get(k) != (b or {}).get(k) and not (scores_only and _is_loss(k))]
        if a is None or b is None or differ:
            row = a or b
            return {"row": i, "epoch": row.get("epoch"), "phase": row.get("phase"), "keys": differ,
                    "committed": a, "rerun": b}
    return None


def compare_run(committed: dict, rerun: dict | str | None) -> RunCheck:
    check = RunCheck(committed["table"], committed["setting"], committed["method"], committed["seed"],
                     committed["metrics"].get(METRIC), threads=int(committed.get("threads") or 1),
                     committed_wall_s=committed.get("wall_s"), committed_git_sha=committed.get("git_sha", ""))
    if not isinstance(rerun, dict):
        check.error = rerun or "no result written"
        return check
    check.rerun = rerun["metrics"].get(METRIC)
    check.rerun_wall_s, check.rerun_git_sha = rerun.get("wall_s"), rerun.get("git_sha", "")
    if _finite(check.committed) and _finite(check.rerun):
        check.delta = round(check.rerun - check.committed, 6)
    history_a, history_b = committed.get("history") or [], rerun.get("history") or []
    check.first_difference = first_difference(history_a, history_b)
    check.first_score_difference = first_difference(history_a, history_b, scores_only=True)
    check.bitwise = check.first_difference is None and committed["metrics"] == rerun["metrics"]
    return check


def committed_stats(values: list[float | None]) -> tuple[int, float, float]:
    """n, mean and population std (ddof=0) of the finite values, as `pipelines.reports.stats.seed_stats`
    (not imported: the reports package pulls in matplotlib and pandas)."""
    finite = [float(v) for v in values if _finite(v)]
    if not finite:
        return 0, math.nan, math.nan
    return len(finite), statistics.fmean(finite), statistics.pstdev(finite)


def cell_verdict(committed_values: list[float | None], reruns: list[RunCheck]) -> tuple[str, float | None, str]:
    """(verdict, SE or None, note) of one cell: the committed values (every counted seed) against the
    re-runs of K of them (see the module docstring for the rule)."""
    if any(r.error is not None for r in reruns):
        return "FAILED", None, "a re-run failed"
    if all(r.bitwise for r in reruns):
        return "agree", None, "bitwise equal"
    n, mean, std = committed_stats(committed_values)
    values = [r.rerun for r in reruns if _finite(r.rerun)]
    if len(values) < len(reruns):
        return "DISAGREE", None, f"{len(reruns) - len(values)} re-run(s) without a finite {METRIC}"
    if n < 2 or not std > 0:
        exact = all(r.rerun == r.committed for r in reruns)
        why = f"n={n}" if n < 2 else "committed std 0"
        return ("agree" if exact else "DISAGREE"), None, f"n too small ({why}): exact comparison per seed"
    se = std * math.sqrt(1 / len(values) + 1 / n)
    delta = statistics.fmean(values) - mean
    return ("agree" if abs(delta) <= 2 * se else "DISAGREE"), se, ""


def check_cells(plan: Plan, runs: list[RunCheck]) -> list[CellCheck]:
    cells = []
    for cell in plan.selected:
        mine = [r for r in runs if (r.table, r.setting, r.method) == cell]
        committed_values = [r["metrics"].get(METRIC) for r in plan.counted[cell]]
        n, committed_mean, std = committed_stats(committed_values)
        verdict, se, note = cell_verdict(committed_values, mine)
        values = [r.rerun for r in mine if _finite(r.rerun)]
        mean = statistics.fmean(values) if values else None
        cells.append(CellCheck(*cell, n=n, committed_mean=committed_mean, committed_std=std, k=len(values),
                               rerun_mean=mean, delta=None if mean is None else mean - committed_mean, se=se,
                               verdict=verdict, note=note, seeds=[r.seed for r in mine]))
    return cells


@dataclass
class VerifyReport:
    paper: str
    profile: str
    code: str                # the git sha the re-runs record (HEAD, `-dirty` with uncommitted code)
    runs: list[RunCheck]
    cells: list[CellCheck]

    @property
    def ok(self) -> bool:
        return all(c.verdict == "agree" for c in self.cells)

    def to_json(self) -> dict:
        return {"paper": self.paper, "profile": self.profile, "metric": METRIC, "code": self.code,
                "rule": "agree if |mean(re-runs) - mean(committed)| <= 2 SE, SE = std * sqrt(1/K + 1/n); "
                        "bitwise-equal cells agree; n < 2 or std 0: exact comparison per seed",
                "ok": self.ok, "runs": [{**asdict(r), "label": r.label} for r in self.runs],
                "cells": [{**asdict(c), "label": c.label} for c in self.cells]}


def verify(params: dict, plan: Plan, *, workers: int = 1, progress: bool = False) -> VerifyReport:
    """Re-run `plan` in a temporary directory (removed afterwards) and compare."""
    from common.run.job import code_state

    with tempfile.TemporaryDirectory(prefix="repro-verify-") as work:
        reruns = rerun(plan, params, Path(work), workers, progress)
    runs = [compare_run(r, reruns.get(_label(r))) for r in plan.runs]
    return VerifyReport(plan.paper, plan.profile, code_state(with_diff=False).sha, runs, check_cells(plan, runs))


# --- output -------------------------------------------------------------------------------------------

def _num(value, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _row(diff: dict) -> str:
    where = f"{diff['phase']} epoch {diff['epoch']}" if diff.get("phase") else f"epoch {diff['epoch']}"
    if diff["committed"] is None or diff["rerun"] is None:
        return where + (" (only committed)" if diff["rerun"] is None else " (only re-run)")
    return where + f" ({', '.join(diff['keys'])})"


def _where(r: RunCheck) -> str:
    if r.bitwise:
        return "-"
    if r.first_difference is None:
        return "metrics only"
    text = _row(r.first_difference)
    scores = r.first_score_difference
    if scores is None:
        return text + "; scores equal"
    return text if scores["row"] == r.first_difference["row"] else text + "; scores: " + _row(scores)


def render(report: VerifyReport) -> str:
    made_by = sorted({r.committed_git_sha[:12] + ("-dirty" if r.committed_git_sha.endswith("-dirty") else "")
                      for r in report.runs})
    ours = report.code[:12] + ("-dirty" if report.code.endswith("-dirty") else "")
    lines = [f"{report.paper} ({report.profile}): {METRIC}, committed vs re-run here",
             f"code: re-runs {ours}, committed runs {', '.join(made_by)}", "",
             f"{'run':44} {'committed':>9} {'re-run':>7} {'delta':>7} {'bitwise':>7}  first differs (history)"]
    for r in report.runs:
        where = f"FAILED: {r.error}" if r.error else _where(r)
        lines.append(f"{r.label:44} {_num(r.committed):>9} {_num(r.rerun):>7} {_num(r.delta, '+.2f'):>7} "
                     f"{'yes' if r.bitwise else 'no':>7}  {where}")
    lines += ["", f"{'cell':34} {'committed mean ± std (n)':>24} {'re-run (K)':>12} {'delta':>7} {'2 SE':>6}  verdict"]
    for c in report.cells:
        committed = f"{_num(c.committed_mean)} ± {_num(c.committed_std)} ({c.n})"
        rerun_text = f"{_num(c.rerun_mean)} ({c.k})"
        bound = "-" if c.se is None else _num(2 * c.se)
        lines.append(f"{c.label:34} {committed:>24} {rerun_text:>12} {_num(c.delta, '+.2f'):>7} {bound:>6}  "
                     f"{c.verdict}" + (f" ({c.note})" if c.note else ""))
    bad = [c for c in report.cells if c.verdict != "agree"]
    lines += ["", f"{len(report.cells) - len(bad)} of {len(report.cells)} cell(s) agree"
              + (f"; not: {', '.join(c.label for c in bad)}" if bad else "")]
    return "\n".join(lines)


def cmd_verify(args) -> int:
    from common.config import check_profile, load_params, paper_profile
    from common.io import write_json_atomic
    from common.run.progress import progress_enabled

    params = load_params(args.params)
    profile = check_profile(args.profile or params["base"]["profile"], "--profile")
    tables = list(paper_profile(params, args.paper, profile))
    if args.table:
        if args.table not in tables:
            raise ReproError(f"--table: unknown table {args.table!r} for {args.paper} profile {profile!r}; "
                             f"known tables: {tables}")
        tables = [args.table]
    workers = int(params["base"]["runner"].get("workers", 1)) if args.workers is None else args.workers
    if workers < 1:
        raise ConfigError(f"--workers: expected a number >= 1, got {workers}")
    plan = plan_verify(params, args.paper, profile, tables, setting=args.setting, method=args.method,
                       runs_per_cell=args.runs_per_cell)
    print(describe_estimate(plan, workers), flush=True)
    if args.dry_run:
        for cell, chosen in plan.selected.items():
            print(f"would re-run {'/'.join(cell)}: seed(s) {[r['seed'] for r in chosen]} of "
                  f"{len(plan.counted[cell])} counted")
        return 0
    report = verify(params, plan, workers=workers, progress=progress_enabled())
    print(render(report))
    if args.out:
        write_json_atomic(Path(args.out), report.to_json())
        print(f"wrote {args.out}")
    return 0 if report.ok else 1


def add_verify_parser(subparsers) -> None:
    p = subparsers.add_parser("verify", help="re-run a sample of committed results here and compare (2 SE per cell)")
    p.add_argument("--paper", default="hu19")
    p.add_argument("--profile", help="smoke | cpu | paper (default: base.profile)")
    p.add_argument("--table", help="one table (default: all of the paper's tables)")
    p.add_argument("--setting")
    p.add_argument("--method")
    p.add_argument("--runs-per-cell", type=int, default=2, metavar="K",
                   help="committed results re-run per cell, lowest seeds first (default: 2)")
    p.add_argument("--workers", type=int, help="parallel re-runs (default: base.runner.workers)")
    p.add_argument("--out", metavar="PATH", help="also write the comparison as JSON")
    p.add_argument("--dry-run", action="store_true", help="list what would re-run and the time estimate")
    p.set_defaults(fn=cmd_verify)
