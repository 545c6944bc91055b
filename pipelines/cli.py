"""`repro` command line: prepare, run, status, report, sync-mlflow, bench, mlm.

    repro run --paper hu19 --table table2 --method base --seed 0     # one run by hand
    repro run --paper hu19 --table table2                            # the whole grid, resumable
    repro status                                                     # what each grid still needs, est. time
    repro report                                                     # reports/ from committed results
    repro mlm                                                        # the MLM of the text backbone (hu19 CBERT)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.config import check_profile, load_params, paper_profile
from common.errors import ConfigError, ReproError
from common.run.allocator import keep_freed_memory


def _profile(args, params) -> str:
    return check_profile(args.profile or params["base"]["profile"], "--profile")


def _tables(args, params, profile) -> list[str]:
    tables = list(paper_profile(params, args.paper, profile))
    if args.table:
        if args.table not in tables:
            raise ReproError(f"--table: unknown table {args.table!r} for {args.paper} profile {profile!r}; "
                             f"known tables: {tables}")
        return [args.table]
    return tables


def cmd_prepare(args) -> int:
    from pipelines.grid import prepare

    params = load_params(args.params)
    profile = _profile(args, params)
    paths = prepare(params, args.paper, profile, _tables(args, params, profile))
    print(f"prepared {len(paths)} split index file(s) for {args.paper} ({profile})")
    return 0


def cmd_run(args) -> int:
    from pipelines.grid import run_tables

    params = load_params(args.params)
    profile = _profile(args, params)
    report = run_tables(params, args.paper, profile, _tables(args, params, profile), setting=args.setting,
                        method=args.method, seed=args.seed, workers=args.workers,
                        replace_changed=args.replace_changed, dry_run=args.dry_run, allow_dirty=args.allow_dirty,
                        replace_dirty=args.replace_dirty)
    if args.dry_run:
        for label in report.done:
            print(f"would run {label}")
        print(f"{args.paper} ({profile}): {len(report.done)} run(s) would run, {len(report.skipped)} skipped "
              "(up to date); dry run, nothing ran")
        return 0
    print(f"{args.paper} ({profile}): {len(report.done)} run(s) done, {len(report.skipped)} skipped "
          f"(up to date), {len(report.failed)} failed")
    for label, error in report.failed.items():
        print(f"FAILED {label}: {error.strip().splitlines()[-1]}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_status(args) -> int:
    """Per table and cell: finished, missing and stale runs, and a rough time estimate."""
    from pipelines.grid import grid_status

    params = load_params(args.params)
    profile = _profile(args, params)
    cells = grid_status(params, args.paper, profile, _tables(args, params, profile))
    workers = int(params["base"]["runner"].get("workers", 1))

    def hours(seconds):
        return "?" if seconds is None else f"{seconds / 3600:.1f}"

    print(f"{args.paper} ({profile}): runs per cell; estimates (core-hours) from the median wall time of "
          "finished runs of the same method (* from its stale or archived runs, when none of the current config "
          "has finished)")
    print(f"{'table':8} {'setting':16} {'method':18} {'done':>5} {'missing':>8} {'stale':>6} {'est. h':>7}")
    for c in cells:
        est = hours(c.est_s) + ("*" if c.est_from_stale else "")
        print(f"{c.table:8} {c.setting:16} {c.method:18} {c.done:5d} {c.missing:8d} {c.stale:6d} {est:>7}")
    from common.config import table_config
    for table in _tables(args, params, profile):      # settings the profile cannot run (the report's NOT RUN rows)
        for setting, reason in (table_config(params, args.paper, profile, table).get("not_run") or {}).items():
            print(f"{table:8} {setting:16} {'(every method)':18} NOT RUN: {reason}")
    for table in dict.fromkeys(c.table for c in cells):
        mine = [c for c in cells if c.table == table]
        todo = sum(c.missing + c.stale for c in mine)
        known = [c.est_s for c in mine if c.est_s is not None]
        unknown = sum(c.missing + c.stale for c in mine if c.est_s is None)
        guessed = sum(c.est_s for c in mine if c.est_from_stale)
        print(f"{table}: {sum(c.done for c in mine)} done, {todo} to run; about {hours(sum(known))} core-hours "
              f"(~{hours(sum(known) / max(workers, 1))} h on {workers} worker(s))"
              + (f", {hours(guessed)} of them from stale or archived runs' times (another config: a guide only)"
                 if guessed else "")
              + (f", plus {unknown} run(s) of methods with no finished run yet" if unknown else ""))
    return 0


def cmd_report(args) -> int:
    from pipelines.reports import write_reports

    params = load_params(args.params)
    profile = _profile(args, params)
    paths = write_reports(params, profile, log_tables=not args.no_tracking)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_sync(args) -> int:
    from pipelines.grid import sync_tracking

    params = load_params(args.params)
    n = sync_tracking(params, _profile(args, params))
    print(f"logged {n} result(s) to MLflow ({params['base']['tracking_uri']})")
    return 0


def cmd_bench(args) -> int:
    from pipelines.papers import bench_suites
    params = load_params(args.params)
    profile = _profile(args, params)
    suites = bench_suites(args.paper)
    if args.suite not in suites:
        raise ConfigError(f"--suite: {args.paper} has no benchmark suite {args.suite!r}; "
                          f"expected one of {sorted(suites) or 'none'}")
    path = suites[args.suite](params, profile, args.repeats, Path(args.out))
    print(f"wrote {path}")
    return 0


def cmd_mlm(args) -> int:
    from pipelines.mlm_stage import build_mlm, publish_mlm_report

    params = load_params(args.params)
    profile = _profile(args, params)
    if args.write_pools:
        from common.io import write_json_atomic
        from pipelines.grid import text_dev_pools
        write_json_atomic(Path(args.write_pools), text_dev_pools(params, profile))
        print(f"wrote {args.write_pools}")
        return 0
    report = build_mlm(params, profile, overwrite=args.overwrite, say=lambda line: print(line, flush=True))
    out_dir = (params["mlm"]["profiles"][profile])["out_dir"]
    print(f"wrote {out_dir}: dev MLM loss {report['dev_loss_before']:.3f} -> {report['dev_loss_best']:.3f} "
          f"(step {report['step_best']}), {report['wall_s']:.0f} s, weights sha256 {report['weights_sha256'][:12]}")
    print(f"wrote {publish_mlm_report(out_dir, profile)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repro", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, table=True):
        p.add_argument("--paper", default="hu19")
        p.add_argument("--profile", help="smoke | cpu | paper (default: base.profile)")
        if table:
            p.add_argument("--table", help="one table (default: all of the paper's tables)")

    p = sub.add_parser("prepare", help="write split index files")
    common(p)
    p.set_defaults(fn=cmd_prepare)
    p = sub.add_parser("run", help="run missing results of a grid (finished ones are skipped)")
    common(p)
    p.add_argument("--setting")
    p.add_argument("--method")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="override base.runner.workers")
    p.add_argument("--replace-changed", action="store_true",
                   help="archive results whose config changed and run them again")
    p.add_argument("--replace-dirty", action="store_true",
                   help="archive finished results that uncommitted code made (git_sha <sha>-dirty) and run them "
                        "again from the committed code")
    p.add_argument("--dry-run", action="store_true", help="list what would run")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run a cpu/paper grid from uncommitted code; each result records code_diff_sha256 and the "
                        "diff is kept in <table>/code_diffs/ (smoke runs never need this)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("status", help="finished / missing / stale runs per cell, with time estimates")
    common(p)
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("report", help="aggregate committed results into reports/")
    p.add_argument("--profile")
    p.add_argument("--no-tracking", action="store_true", help="do not log table summaries to MLflow")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("sync-mlflow", help="log committed results missing from the MLflow store")
    p.add_argument("--profile")
    p.set_defaults(fn=cmd_sync)
    p = sub.add_parser("bench", help="meta-step overhead benchmark")
    p.add_argument("--paper", default="hu19")
    p.add_argument("--profile")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--suite", default="weighting",
                   help="a suite of the paper's BENCH_SUITES (hu19: weighting = ResNet meta step, Tables 2/4; "
                        "text = BERT-backbone steps, Tables 1/3)")
    p.add_argument("--out", default="reports/benchmarks")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("mlm", help="train the MLM of the text backbone (params mlm.profiles.<profile>)")
    p.add_argument("--profile")
    p.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    p.add_argument("--write-pools", metavar="PATH",
                   help="only write the dev pools the MLM corpus holds out (JSON) to PATH (dvc stage mlm_dev_pools)")
    p.set_defaults(fn=cmd_mlm)
    from pipelines.verify import add_verify_parser  # `repro verify`: re-run committed results here, compare
    add_verify_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()   # runs, benchmarks and the MLM stage allocate large tensors every step
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.fn(args)
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
