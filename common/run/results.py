"""One small JSON per run: the unit of caching, resumption and reporting.

Layout: <results_dir>/<profile>/<paper>/<table>/<setting>/<method>/seed<k>.json.
Writes are atomic (temp file + rename, or hard link for create-only); a finished result is
never overwritten silently: an existing file with another config hash is a conflict.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import ResultConflictError

REQUIRED_KEYS = ("paper", "table", "setting", "method", "seed", "profile", "config_hash", "git_sha",
                 "metrics", "wall_s", "finished_at")






@dataclass(frozen=True)
class RunKey:
    paper: str
    table: str
    setting: str
    method: str
    seed: int

    def path(self, results_dir: Path, profile: str) -> Path:
        return (Path(results_dir) / profile / self.paper / self.table / self.setting / self.method
                / f"seed{self.seed}.json")

    def checkpoint_path(self, results_dir: Path, profile: str) -> Path:
        """Where an unfinished run keeps its checkpoint (beside, never inside, the results tree)."""
        return (Path(results_dir).parent / ".checkpoints" / profile / self.paper / self.table / self.setting
                / self.method / f"seed{self.seed}.pt")

    def label(self) -> str:
        return f"{self.paper}/{self.table}/{self.setting}/{self.method}/seed{self.seed}"


def read_result(path: Path) -> dict | None:
    """A finished result, or None if the file is absent. Unreadable files raise with the path."""
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultConflictError(f"{path}: corrupt result file ({exc}); move it away to re-run") from exc
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ResultConflictError(f"{path}: result file lacks keys {missing}; move it away to re-run")
    return result


def result_status(path: Path, config_hash: str) -> str:
    """'missing', 'done' (same config hash) or raises ResultConflictError (different hash)."""
    result = read_result(path)
    if result is None:
        return "missing"
    if result["config_hash"] != config_hash:
        raise ResultConflictError(
            f"{path}: exists with config_hash {result['config_hash']} but the current config hashes to "
            f"{config_hash}; the finished result is kept. Re-run with --replace-changed to archive it "
            "and run again, or restore the config that produced it")
    return "done"


def archive_result(path: Path) -> Path:
    """Move a finished result aside (<name>.superseded-<hash>.json) before re-running it. An archive of
    the same name that holds other bytes is never overwritten: the new one gets a suffix (-2, -3, ...)."""
    result = read_result(path)
    stem = f"{path.stem}.superseded-{result['config_hash']}"
    target, n = path.with_name(f"{stem}.json"), 1
    while target.exists() and target.read_bytes() != path.read_bytes():
        n += 1
        target = path.with_name(f"{stem}-{n}.json")
    os.replace(path, target)
    return target


def made_by_dirty_code(result: dict) -> bool:
    """A result whose git_sha says uncommitted code made it (`<sha>-dirty`, or `unknown` outside git)."""
    sha = str(result.get("git_sha", ""))
    return sha.endswith("-dirty") or sha == "unknown"


def collect_results(results_dir: Path, profile: str, paper: str, archived: bool = False) -> list[dict]:
    """The paper's current results in a profile; with `archived`, only the superseded ones instead
    (`archive_result`: moved aside by `--replace-changed`)."""
    root = Path(results_dir) / profile / paper
    return [read_result(p) for p in sorted(root.glob("*/*/*/seed*.json")) if (".superseded-" in p.name) == archived]
