"""MLflow logging: one experiment per paper; per table one summary run with the table's runs under it.

Reports are built from committed result files; MLflow is for browsing. Layout of a paper's experiment
(tag `mlflow.experimentKind` = `custom_model_development`, the kind MLflow 3's UI calls "Machine
learning", so the experiment's page is its training runs, not the GenAI overview):

- per (table, profile) one summary run (tags `stage=aggregate`, `summary_key=<paper>/<table>@<profile>`),
  created by whichever comes first (a finished run, `sync_results` or the report) and updated in
  place by every report (per-cell metrics, verdict tags, `git_sha` of the reporting code, artifacts);
- per result one run (tag `result_id`) that is the summary's child (`mlflow.parentRunId`), with the
  result's own start and end time (start = `finished_at` - `wall_s`), so Created and Duration are the
  training's, not the logging's.

`sync_results` (a fresh clone, or a store written by older code) is idempotent by `result_id`: a
stored run that is finished with the result's times is kept (re-parented if needed); any other run
with that id (half-logged, or logged with the sync time as its start, which MLflow cannot change) is
deleted (MLflow's trash; `mlflow gc` purges it) and logged again. Old summaries (`stage=aggregate`
without `summary_key`, one per report) are deleted when the table's summary run is created.
Tracking never fails or loses a finished run: errors are logged as warnings. URI "none" disables it.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("repro.tracking")

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"   # read by MLflow 3's UI (server/js), written by its kind selector
EXPERIMENT_KIND = "custom_model_development"    # "Machine learning": the experiment opens on its runs
PARENT_TAG = "mlflow.parentRunId"               # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID: nests a run
SUMMARY_KEY_TAG = "summary_key"
RESULT_ID_TAG = "result_id"
FINISHED = "FINISHED"


def _numbers(d: dict, prefix: str = "") -> list[tuple[str, float]]:
    """The numeric values of a (nested) dict as (dotted key, float), e.g. mmel's {"dev": {"mcc": 41.0}} ->
    [("dev.mcc", 41.0)]; strings, lists and None are left out."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)):
            out.append((f"{prefix}{k}", float(v)))
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def result_id(result: dict) -> str:
    return (f"{result['paper']}/{result['table']}/{result['setting']}/{result['method']}/seed{result['seed']}"
            f"@{result['profile']}:{result['config_hash']}")


def summary_key(paper: str, table: str, profile: str) -> str:
    return f"{paper}/{table}@{profile}"


def run_times(result: dict) -> tuple[int, int]:
    """(start, end) of the run in ms since the epoch: end = `finished_at` (ISO 8601 with a timezone),
    start = end - `wall_s`."""
    end = dt.datetime.fromisoformat(str(result["finished_at"]))
    if end.tzinfo is None:
        raise ValueError(f"finished_at {result['finished_at']!r} has no timezone")
    end_ms = round(end.timestamp() * 1000)
    return end_ms - round(float(result["wall_s"]) * 1000), end_ms


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Parent:
    run_id: str
    end_time: int      # as stored
    want_end: int      # the latest end of a child logged under it (stored by `_flush_parents`)


# HTTP tracking servers: few, short retries, so a run that finishes while the server is down logs a
# warning within seconds (tracking never fails a run); set the variables yourself to override.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class Tracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.enabled = uri.lower() != "none"
        self._client = None
        self._experiments: dict[str, str] = {}
        self._parents: dict[str, _Parent] = {}
        self._git_sha: str | None = None

    @property
    def client(self):
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            if self.uri.startswith(("http://", "https://")):   # a down server: a warning in seconds, not minutes
                for key, value in HTTP_DEFAULTS.items():      # (MLflow's own: 7 retries, backoff 2, 120 s timeout)
                    os.environ.setdefault(key, value)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def git_sha(self) -> str:
        """The sha of the code that is logging (what a report's summary runs record)."""
        if self._git_sha is None:
            from common.run.job import git_sha

            self._git_sha = git_sha()
        return self._git_sha

    # -- store layout ------------------------------------------------------------------------------

    def _experiment_id(self, paper: str) -> str:
        """The paper's experiment (created if absent), tagged with the kind that opens it on its runs."""
        if paper not in self._experiments:
            client = self.client
            exp = client.get_experiment_by_name(paper)
            if exp is None:
                from mlflow.exceptions import MlflowException

                try:
                    self._experiments[paper] = client.create_experiment(
                        paper, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
                    return self._experiments[paper]
                except MlflowException:          # created meanwhile by another process
                    exp = client.get_experiment_by_name(paper)
                    if exp is None:
                        raise
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            self._experiments[paper] = exp.experiment_id
        return self._experiments[paper]

    def _search(self, experiment_id: str, filter_string: str = "") -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def _parent(self, experiment_id: str, paper: str, table: str, profile: str, start_time: int | None = None,
                end_time: int | None = None, runs: list | None = None) -> str:
        """The id of the (paper, table, profile) summary run; created (with `start_time`/`end_time`,
        default now) if the store has none. With several (concurrent creation), the earliest."""
        key = summary_key(paper, table, profile)
        if key not in self._parents:
            if runs is None:
                runs = self._search(experiment_id, f"tags.{SUMMARY_KEY_TAG} = '{key}'")
            found = [r for r in runs if r.data.tags.get(SUMMARY_KEY_TAG) == key]
            if found:
                run = min(found, key=lambda r: (r.info.start_time, r.info.run_id))
                end = run.info.end_time or 0
                self._parents[key] = _Parent(run.info.run_id, end, end)
            else:
                self._parents[key] = self._create_parent(experiment_id, paper, table, profile, start_time,
                                                         end_time, runs)
        return self._parents[key].run_id

    def _create_parent(self, experiment_id, paper, table, profile, start_time, end_time, runs) -> _Parent:
        client = self.client
        start = start_time if start_time is not None else _now_ms()
        end = max(end_time if end_time is not None else start, start)
        name = f"{table} summary ({profile})"
        run = client.create_run(experiment_id, start_time=start, run_name=name, tags={
            "paper": paper, "table": table, "profile": profile, "stage": "aggregate",
            SUMMARY_KEY_TAG: summary_key(paper, table, profile)})
        client.set_terminated(run.info.run_id, FINISHED, end_time=end)
        # the summaries older code added on every report (no summary_key) are replaced by this one
        for r in runs if runs is not None else self._search(experiment_id, "tags.stage = 'aggregate'"):
            tags = r.data.tags
            if (tags.get("stage") == "aggregate" and SUMMARY_KEY_TAG not in tags and tags.get("paper") == paper
                    and tags.get("table") == table and tags.get("profile") == profile):
                client.delete_run(r.info.run_id)
        return _Parent(run.info.run_id, end, end)

    def _flush_parents(self) -> None:
        """Stretch each summary run to end with its latest child (its Duration: the table's runs)."""
        for parent in self._parents.values():
            if parent.want_end > parent.end_time:
                self.client.set_terminated(parent.run_id, FINISHED, end_time=parent.want_end)
                parent.end_time = parent.want_end

    # -- per-result runs ---------------------------------------------------------------------------

    def _log_one(self, experiment_id: str, result: dict, stored: list, runs: list | None = None) -> bool:
        """Make the store hold exactly one current run for `result` (`stored`: its runs by result_id);
        True when it had to be logged."""
        start, end = run_times(result)
        parent = self._parent(experiment_id, result["paper"], result["table"], result["profile"], start, end, runs)
        client = self.client
        current = [r for r in stored if r.info.status == FINISHED and r.info.start_time == start
                   and r.info.end_time == end]
        keep = current[0] if current else None
        for r in stored:
            if r is not keep:
                client.delete_run(r.info.run_id)
        if keep is not None and keep.data.tags.get(PARENT_TAG) != parent:
            client.set_tag(keep.info.run_id, PARENT_TAG, parent)
        if keep is None:
            self._log_run(experiment_id, result, parent, start, end)
        p = self._parents[summary_key(result["paper"], result["table"], result["profile"])]
        p.want_end = max(p.want_end, end)
        return keep is None

    def _log_run(self, experiment_id: str, result: dict, parent: str, start: int, end: int) -> None:
        from mlflow.entities import Metric, Param

        client = self.client
        tags = {k: str(result[k]) for k in ("paper", "table", "setting", "method", "seed", "profile", "git_sha",
                                            "config_hash")}
        tags.update({"stage": "run", RESULT_ID_TAG: result_id(result), PARENT_TAG: parent})
        if result.get("diverged"):
            tags["diverged_epoch"] = str(result["diverged"]["epoch"])
        name = f"{result['table']}/{result['setting']}/{result['method']}/seed{result['seed']}"
        run_id = client.create_run(experiment_id, start_time=start, tags=tags, run_name=name).info.run_id
        try:
            params = [Param(k, v) for k, v in _flatten(result.get("config", {})).items()]
            metrics = []        # per-epoch values have no time of their own: all stamped with the run's end
            for step, row in enumerate(result.get("history", []), start=1):
                metrics += [Metric(f"{row['phase']}_{k}", v, end, step)
                            for k, v in _numbers({k: v for k, v in row.items() if k not in ("phase", "epoch")})]
            metrics += [Metric(k, v, end, 0) for k, v in _numbers(result["metrics"])]
            metrics.append(Metric("wall_s", float(result["wall_s"]), end, 0))
            client.log_batch(run_id, metrics=metrics, params=params)
            client.set_terminated(run_id, FINISHED, end_time=end)
        except Exception:
            try:                # no half-logged run that a later sync would take for this result
                client.delete_run(run_id)
            except Exception:
                pass
            raise

    def log_result(self, result: dict) -> bool:
        """Log one finished run under its table's summary run (created if absent); nothing when the
        store already has it. True when a run was logged."""
        if not self.enabled:
            return False
        try:
            exp = self._experiment_id(result["paper"])
            logged = self._log_one(exp, result, self._search(exp, f"tags.{RESULT_ID_TAG} = '{result_id(result)}'"))
            self._flush_parents()
            return logged
        except Exception as exc:  # tracking must never lose or fail a finished run
            log.warning("MLflow logging failed for %s: %s", result_id(result), exc)
            return False

    def sync_results(self, results: Iterable[dict]) -> int:
        """Log the results the store lacks and rebuild its stale runs (see the module doc); returns
        the number of runs logged (0 on a second call)."""
        if not self.enabled:
            return 0
        results = list(results)
        logged = 0
        for paper in sorted({r["paper"] for r in results}):
            exp = self._experiment_id(paper)
            runs = self._search(exp)
            stored: dict[str, list] = {}
            for r in runs:
                if r.data.tags.get("stage") == "run" and RESULT_ID_TAG in r.data.tags:
                    stored.setdefault(r.data.tags[RESULT_ID_TAG], []).append(r)
            mine = [r for r in results if r["paper"] == paper]
            for r in sorted(mine, key=_start_or_zero):   # a summary created here starts with its first run
                try:
                    logged += self._log_one(exp, r, stored.pop(result_id(r), []), runs)
                except Exception as exc:
                    log.warning("MLflow logging failed for %s: %s", result_id(r), exc)
            self._adopt_strays(exp, paper, self._search(exp))
            self._flush_parents()
        return logged

    def _adopt_strays(self, experiment_id: str, paper: str, runs: list) -> None:
        """Runs of a known table without its summary as parent (older code, superseded results) go
        under it; duplicate summaries of one key (concurrent creation) are deleted once emptied."""
        client = self.client
        for r in runs:
            tags = r.data.tags
            if tags.get("paper", paper) != paper or "table" not in tags or "profile" not in tags:
                continue
            parent = self._parents.get(summary_key(paper, tags["table"], tags["profile"]))
            if parent is None:
                continue
            if tags.get("stage") == "run" and tags.get(PARENT_TAG) != parent.run_id:
                client.set_tag(r.info.run_id, PARENT_TAG, parent.run_id)
            elif tags.get(SUMMARY_KEY_TAG) and r.info.run_id != parent.run_id:
                client.delete_run(r.info.run_id)

    # -- table summaries ---------------------------------------------------------------------------

    def log_table(self, paper: str, table: str, profile: str, cells: list[dict], artifacts: list[Path],
                  git_sha: str | None = None) -> None:
        """Update the table's summary run in place (created if absent): per-cell mean/std/n as metrics,
        verdicts as tags, `git_sha` (default: this checkout's) of the reporting code, report and figure
        as artifacts."""
        if not self.enabled:
            return
        try:
            from mlflow.entities import Metric, RunTag

            client = self.client
            run_id = self._parent(self._experiment_id(paper), paper, table, profile)
            now = _now_ms()
            metrics, tags = [], [RunTag("git_sha", git_sha or self.git_sha)]
            for cell in cells:
                stem = f"{cell['setting']}.{cell['method']}"
                n = cell.get("n") or 0
                metrics.append(Metric(f"{stem}.n", float(n), now, 0))
                if n:
                    metrics += [Metric(f"{stem}.mean", float(cell["mean"]), now, 0),
                                Metric(f"{stem}.std", float(cell["std"]), now, 0)]
                tags.append(RunTag(f"verdict.{stem}", str(cell.get("verdict", ""))[:5000]))
            client.log_batch(run_id, metrics=metrics, tags=tags)
            for path in artifacts:
                if Path(path).exists():
                    client.log_artifact(run_id, str(path))
        except Exception as exc:
            log.warning("MLflow table logging failed for %s/%s: %s", paper, table, exc)


def _start_or_zero(result: dict) -> int:
    try:
        return run_times(result)[0]
    except (KeyError, TypeError, ValueError):
        return 0
