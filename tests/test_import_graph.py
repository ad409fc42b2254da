"""The import graph of the project's packages, built from their source with `ast`.

Rules (docs/architecture.md): imports flow one way, model_zoo -> parallel -> pretrain (a package may
import the ones before it, never the ones after it), data_pipeline stands alone, the config core
(configcore) is under all of them and imports none, and no module takes
part in an import cycle. Imports inside functions count: hiding a cycle in a function is how cycles
survive. So do imports under `if TYPE_CHECKING:`: a cycle of annotations is still two modules that
need each other, and the first annotation evaluated at runtime turns it into an import error.
benchmarks/ and tests/ are in the graph too: each may import the packages, never the other (what
both need lives in a package), and no file edits sys.path (the project is installed with
`pip install -e`, so scripts import the packages from any folder).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("configcore", "model_zoo", "parallel", "pretrain", "data_pipeline")
# what each package may import among them (besides itself): every package may import the config
# core (one error type, one Hydra compose), which imports none of them
ALLOWED = {
    "configcore": set(),
    "model_zoo": {"configcore"},
    "parallel": {"configcore", "model_zoo"},
    "pretrain": {"configcore", "model_zoo", "parallel"},
    "data_pipeline": {"configcore"},
}
# the scripts: benchmarks and tests may import every package, never each other
SCRIPTS = ("benchmarks", "tests")
ALLOWED.update({folder: set(PACKAGES) for folder in SCRIPTS})
# The one front door: `pretrain data ...` hands its arguments to the pipeline's own CLI. Nothing
# else in pretrain/ imports data_pipeline/ (token data is read through its metadata file format).
ALLOWED_EDGES = {("pretrain.cli", "data_pipeline.cli")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES + SCRIPTS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mods[module_name(path)] = path
    return mods


def imported_names(name: str, path: Path) -> set[str]:
    """Dotted names a module imports: `import a.b` -> a.b; `from a import b` -> a.b and a."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def build_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name that is not a module resolves to the
    module that defines it, i.e. its longest existing prefix)."""
    mods = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for target in imported_names(name, path):
            parts = target.split(".")
            while parts and ".".join(parts) not in mods:
                parts.pop()
            if parts and ".".join(parts) != name:
                edges.add(".".join(parts))
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return build_graph()


def test_graph_sees_the_packages(graph):
    # a broken parser would see no edges and pass everything: check a few edges we know exist
    assert {"model_zoo", "parallel", "pretrain", "data_pipeline"} <= {
        m.split(".")[0] for m in graph
    }
    assert any(t.startswith("model_zoo") for t in graph["parallel.engine"])
    assert any(t.startswith("parallel") for t in graph["pretrain.cli"] | graph["pretrain.train"])
    assert (
        "configcore" in graph["data_pipeline.config"] and "configcore" in graph["parallel.config"]
    )


def test_graph_sees_benchmarks_tests_and_type_checking_imports(graph, tmp_path):
    assert "data_pipeline.sample_text" in graph["benchmarks.minhash_bench"]
    assert "pretrain.callbacks" in graph["tests.pretrain.test_trainer"]
    planted = tmp_path / "m.py"
    planted.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a.b\n")
    assert "a.b" in imported_names("m", planted)


def test_no_sys_path_edits():
    edits = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                edits.append(f"{name}:{node.lineno}")
    assert not edits, "sys.path used (install the project with pip install -e instead):\n" + (
        "\n".join(edits)
    )


def test_no_upward_imports(graph):
    bad = []
    for mod, targets in graph.items():
        pkg = mod.split(".")[0]
        for t in targets:
            tpkg = t.split(".")[0]
            if tpkg != pkg and tpkg not in ALLOWED[pkg] and (mod, t) not in ALLOWED_EDGES:
                bad.append(f"{mod} imports {t}")
    assert not bad, (
        "imports against the rules (model_zoo -> parallel -> pretrain; benchmarks and tests "
        "import the packages, never each other):\n" + "\n".join(sorted(bad))
    )


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(planted) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_every_package_is_installed():
    """pyproject's package list names every package the graph holds: an editable install maps
    only the listed ones, so a package left out imports from the repository root and nowhere
    else (configcore was, for a while: `pretrain` failed outside the checkout)."""
    import re

    # [tool.setuptools.packages.find] include = [...] (read as text: tomllib is Python 3.11+)
    line = re.search(r"^include = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    include = [x.strip().strip('"') for x in line.group(1).split(",")]
    assert sorted(p.rstrip("*") for p in include) == sorted(PACKAGES)
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert on_disk == set(PACKAGES), on_disk


def test_config_errors_are_imported_from_the_config_core():
    """One error type, imported from where it is defined: a re-export (model_zoo.config once
    passed configcore's ConfigError and need on) is a second name for a newcomer to follow."""
    defined_in_core = {"ConfigError", "need"}
    offenders = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                taken = defined_in_core & {alias.name for alias in node.names}
                if taken and node.module.split(".")[0] in set(PACKAGES) - {"configcore"}:
                    offenders.append(
                        f"{name}: from {node.module} import {', '.join(sorted(taken))}"
                    )
    assert not offenders, "import these from configcore:\n" + "\n".join(offenders)
