"""Layering rules read from the source (issue 21): no package imports another package's private
names, and the compiler reaches targets only through the registry."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tvmq": "tvmq", "passes": "tvmq.passes", "targets": "tvmq.targets"}


def _modules():
    """(installed dotted name, package dotted name, parsed source) of every tvmq module."""
    for top, dotted in PACKAGES.items():
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT / top).with_suffix("").parts
            package = ".".join((dotted, *parts[:-1]))
            name = package if parts[-1] == "__init__" else f"{package}.{parts[-1]}"
            yield name, package, ast.parse(path.read_text())


def _imports(package: str, tree: ast.Module):
    """(absolute module, imported names) of every `from ... import` in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module
            yield module, [a.name for a in node.names]


def _package_of(module: str, names: set[str]) -> str:
    return module if module in names else module.rsplit(".", 1)[0]


def test_no_module_imports_another_packages_private_names():
    modules = list(_modules())
    packages = {package for _, package, _ in modules}
    bad = []
    for name, package, tree in modules:
        for module, imported in _imports(package, tree):
            if not module.startswith("tvmq"):
                continue
            private_module = any(p.startswith("_") for p in module.split("."))
            private_name = any(n.startswith("_") and not n.startswith("__") for n in imported)
            if (private_module or private_name) and _package_of(module, packages) != package:
                bad.append(f"{name}: from {module} import {', '.join(imported)}")
    assert not bad, "\n".join(bad)


def test_the_compiler_reaches_targets_only_through_the_registry():
    for name, package, tree in _modules():
        if name not in ("tvmq.compiler", "tvmq.compiled_model"):
            continue
        for module, imported in _imports(package, tree):
            for target in ("accel", "mcu"):
                assert not module.startswith(f"tvmq.targets.{target}"), (name, module)
