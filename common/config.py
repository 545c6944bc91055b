"""params.yaml loading: the `base` group plus one group per paper, resolved for one profile.

Each paper group has `profiles.<profile>.<table>` blocks that spell out every setting of a
table for that profile (no inheritance beyond a table's `settings` overrides), so one run's
configuration is readable in one place. Blocks are validated as typed models
(`common.config_models`: `base` here, each paper's tables in its `tables` module), and
`config_hash` is the cache key of a run config (see HASH_OMITTED_DEFAULTS).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from common.config_models import (  # noqa: F401  (PROFILES, RUNNER_BACKENDS, number_as_text_hint: re-exported)
    PROFILES,
    RUNNER_BACKENDS,
    RUNNER_DEFAULTS,
    Base,
    number_as_text_hint,
    parse,
)
from common.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
SHARED_GROUPS = ("base", "mlm")      # top-level params groups that are not papers

# Run-config keys whose default is left out of the config hash (`without_omitted_defaults`): an
# option added to the run config after results were committed goes here with its default, so runs
# that keep the default keep their hash. Keys are top-level run-config keys or dotted paths into sub-blocks ("a.b"); a
# key that older results already record with this value must never be added (their hashes would
# change: tests/integration/test_config_models.py checks every committed result).
HASH_OMITTED_DEFAULTS: dict[str, Any] = {
    "pooling": "cls",          # text classifier pooling (common.text.classifier), added with `pooling: mean`
    "test_sample": None,       # class-stratified test subset (common.data.subsample.SplitSpec)
}


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the repository root or pass --params)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict) or "base" not in params:
        raise ConfigError(f"{path}: expected a mapping with a `base` group")
    validate_base(params["base"], str(path))
    return params


def validate_base(base: dict, where: str = "params.yaml") -> Base:
    """The `base` group as a typed `Base` (ConfigError naming the key otherwise)."""
    return parse(Base, base, f"{where}: base")


def runner_options(runner: dict) -> dict[str, Any]:
    """`base.runner` with the defaults of the optional keys filled in."""
    return {**RUNNER_DEFAULTS, **runner}


def check_profile(profile: str, where: str = "profile") -> str:
    if profile not in PROFILES:
        raise ConfigError(f"{where}: unknown profile {profile!r}; expected one of {list(PROFILES)}")
    return profile


def paper_profile(params: dict, paper: str, profile: str) -> dict[str, Any]:
    """The `<paper>.profiles.<profile>` block: one mapping per table."""
    check_profile(profile)
    if paper not in params or paper in SHARED_GROUPS:
        known = sorted(k for k in params if k not in SHARED_GROUPS)
        raise ConfigError(f"params.yaml: unknown paper {paper!r}; known papers: {known}")
    profiles = params[paper].get("profiles", {})
    if profile not in profiles:
        raise ConfigError(f"params.yaml: {paper}.profiles has no {profile!r} block; has {sorted(profiles)}")
    return profiles[profile]


def table_config(params: dict, paper: str, profile: str, table: str) -> dict[str, Any]:
    tables = paper_profile(params, paper, profile)
    if table not in tables:
        raise ConfigError(f"params.yaml: unknown table {table!r} for {paper} profile {profile!r}; "
                          f"known tables: {sorted(tables)}")
    return copy.deepcopy(tables[table])


def _is_default(value, default) -> bool:
    return value is None if default is None else (type(value) is type(default) and value == default)


def without_omitted_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without the HASH_OMITTED_DEFAULTS keys that hold their default (a new dict; `config`
    and its sub-blocks are never modified). Run configs are built through this, so a stored config is
    exactly what its hash covers."""
    out = dict(config)
    for path, default in HASH_OMITTED_DEFAULTS.items():
        *parents, key = path.split(".")
        block = out
        for part in parents:
            if not isinstance(block.get(part), dict):
                break
            block[part] = dict(block[part])
            block = block[part]
        else:
            if key in block and _is_default(block[key], default):
                del block[key]
    return out


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a run configuration (canonical JSON, sorted keys), with the options of
    HASH_OMITTED_DEFAULTS left out while they hold their default."""
    blob = json.dumps(without_omitted_defaults(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_mirror(base: dict) -> str | None:
    """Mirror root: `base.data_mirror` if set, else $REPRO_DATA_MIRROR, else None (download)."""
    return base.get("data_mirror") or os.environ.get("REPRO_DATA_MIRROR") or None
