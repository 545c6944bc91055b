"""The paper registry and contract: the pipelines' only link to papers/.

A paper is one package `papers/<id>/` whose `tables` module satisfies `PaperTables` (checked by
`tests/integration/test_paper_contract.py` for every registered paper). Adding a paper is one
line in `PAPER_MODULES` (see docs/adding_a_paper.md); nothing else in pipelines/ names a paper.

Optional hooks (module attributes; absent = the default in brackets):

* `report_sections`: a function (table, runs, published) -> list[str], or its "module:function"
  reference: markdown lines a paper adds after a table's orderings (hu19: its divergence note and
  Figure 2) [none];
* `BENCH_SUITES: {suite: "module:function"}`, each function (params, profile, repeats, out_dir) -> Path:
  `repro bench` suites, imported only when run (so bench code is no dependency of the run stages) [none];
* `run_cost(method) -> int`: cost rank of a method, cheaper runs first within a seed [all equal];
* `MLM_CORPUS`: the text data sets whose train pools the shared backbone MLM learns from, with the
  dev/test rows of every table held out (`repro mlm`) [none].
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from common.errors import ConfigError

PAPER_MODULES = {
    "hu19": "papers.hu19.tables",
    "mmel": "papers.mmel.tables",
    "metaaugment": "papers.metaaugment.tables",
    "influence": "papers.influence.tables",
}
ALL_PAPERS = ("hu19", "mmel", "metaaugment", "influence")   # the scoreboard's rows, registered or not yet
PAPERS_DIR = Path("papers")   # papers/<p>/{paper_tables.yaml,README.md}, relative to the repo root `repro` runs in


@runtime_checkable
class PaperTables(Protocol):
    """What a paper's `tables` module exposes (see the module docstring for the optional hooks)."""

    PAPER: str
    TABLES: Mapping[str, Any]          # table -> definition with .settings, .methods, .title

    def validate_table_config(self, table: str, cfg: dict, where: str) -> None:
        """Raise ConfigError naming `where.<key>` for a bad params block, before any run."""

    def run_configs(self, table: str, cfg: dict, profile: str) -> list[dict]:
        """Fully resolved config of every (setting, method, seed) run of a table."""

    def resolve_requirements(self, config: dict, deps: list[dict]) -> dict:
        """A config with `requires`, resolved from the results it depends on."""

    def prepare_split(self, config: dict, mirror: str | None, split_path) -> None:
        """Write (or check) the split index file of one run."""

    def execute(self, config: dict, mirror: str | None, on_epoch=None, split_path=None, device: str = "auto",
                checkpoint_path=None) -> dict:
        """Run one config; returns metrics and history (the result file's body)."""


def paper_module(paper: str) -> PaperTables:
    if paper not in PAPER_MODULES:
        raise ConfigError(f"paper: unknown paper {paper!r}; known papers: {sorted(PAPER_MODULES)}")
    module = importlib.import_module(PAPER_MODULES[paper])
    if not isinstance(module, PaperTables):
        missing = [name for name in ("PAPER", "TABLES", "validate_table_config", "run_configs",
                                     "resolve_requirements", "prepare_split", "execute") if not hasattr(module, name)]
        raise ConfigError(f"{PAPER_MODULES[paper]}: does not implement the paper contract (missing {missing})")
    return module


def hook(paper: str, name: str, default: Any = None) -> Any:
    """An optional hook of a registered paper (module docstring), or `default`. A hook given as a
    "module:function" string is imported on first call, so the code behind it (report sections,
    benchmarks) is not imported by, nor a DVC dependency of, the paper's run stages."""
    value = getattr(paper_module(paper), name, default)
    return lazy_reference(value) if isinstance(value, str) else value


def lazy_reference(ref: str) -> Callable:
    """A callable that imports "module:function" when first called, then calls it."""
    module, _, function = ref.partition(":")
    if not module or not function:
        raise ConfigError(f"hook reference {ref!r}: expected 'module:function'")

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), function)(*args, **kwargs)
    return call


def bench_suites(paper: str) -> Mapping[str, Callable]:
    """{suite: function} of a paper's BENCH_SUITES hook, each imported on first use."""
    return {suite: lazy_reference(ref) for suite, ref in hook(paper, "BENCH_SUITES", {}).items()}
