"""The code's structure: one-way layers without import cycles, argument parsing, printing
and logging set-up in the CLI only, settings read in one place."""

from __future__ import annotations

import ast

import grimp
import pytest

from conftest import REPO

PACKAGES = ("promptmoe_cli", "ls_backend", "promptmoe_plugin")
#: The one settings loader and the command line read the environment; nothing else does.
ENV_READERS = {"ls_backend/config.py"}


def _sources() -> list[tuple[str, ast.Module]]:
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    return [(str(p.relative_to(REPO)), ast.parse(p.read_text(), str(p))) for p in files]


def _calls(tree: ast.Module) -> list[str]:
    """Dotted names of every call in ``tree`` (``print``, ``logging.basicConfig``, ...)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out.append(ast.unparse(node.func))
    return out


def _in_cli(path: str) -> bool:
    return path.startswith("promptmoe_cli/")


def test_only_the_cli_parses_arguments_prints_and_configures_logging():
    offenders = []
    for path, tree in _sources():
        if _in_cli(path):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                offenders.append(f"{path}: import argparse")
            if isinstance(node, ast.ImportFrom) and node.module == "argparse":
                offenders.append(f"{path}: from argparse import")
        offenders += [
            f"{path}: {c}()" for c in _calls(tree) if c in ("print", "logging.basicConfig")
        ]
    assert offenders == []


def test_settings_are_read_from_the_environment_in_one_place():
    offenders = []
    for path, tree in _sources():
        if _in_cli(path) or path in ENV_READERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and ast.unparse(node) in ("os.environ", "os.getenv"):
                offenders.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)


def test_the_import_graph_has_no_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("x.a", "x.b"), ("x.b", "x.c"), ("x.c", "x.a"), ("x.c", "x.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["x.a", "x.b", "x.c"]]


@pytest.mark.parametrize(
    "low, high",
    [
        ("promptmoe_plugin", "ls_backend"),
        ("promptmoe_plugin", "promptmoe_cli"),
        ("ls_backend", "promptmoe_cli"),
        ("promptmoe_plugin.sam", "promptmoe_plugin.refine"),
        ("promptmoe_plugin.sam", "promptmoe_plugin.smartsam"),
        ("promptmoe_plugin.refine", "promptmoe_plugin.eval"),
        ("promptmoe_plugin.router", "promptmoe_plugin.eval"),
        ("promptmoe_plugin.smartsam", "promptmoe_plugin.eval"),
    ],
)
def test_lower_layers_never_import_upper_ones(low, high):
    graph = _graph()
    chains = graph.find_shortest_chains(importer=low, imported=high, as_packages=True)
    assert not chains, f"{low} imports {high}: {sorted(chains)[:3]}"
