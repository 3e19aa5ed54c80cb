"""The shim's modules stand in layers: ``PresenceServer`` (``_server.py``) builds on
the others and none of those it is built from imports it back, even for types; the
ASGI path uses only what the server shows (no ``server._...``)."""

from __future__ import annotations

import ast
import pathlib

import megapresence_anyio

SHIM = pathlib.Path(megapresence_anyio.__file__).parent
#: The modules above the server: the package, the CLI and what hooks into a client.
ABOVE_SERVER = {"__init__", "_cli", "_commands", "_demo", "_server"}


def _relative_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


def test_nothing_the_server_is_built_from_imports_it() -> None:
    importers = {path.stem for path in SHIM.glob("*.py") if "_server" in _relative_imports(path)}
    assert importers <= ABOVE_SERVER


def test_the_server_module_imports_no_module_above_it() -> None:
    assert _relative_imports(SHIM / "_server.py") & ABOVE_SERVER == set()


def test_nothing_is_imported_for_types_only() -> None:
    offenders = [path.name for path in SHIM.glob("*.py") if "TYPE_CHECKING" in path.read_text()]
    assert offenders == []


def test_the_asgi_path_reaches_into_no_private_attribute_of_its_server() -> None:
    tree = ast.parse((SHIM / "_asgi.py").read_text(encoding="utf-8"))
    private = [
        f"line {node.lineno}: server.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "server"
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]
    assert private == []
