"""Which module implements each paper's tables (the runner's only link to papers/)."""
from __future__ import annotations

import importlib
from types import ModuleType

from common.errors import ConfigError

PAPER_MODULES = {
    "hu19": "papers.hu19.tables",
}


def paper_module(paper: str) -> ModuleType:
    if paper not in PAPER_MODULES:
        raise ConfigError(f"paper: unknown paper {paper!r}; known papers: {sorted(PAPER_MODULES)}")
    return importlib.import_module(PAPER_MODULES[paper])
