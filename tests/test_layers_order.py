"""The package's layers import one way: a module imports only from its own layer or lower ones (docs/design.md).

Every module under dsearch/ is parsed (imports inside functions and under TYPE_CHECKING included), its
relative and absolute dsearch imports are resolved, and each is checked against LAYERS.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dsearch

PACKAGE = Path(dsearch.__file__).resolve().parent
# The first name under dsearch -> its layer, bottom first. The package itself (dsearch/__init__.py, which
# re-exports the public names of every layer) sits at the top with the CLI.
LAYERS = {
    "errors": 0, "version": 0, "checks": 0, "paths": 0,
    "model": 1,
    "cost": 2, "latency": 2,
    "data": 3,
    "training": 4,
    "search": 5,
    "analysis": 6,
    "export": 7,
    "cli": 8, "__main__": 8,
}
TOP = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts == ["dsearch"]:
        return TOP
    if parts[0] != "dsearch" or parts[1] not in LAYERS:
        raise KeyError(f"{module} is in no layer: give dsearch.{parts[1]} one in LAYERS (and in docs/design.md)")
    return LAYERS[parts[1]]


def is_module(name: str) -> bool:
    """Whether `name` (dsearch.x.y) is a module or package of dsearch, not a name defined in one."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def dsearch_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dsearch module) for every import in `source`, the source of `module`, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "dsearch"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > len(base):
                    raise ValueError(f"{module} line {node.lineno}: relative import beyond the top-level package")
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dsearch":
                continue
            for alias in node.names:  # `from dsearch.training import native` imports the module native
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else target))
    return found


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Each import of `module`'s source from a higher layer, as one line naming both ends."""
    own = layer_of(module)
    return [f"{module} line {line} imports {target} (layer {layer_of(target)}) from layer {own}"
            for line, target in dsearch_imports(source, module, is_package) if layer_of(target) > own]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert len(modules()) > 40
    for path in modules():
        layer_of(module_name(path))  # raises, naming the module, for one that is in no layer


def test_no_module_imports_from_a_higher_layer():
    offending = [line for path in modules()
                 for line in upward_imports(path.read_text(), module_name(path), path.name == "__init__.py")]
    assert not offending, "imports against the layer order:\n" + "\n".join(offending)


def test_the_rule_flags_upward_imports():
    """The check can fail: upward imports written every way are caught, downward and sideways ones are not."""
    inside_a_function = "def f():\n    from ...analysis.pareto import trials_frame\n    return trials_frame\n"
    assert upward_imports(inside_a_function, "dsearch.model.ops.scc") == [
        "dsearch.model.ops.scc line 2 imports dsearch.analysis.pareto (layer 6) from layer 1"]
    assert upward_imports("from .. import __version__\n", "dsearch.search.record") == [
        "dsearch.search.record line 1 imports dsearch (layer 8) from layer 5"]  # the package __init__ is on top
    assert upward_imports("import dsearch.cli\n", "dsearch.cost.count") == [
        "dsearch.cost.count line 1 imports dsearch.cli (layer 8) from layer 2"]
    assert upward_imports("from dsearch.search import driver\n", "dsearch.training", is_package=True) == [
        "dsearch.training line 1 imports dsearch.search.driver (layer 5) from layer 4"]
    assert upward_imports("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..export import load\n",
                          "dsearch.analysis.pick") == [
        "dsearch.analysis.pick line 3 imports dsearch.export.load (layer 7) from layer 6"]
    fine = ("import torch\nfrom ..model.archspec import ArchSpec\nfrom . import budget\nfrom ..errors import "
            "DsearchError\nfrom ..training import native\n")
    assert upward_imports(fine, "dsearch.search.driver") == []
    with pytest.raises(KeyError, match="dsearch.plugins"):
        upward_imports("import dsearch.plugins\n", "dsearch.cli")
