"""dvc.yaml lists what each stage's code really imports (and nothing of other papers).

A stage's code is the closure of its entry modules over project imports, lazy ones (inside
functions) included. Exempt: the run infrastructure (`common.run`) and `pipelines`, which decide
where and whether a run executes but not its numbers (a result is keyed by its config hash), so
editing them does not invalidate any paper's stages.
"""
import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

EXEMPT = ("common.run", "pipelines")


def module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in ("common", "papers", "pipelines") and module_file(m)}


def closure(entries: list[str]) -> set[Path]:
    seen, todo = set(), list(entries)
    while todo:
        module = todo.pop()
        if module in seen or module.startswith(EXEMPT):
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]   # package __init__ files run too
        todo += imports_of(module_file(module))
    return {module_file(m).relative_to(REPO) for m in seen if not docstring_only(module_file(m))}


def docstring_only(path: Path) -> bool:
    """A package __init__ holding at most a docstring runs no code worth a dependency."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                              for n in body)


def stage_entries(name: str) -> list[str]:
    """Entry modules of a stage, from its name (dvc.yaml's naming convention)."""
    if name.startswith(("prepare_", "run_")):
        paper = name.split("_")[1]
        return [f"papers.{paper}.tables"]
    if name == "mlm":
        return ["common.text.mlm"]             # its dev pools come in through mlm_dev_pools' output
    if name == "mlm_dev_pools":
        from pipelines.papers import PAPER_MODULES
        return list(PAPER_MODULES.values())
    if name.startswith("bench_"):
        paper, _, suite = name[len("bench_"):].partition("_")
        return [f"papers.{paper}.bench_text" if suite == "text" else f"papers.{paper}.bench"]
    pytest.fail(f"dvc.yaml stage {name!r}: no entry modules known to this test; add them to stage_entries")


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", [n for n in stages() if n != "report"])
def test_stage_deps_cover_every_imported_file(name):
    deps = [Path(d) for d in stages()[name].get("deps", [])]
    missing = [str(f) for f in sorted(closure(stage_entries(name)))
               if not any(f == d or d in f.parents for d in deps)]
    assert not missing, f"dvc.yaml stage {name}: deps miss {missing}"


@pytest.mark.parametrize("name", [n for n in stages() if n.startswith(("prepare_", "run_", "bench_"))])
def test_stage_deps_name_no_other_paper_and_no_infrastructure(name):
    paper = name.split("_")[1]
    for dep in stages()[name].get("deps", []):
        assert not (dep.startswith("papers/") and not dep.startswith(f"papers/{paper}")), (name, dep)
        assert dep.rstrip("/") not in ("common", "common/run", "pipelines"), (name, dep)
