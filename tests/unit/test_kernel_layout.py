"""The kernel module shape: production code never imports the plain-torch oracles in ``kernels/reference``,
and the oracles import no Warp code.

The oracles are the spec the Warp kernels are tested against; production code that used one would make that
comparison partly circular, and an oracle that used a Warp module would share its bugs. What both sides need
lives in production-side type modules that import only torch (:data:`TYPE_MODULES`), which the oracles may import.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from sparse3d.kernels import KERNEL_MODULES

PRODUCTION_PACKAGES = ("sparse3d", "sparse3d.kernels", "sparse3d.models", "sparse3d.datasets")
REFERENCE = "sparse3d.kernels.reference"
TYPE_MODULES = (
    "sparse3d.kernels.flexicubes_tables",
    "sparse3d.kernels.gaussian_args",
    "sparse3d.kernels.kernel_map_types",
    "sparse3d.kernels.set_partition_types",
    "sparse3d.kernels.voxelize_types",
)
"""Torch-only modules of the types and argument rules that a kernel family and its oracle share."""
REFERENCE_MAY_IMPORT = ("sparse3d.cameras", "sparse3d.utils.errors", *TYPE_MODULES)
"""Project modules an oracle may import, besides torch and the standard library."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, name
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _production_files() -> list[Path]:
    """Source files of the production packages, without the oracles (each file once, however installed)."""
    skip = _package_dir(REFERENCE)
    files = {p.resolve() for name in PRODUCTION_PACKAGES for p in _package_dir(name).rglob("*.py")}
    return sorted(p for p in files if skip not in p.parents)


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, and ``module.name`` for each ``from module import name``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the project uses absolute imports)"
            names.add(node.module or "")
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_production_code_never_imports_a_reference() -> None:
    files = _production_files()
    assert any(p.name == "set_partition.py" for p in files)  # the kernels are scanned
    bad = {str(p): sorted(n for n in _imports(p) if n == REFERENCE or n.startswith(f"{REFERENCE}."))
           for p in files}
    assert not {k: v for k, v in bad.items() if v}


def _reference_modules() -> list[str]:
    return sorted(f"{REFERENCE}.{m.name}" for m in pkgutil.iter_modules([str(_package_dir(REFERENCE))]))


def _module_file(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, name
    return Path(spec.origin)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(node: ast.AST, *, at_import_only: bool) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, module, imported names) of each import under ``node``; ``at_import_only`` keeps only those that
    run when the module is imported (skips function bodies and ``if TYPE_CHECKING:`` blocks)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            yield from ((child.lineno, alias.name, ()) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            module = "." * child.level + (child.module or "")
            yield child.lineno, module, tuple(alias.name for alias in child.names)
        elif at_import_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif at_import_only and isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _import_statements(ast.Module(body=child.orelse, type_ignores=[]), at_import_only=True)
        else:
            yield from _import_statements(child, at_import_only=at_import_only)


def _disallowed_imports(name: str, allowed: tuple[str, ...], *, at_import_only: bool) -> list[str]:
    """Imports of module ``name`` from outside torch, the standard library and ``allowed``."""

    def ok(module: str) -> bool:
        top = module.split(".")[0]
        return top == "torch" or (top in sys.stdlib_module_names) or module in allowed

    tree = ast.parse(_module_file(name).read_text(encoding="utf-8"))
    return [
        f"line {line}: {module} {list(names) if names else ''}".rstrip()
        for line, module, names in _import_statements(tree, at_import_only=at_import_only)
        if not (ok(module) or (names and all(ok(f"{module}.{n}") for n in names)))
    ]


def test_references_import_only_torch_and_type_modules() -> None:
    """Every import of an oracle, at module level or inside a function."""
    modules = _reference_modules()
    assert {f"{REFERENCE}.kernel_map", f"{REFERENCE}.voxelize"} <= set(modules)
    bad = {m: _disallowed_imports(m, REFERENCE_MAY_IMPORT, at_import_only=False) for m in modules}
    assert not {k: v for k, v in bad.items() if v}


def test_type_modules_import_only_torch() -> None:
    """What runs at import; their functions may import Warp-side builders lazily (KernelMap's cached tables)."""
    assert not set(TYPE_MODULES) & set(KERNEL_MODULES)  # no Warp kernels, so not compiled ahead of time
    bad = {m: _disallowed_imports(m, TYPE_MODULES, at_import_only=True) for m in TYPE_MODULES}
    assert not {k: v for k, v in bad.items() if v}


def test_importing_the_references_and_type_modules_imports_no_warp() -> None:
    """The static scans above, checked at run time in a fresh interpreter (transitive imports included)."""
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    if 'warp' in sys.modules:\n"
        "        sys.exit(f'importing {name} imported warp')\n"
    )
    modules = [*TYPE_MODULES, *_reference_modules()]
    res = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
