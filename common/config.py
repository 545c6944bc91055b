"""params.yaml loading: the `base` group plus one group per paper, resolved for one profile.

Each paper group has `profiles.<profile>.<table>` blocks that spell out every setting of a
table for that profile (no inheritance beyond a table's `settings` overrides), so one run's
configuration is readable in one place.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError

PROFILES = ("smoke", "cpu", "paper")
DEFAULT_PARAMS = Path("params.yaml")

BASE_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "profile": str,
    "data_mirror": (str, type(None)),
    "tracking_uri": str,
    "results_dir": str,
    "splits_dir": str,
    "runner": dict,
}
RUNNER_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "backend": str,
    "workers": int,
    "threads_per_worker": int,
}
# Optional runner keys (type, default); read by the ray backend, accepted (and ignored) by local.
RUNNER_OPTIONAL: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "ray_address": (str, "auto"),      # "auto" | "local" (start one) | "host:port" | "ray://host:port"
    "num_cpus": ((int, float), 1),     # Ray resources reserved by each run
    "num_gpus": ((int, float), 0),
}
RUNNER_BACKENDS = ("local", "ray")


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


def check_block(block: dict, types: dict, where: str, required=None) -> None:
    """Validate one config mapping: no keys beyond `types` ({key: type or tuple of types}), every
    `required` key present (None: all of them), every present value of its type. A float accepts an
    int; a bool never counts as an int or a float. Errors name the key path and what was expected."""
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(block).__name__}")
    unknown = sorted(set(block) - set(types))
    if unknown:  # checked first: a misspelt key is the likelier cause of a "missing" one
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(types)}")
    for key in types if required is None else required:
        if key not in block:
            raise ConfigError(f"{where}.{key}: missing (expected {_type_names(types[key])})")
    for key, expected in types.items():
        if key in block:
            _check_value(block[key], expected, f"{where}.{key}")


def _check_value(value, expected, where: str) -> None:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    accepted = tuple(t for k in kinds for t in ((int, float) if k is float else (k,)))
    if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in kinds):
        raise ConfigError(f"{where}: expected {_type_names(expected)}, got {type(value).__name__} {value!r}"
                          f"{number_as_text_hint(value)}")


def number_as_text_hint(value) -> str:
    """For a string that is a number YAML left as text (`1e-3`, `"2"`): how to write it instead."""
    if not isinstance(value, str) or not any(ch.isdigit() for ch in value):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    if "e" in value.lower():
        return (f" (YAML reads {value} as text: write 0.001-style decimals, or exponents with a dot and a "
                "signed exponent such as 1.0e-3)")
    return f" (a quoted number is text in YAML: write {value} without quotes)"


def _type_names(expected) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate_base(base: dict, where: str = "params.yaml") -> None:
    check_block(base, BASE_SCHEMA, f"{where}: base")
    check_profile(base["profile"], f"{where}: base.profile")
    check_block(base["runner"], {**RUNNER_SCHEMA, **{k: t for k, (t, _default) in RUNNER_OPTIONAL.items()}},
                f"{where}: base.runner", required=tuple(RUNNER_SCHEMA))
    runner = runner_options(base["runner"])
    if runner["backend"] not in RUNNER_BACKENDS:
        raise ConfigError(f"{where}: base.runner.backend: unknown backend {runner['backend']!r}; "
                          f"expected one of {list(RUNNER_BACKENDS)}")
    if runner["workers"] < 1:
        raise ConfigError(f"{where}: base.runner.workers: expected >= 1, got {runner['workers']}")
    for key in ("num_cpus", "num_gpus"):
        if runner[key] < 0:
            raise ConfigError(f"{where}: base.runner.{key}: expected a number >= 0, got {runner[key]}")
    if not runner["ray_address"].strip():
        raise ConfigError(f"{where}: base.runner.ray_address: expected 'auto', 'local', 'host:port' or "
                          "'ray://host:port', got an empty string")


def runner_options(runner: dict) -> dict[str, Any]:
    """`base.runner` with the defaults of the optional keys filled in."""
    return {**{key: default for key, (_type, default) in RUNNER_OPTIONAL.items()}, **runner}


def check_profile(profile: str, where: str = "profile") -> str:
    if profile not in PROFILES:
        raise ConfigError(f"{where}: unknown profile {profile!r}; expected one of {list(PROFILES)}")
    return profile


def paper_profile(params: dict, paper: str, profile: str) -> dict[str, Any]:
    """The `<paper>.profiles.<profile>` block: one mapping per table."""
    check_profile(profile)
    if paper not in params:
        known = sorted(k for k in params if k != "base")
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


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a run configuration (canonical JSON, sorted keys)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_mirror(base: dict) -> str | None:
    """Mirror root: `base.data_mirror` if set, else $REPRO_DATA_MIRROR, else None (download)."""
    return base.get("data_mirror") or os.environ.get("REPRO_DATA_MIRROR") or None
