"""MLflow logging: one experiment per paper, one run per (table, setting, method, seed).

Reports are built from committed result files; MLflow is for browsing. `sync_results` logs any
committed result the store does not have yet (e.g. after a fresh clone), keyed by a `result_id`
tag, so logging is idempotent. Tracking URI "none" disables logging.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger("repro.tracking")


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


class Tracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.enabled = uri.lower() != "none"
        self._mlflow = None

    @property
    def mlflow(self):
        if self._mlflow is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            logging.getLogger("alembic").setLevel(logging.WARNING)
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            self._mlflow = mlflow
        return self._mlflow

    def _existing_ids(self, paper: str) -> set[str]:
        mlflow = self.mlflow
        exp = mlflow.get_experiment_by_name(paper)
        if exp is None:
            return set()
        runs = mlflow.search_runs([exp.experiment_id], output_format="list", max_results=50000)
        return {r.data.tags.get("result_id") for r in runs}

    def log_result(self, result: dict) -> None:
        if not self.enabled:
            return
        try:
            self._log(result)
        except Exception as exc:  # tracking must never lose or fail a finished run
            log.warning("MLflow logging failed for %s: %s", result_id(result), exc)

    def _log(self, result: dict) -> None:
        mlflow = self.mlflow
        mlflow.set_experiment(result["paper"])
        tags = {k: str(result[k]) for k in ("paper", "table", "setting", "method", "seed", "profile", "git_sha",
                                            "config_hash")}
        tags.update({"stage": "run", "result_id": result_id(result)})
        if result.get("diverged"):
            tags["diverged_epoch"] = str(result["diverged"]["epoch"])
        name = f"{result['table']}/{result['setting']}/{result['method']}/seed{result['seed']}"
        with mlflow.start_run(run_name=name, tags=tags):
            mlflow.log_params(_flatten(result.get("config", {})))
            for step, row in enumerate(result.get("history", []), start=1):
                metrics = {f"{row['phase']}_{k}": v for k, v in row.items()
                           if k not in ("phase", "epoch") and isinstance(v, (int, float))}
                mlflow.log_metrics(metrics, step=step)
            mlflow.log_metrics({k: float(v) for k, v in result["metrics"].items() if isinstance(v, (int, float))})
            mlflow.log_metric("wall_s", float(result["wall_s"]))

    def sync_results(self, results: Iterable[dict]) -> int:
        if not self.enabled:
            return 0
        results = list(results)
        logged = 0
        for paper in sorted({r["paper"] for r in results}):
            have = self._existing_ids(paper)
            for r in results:
                if r["paper"] == paper and result_id(r) not in have:
                    self.log_result(r)
                    logged += 1
        return logged

    def log_table(self, paper: str, table: str, profile: str, cells: list[dict], artifacts: list[Path]) -> None:
        """One MLflow run per table: per-cell mean/std/n as metrics, verdicts as tags, report as artifact."""
        if not self.enabled:
            return
        try:
            mlflow = self.mlflow
            mlflow.set_experiment(paper)
            with mlflow.start_run(run_name=f"{table} summary ({profile})",
                                  tags={"paper": paper, "table": table, "profile": profile, "stage": "aggregate"}):
                for cell in cells:
                    stem = f"{cell['setting']}.{cell['method']}"
                    if cell.get("n"):
                        mlflow.log_metrics({f"{stem}.mean": cell["mean"], f"{stem}.std": cell["std"],
                                            f"{stem}.n": cell["n"]})
                    mlflow.set_tag(f"verdict.{stem}", cell.get("verdict", ""))
                for path in artifacts:
                    if Path(path).exists():
                        mlflow.log_artifact(str(path))
        except Exception as exc:
            log.warning("MLflow table logging failed for %s/%s: %s", paper, table, exc)
